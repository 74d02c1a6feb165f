"""Named tensors (`values:`) in `kind: tuner` specs, the linear-algebra functions, and matrix merges
(`weight @ M`, `M @ weight`): what the plan decides and the code it renders, and the specs `check` refuses (one line
naming the field, exit 2).

The numbers are checked elsewhere: reference_methods/oft.yaml against PEFT's OFT (tests/test_zoo_parity_oft.py),
oft.yaml and tests/specs/exprot.yaml against the float64 oracle (tests/test_oracle.py) and through PEFT's matrix and
their generated tests (tests/test_zoo_in_tree.py). Here, a few of them in process against the oracle itself, so that
a wrong oracle cannot make those pass.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.errors import ScaffoldError
from scaffold.plan import build_plan
from scaffold.spec import load_spec, spec_from_data
from scaffold.spec.expressions import ExpressionError, parse_expression
from scaffold.verify.oracle import Adapter, BaseLayer, Oracle


REPO = Path(__file__).resolve().parent.parent
OFT = REPO / "reference_methods" / "oft.yaml"
EXPROT = REPO / "tests" / "specs" / "exprot.yaml"
runner = CliRunner()


def _data(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _layer_code(path: Path, out: Path) -> str:
    result = runner.invoke(app, ["new", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    name = load_spec(path).name
    return (out / name / "layer.py").read_text(encoding="utf-8")


# -- the language -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "torch.linalg.solve(identity + skew, identity - skew, left=False)",
        "torch.linalg.inv(M)",
        "torch.linalg.matrix_exp(M - M.T)",
        "torch.linalg.matrix_power(M, 3)",
        "torch.triu(M, 1) + torch.tril(M, -1)",
        "torch.triu_indices(4, 4, 1, device=M.device)",
        "torch.eye(4, dtype=M.dtype, device=M.device)",
        "torch.block_diag(M, M)",
        "torch.linalg.householder_product(M, M[:, 0])",
    ],
)
def test_linear_algebra_is_in_the_language(source):
    parse_expression(source, names={"M", "identity", "skew"})


@pytest.mark.parametrize("source", ["torch.linalg.cholesky_ex(M)", "torch.load(M)", "torch.linalg.solve.__call__(M)"])
def test_other_functions_stay_out(source):
    with pytest.raises(ExpressionError):
        parse_expression(source, names={"M"})


# -- plans and rendered code -----------------------------------------------------------------------------------------


def test_oft_is_an_input_side_matrix_merge_with_an_exact_inverse():
    plan = build_plan(load_spec(OFT))
    assert plan.composition == "input_matrix"
    assert plan.matrix is not None and plan.matrix.expression == "rotation.T"
    assert plan.merge is not None and plan.merge.expression == "weight @ self._matrix(adapter_name).to(weight.dtype)"
    assert plan.unmerge is not None
    assert plan.unmerge.expression == "weight @ torch.linalg.inv(self._matrix(adapter_name)).to(weight.dtype)"
    assert {lc.family.class_name: lc.forward for lc in plan.layer_classes} == {
        "Linear": "input_matrix",
        "Conv2d": "conv_matrix",
    }
    # one getter, for the value expressions read; the values it needs are its locals, in spec order
    assert [v.method for v in plan.values] == ["_get_rotation"]
    steps = [name for name, _ in plan.values[0].steps]
    assert steps == ["upper", "placement", "packed", "skew", "identity", "top", "blocks"]
    assert plan.values[0].upcast == ["oft_R"]
    # the derived sizes are ints (torch.eye and reshape take ints), declared as such
    annotations = {s.name: s.annotation for s in plan.scalars}
    assert annotations["block"] == annotations["nblocks"] == annotations["neumann_power"] == "int"
    assert not plan.caches_base_weight


def test_exprot_is_an_output_side_matrix_merge_undone_by_the_transpose():
    plan = build_plan(load_spec(EXPROT))
    assert plan.composition == "output_matrix"
    assert plan.unmerge is not None
    assert plan.unmerge.expression == "self._matrix(adapter_name).T.to(weight.dtype) @ weight"
    forwards = {lc.family.class_name: lc.forward for lc in plan.layer_classes}
    assert forwards == {
        "Linear": "output_matrix",
        "Embedding": "output_matrix",
        "Conv2d": "conv_matrix",
    }


def test_generated_layer_has_a_getter_per_value_and_no_repeated_code(tmp_path):
    code = _layer_code(OFT, tmp_path)
    tree = ast.parse(code)
    layer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RefOFTLayer")
    methods = {n.name: n for n in layer.body if isinstance(n, ast.FunctionDef)}
    assert "_get_rotation" in methods and "_matrix" in methods and "_matrix_forward" in methods
    # the Cayley-Neumann series is written once, in the getter; everything else calls it
    assert code.count("torch.linalg.matrix_power") == 1
    assert code.count("self._get_rotation(adapter_name)") == 2  # _canonical_delta and _matrix
    linear = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Linear")
    forward = next(n for n in linear.body if isinstance(n, ast.FunctionDef) and n.name == "_matrix_forward")
    assert "reversed(adapter_names)" in ast.unparse(forward)


def test_specs_without_values_or_matrices_render_as_before(tmp_path):
    # no getter, no _upcast, no _matrix: the golden files (tests/test_golden.py) pin the rest
    code = _layer_code(REPO / "reference_methods" / "lora.yaml", tmp_path)
    assert "_upcast" not in code and "_matrix" not in code and "def _get_" not in code


def test_values_in_an_additive_spec_are_bound_where_expressions_read_them():
    data = _data(REPO / "reference_methods" / "lora.yaml")
    data["values"] = {"update": "lora_B @ lora_A"}
    data["delta_weight"] = "update * scaling"
    plan = build_plan(spec_from_data(data))
    assert [v.method for v in plan.values] == ["_get_update"]
    assert plan.delta.value_bindings == [("update", "self._get_update(adapter_name).to(lora_A.dtype)")]
    forwards = {lc.forward for lc in plan.layer_classes}
    assert "dense" in forwards  # a value has no known rank: the update materialises, exactly


# -- refusals ---------------------------------------------------------------------------------------------------------


def _mutated(path: Path, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(_data(path))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "path, changes, field, reason",
    [
        (OFT, {"unmerge": "weight @ rotation"}, "unmerge", "inverse"),
        (OFT, {"unmerge": "torch.linalg.inv(rotation.T) @ weight"}, "unmerge", "same side"),
        (OFT, {"unmerge": "weight @ torch.linalg.inv(rotation)"}, "unmerge", "inverse"),
        (EXPROT, {"unmerge": "rotation @ weight"}, "unmerge", "inverse"),
        (EXPROT, {"merge": "rotation @ weight @ rotation"}, "merge", "no forward"),
        (OFT, {"layers": ["Linear", "Embedding"]}, "layers", "indices"),
        (
            OFT,
            {
                "hyperparameters": {**_data(OFT)["hyperparameters"], "p": {"type": "float", "default": 0.1}},
                "dropout": "p",
            },
            "dropout",
            "no adapter branch",
        ),
        (OFT, {"forward": {"Linear": "base + layer_op(x, delta_weight)"}}, "forward.Linear", "derived"),
        # a value reads only earlier values, never the input
        (
            EXPROT,
            {"values": {"rotation": "torch.linalg.matrix_exp(generator)", "generator": "A @ B.T"}},
            "values.rotation",
            "generator",
        ),
        (EXPROT, {"values": {"generator": "A @ x"}}, "values.generator", "x"),
        (
            EXPROT,
            {"values": {"generator": {"expr": "A @ B.T", "constant": True}}},
            "values.generator.constant",
            "lora_variant",
        ),
        (EXPROT, {"values": {"A": "B @ B.T"}}, "values.A", "already a name"),
        (EXPROT, {"values": {"weight": "B @ B.T"}}, "values.weight", "reserved"),
    ],
)
def test_check_refuses_with_one_line_naming_the_field(tmp_path, path, changes, field, reason):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_mutated(path, **changes), sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["check", str(spec)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert field in line and reason in line, line


def test_plan_errors_name_the_spec_field():
    data = _mutated(EXPROT, unmerge="weight @ rotation.T")
    with pytest.raises(ScaffoldError, match="unmerge"):
        build_plan(spec_from_data(data))


# -- the oracle's view of the new specs (in process, float64) -------------------------------------------------------


def test_oracle_oft_is_a_block_diagonal_cayley_rotation_of_the_input():
    """With the exact Cayley transform the oracle's OFT is orthogonal, block-diagonal, and merges as W R^T; with
    PEFT's Neumann default it is I + 2Q + 2Q^2 + 2Q^3 + Q^4 per block (the series written out here by hand)."""
    torch.manual_seed(0)
    oracle = Oracle(load_spec(OFT))
    layer = BaseLayer.of("Linear", torch.nn.Linear(8, 5))
    packed = 0.1 * torch.randn(2, 6, dtype=torch.float64)  # 2 blocks of 4: 6 upper entries each
    exact = Adapter({"oft_block_size": 4, "use_cayley_neumann": False}, {"oft_R": packed})
    neumann = Adapter({"oft_block_size": 4}, {"oft_R": packed})
    rows, cols = torch.triu_indices(4, 4, 1)
    blocks_exact, blocks_series = [], []
    for i in range(2):
        q = torch.zeros(4, 4, dtype=torch.float64)
        q[rows, cols] = packed[i]
        q = q - q.T
        eye = torch.eye(4, dtype=torch.float64)
        blocks_exact.append((eye - q) @ torch.linalg.inv(eye + q))
        blocks_series.append(eye + 2 * q + 2 * q @ q + 2 * q @ q @ q + q @ q @ q @ q)
    weight = layer.canonical_weight
    for adapter, blocks in ((exact, blocks_exact), (neumann, blocks_series)):
        rotation = torch.block_diag(*blocks)
        assert torch.allclose(oracle.merged_canonical(layer, [adapter]), weight @ rotation.T, atol=1e-12)
    rotation = torch.block_diag(*blocks_exact)
    assert torch.allclose(rotation @ rotation.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    x = torch.randn(3, 8)
    expected = x.double() @ rotation @ weight.T + layer.bias
    assert torch.allclose(oracle.forward(layer, x, [exact]), expected, atol=1e-10)


def test_oracle_exprot_composes_like_its_merge_and_unmerges_exactly():
    torch.manual_seed(1)
    oracle = Oracle(load_spec(EXPROT))
    layer = BaseLayer.of("Linear", torch.nn.Linear(6, 5))
    adapters = [Adapter({"r": 2}, {"A": 0.3 * torch.randn(5, 2), "B": 0.3 * torch.randn(5, 2)}) for _ in range(2)]
    rotations = []
    for adapter in adapters:
        a, b = adapter.weights["A"].double(), adapter.weights["B"].double()
        rotations.append(torch.linalg.matrix_exp(torch.tanh(a @ b.T - b @ a.T)))
    weight = layer.canonical_weight
    merged = oracle.merged_canonical(layer, adapters)
    assert torch.allclose(merged, rotations[1] @ rotations[0] @ weight, atol=1e-12)
    restored = oracle.unmerged_weight(layer, merged, adapters)
    assert torch.allclose(restored, weight, atol=1e-12)
    x = torch.randn(4, 6)
    assert torch.allclose(oracle.forward(layer, x, adapters), x.double() @ merged.T + layer.bias, atol=1e-10)


@pytest.mark.parametrize("apply_gs", [False, True])
def test_hras_householder_chain_is_writable_as_values(apply_gs):
    """docs/coverage.yaml says HRA's math is writable now (only its paired-column init is not): its product of r
    Householder reflections as one expression (the compact WY form, or I - 2 Q Q^T with Q from qr for Gram-Schmidt)
    equals PEFT's own loop, evaluated by the oracle's interpreter."""
    from peft import HRAConfig
    from peft.tuners.hra.layer import HRALinear

    from scaffold.verify.oracle import evaluate

    torch.manual_seed(0)
    layer = HRALinear(torch.nn.Linear(8, 6), "default", HRAConfig(r=4, init_weights=False, apply_GS=apply_gs), r=4)
    expected = layer.get_delta_weight("default").detach().double()
    u = layer.hra_u["default"].detach().double()
    names = {"hra_u", "identity", "identity_r"}
    if apply_gs:
        source = "identity - 2 * torch.linalg.qr(hra_u)[0] @ torch.linalg.qr(hra_u)[0].T"
    else:
        source = (
            "identity - F.normalize(hra_u, dim=0) @ torch.linalg.solve("
            "torch.triu(F.normalize(hra_u, dim=0).T @ F.normalize(hra_u, dim=0), 1) + identity_r / 2, "
            "F.normalize(hra_u, dim=0).T)"
        )
    env = {"hra_u": u, "identity": torch.eye(8, dtype=torch.float64), "identity_r": torch.eye(4, dtype=torch.float64)}
    value = evaluate(parse_expression(source, names=names), env)
    assert torch.allclose(value, expected, atol=1e-6)
    assert torch.allclose(value @ value.T, torch.eye(8, dtype=torch.float64), atol=1e-10)  # `.T` undoes it
