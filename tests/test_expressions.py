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


@pytest.mark.parametrize("text", ["A ** 2", "A ** 0.5", "A ** -1", "(A + 1) ** 64", "A ** r", "r ** -0.5 * A"])
def test_accepts_bounded_powers(text):
    parse_expression(text, names=NAMES)
    parse_expression(text.replace("A", "scaling"), names=NAMES, tensor=False)


@pytest.mark.parametrize(
    "text, reason",
    [
        # each would run (nearly) forever on Python ints in the generated code
        (
            "9 ** 9 ** 9 ** 9",
            "the exponent of `**` must be a number of magnitude at most 64 or a name, got `9 ** 9 ** 9`",
        ),
        ("r ** 1000000", "got `1000000`"),
        ("2 ** -(10 ** 9)", "got `-10 ** 9`"),
        ("r ** (r * r)", "got `r * r`"),
        ("r ** True", "got `True`"),
        ("((r ** 64) ** 64) ** 64", "powers may not be nested"),
        ("(1 + r ** 2) ** 2", "powers may not be nested"),
    ],
)
def test_refuses_unbounded_powers(text, reason):
    for tensor in (True, False):
        with pytest.raises(ExpressionError, match=_escape(reason)):
            parse_expression(text, names=NAMES, tensor=tensor)


def test_a_refused_power_is_one_line_naming_the_field(tmp_path):
    from typer.testing import CliRunner

    from scaffold.cli import app

    spec = tmp_path / "pow.yaml"
    spec.write_text(
        "name: powlora\nhyperparameters: {r: {type: int, default: 2}}\nderived: {s: '9 ** 9 ** 9 ** 9'}\n"
        "weights: {A: {shape: [r, in_features], init: zeros}}\ndelta_weight: A.sum() * s * weight\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "derived.s" in lines[0] and "exponent of `**`" in lines[0], result.output
