"""The spec's expression language: what it accepts, what it refuses, and how it prints back."""

from __future__ import annotations

import pytest

from scaffold.spec.expressions import ExpressionError, parse_expression, render


NAMES = {"A", "B", "scaling", "x", "weight", "r", "in_features"}


@pytest.mark.parametrize(
    "text",
    [
        "B @ A * scaling",
        "F.linear(F.linear(dropout(x), A), B) * scaling",
        "torch.kron(A, B)",
        "torch.linalg.norm(weight, dim=1)",
        "A.T.reshape(r, -1)",
        "weight * (A[:, None] - 1)",
        "torch.einsum('ij,jk->ik', B, A)",
        "A if r > 1 else B",
    ],
)
def test_accepts_tensor_math(text):
    expr = parse_expression(text, names=NAMES, functions={"dropout"})
    assert expr.names <= NAMES


@pytest.mark.parametrize(
    "text, reason",
    [
        ("C @ A", "unknown name `C`"),
        ("__import__('os')", "not allowed"),
        ("import os", "imports are not allowed"),
        ("A.__class__", "may not start with `_`"),
        ("A._foo", "may not start with `_`"),
        ("lambda: A", "a lambda is not allowed"),
        ("x = A", "single expression is required"),
        ("[a for a in A]", "comprehension"),
        ("f'{A}'", "f-string"),
        ("eval('A')", "unknown function `eval`"),
        ("open('f')", "unknown function `open`"),
        ("torch.load('f')", "`torch.load` is not in the allowed list"),
        ("torch.save(A, 'f')", "`torch.save` is not in the allowed list"),
        ("A.cuda()", "`.cuda()` is not in the allowed list"),
        ("torch", "can only be called"),
        ("A @", "not valid expression syntax"),
        ("", "empty"),
        ("(yield A)", "yield"),
        ("{'a': A}", "dict literal"),
        ("A(**B)", "unknown function `A`"),
        ("dropout(**B)", "`**kwargs` is not allowed"),
        ("(A + B)(x)", "only named functions can be called"),
    ],
)
def test_refuses(text, reason):
    with pytest.raises(ExpressionError, match=_escape(reason)):
        parse_expression(text, names=NAMES, functions={"dropout"})


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_scalar_mode_refuses_tensor_syntax():
    with pytest.raises(ExpressionError, match="only allowed in tensor expressions"):
        parse_expression("A @ B", names=NAMES, tensor=False)
    with pytest.raises(ExpressionError, match="not allowed in a scalar expression"):
        parse_expression("torch.sqrt(r)", names=NAMES, tensor=False)
    assert parse_expression("sqrt(r) * pi", names=NAMES, tensor=False).calls == {"sqrt"}


def test_render_renames_names_and_calls_without_touching_attributes():
    expr = parse_expression("dropout(x) @ A.T * r", names=NAMES, functions={"dropout"})
    code = render(expr, {"r": "config.r", "A": "self.a"}, {"dropout": "self.drop"})
    assert code == "self.drop(x) @ self.a.T * config.r"
    # the parsed tree is not mutated by rendering
    assert render(expr) == "dropout(x) @ A.T * r"
