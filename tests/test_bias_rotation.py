"""`merge_bias: M @ bias` with an output-side matrix merge (`merge: M @ weight`): the bias is multiplied by the same
matrix, so the forward multiplies the whole output (PEFT's RoAd). What the plan decides, what the generated code says,
and the specs `check` refuses (one line naming the field, exit 2).

The numbers are checked elsewhere: against PEFT's RoAd in tests/test_zoo_parity_road.py, against the oracle in
tests/test_oracle.py (refroad and biasrot are among its specs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plan import build_plan
from scaffold.spec import load_spec


REPO = Path(__file__).resolve().parent.parent
BIASROT = REPO / "tests" / "specs" / "biasrot.yaml"
ROAD = REPO / "reference_methods" / "road.yaml"
EXPROT = REPO / "tests" / "specs" / "exprot.yaml"
runner = CliRunner()


def _layer(spec: Path, out: Path) -> str:
    result = runner.invoke(app, ["new", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return (out / load_spec(spec).name / "layer.py").read_text(encoding="utf-8")


def _method(code: str, name: str) -> str:
    return code.split(f"    def {name}(", 1)[1].split("\n    def ", 1)[0]


@pytest.mark.parametrize("spec, inverse", [(BIASROT, "transpose"), (ROAD, "inv")])
def test_plan_multiplies_the_bias_by_the_merge_matrix(spec: Path, inverse: str) -> None:
    plan = build_plan(load_spec(spec))
    assert plan.composition == "output_matrix" and plan.scales_bias and plan.matrix_inverse == inverse


def test_generated_code_multiplies_the_whole_output_and_the_bias(tmp_path: Path) -> None:
    code = _layer(BIASROT, tmp_path)
    merged = _method(code, "_merged_bias")
    assert "matrix = self._matrix(adapter_name)" in merged
    assert "return (matrix @ orig_bias.to(matrix.dtype)).to(orig_bias.dtype)" in merged
    # `unmerge: rotation.T @ weight` declares the matrix orthogonal: the bias is undone with the transpose too
    assert "return (matrix.T @ orig_bias.to(matrix.dtype)).to(orig_bias.dtype)" in _method(code, "_unmerged_bias")
    forwards = code.split("    def _matrix_forward(")[2:]  # the layer classes' (the first is the abstract one)
    assert len(forwards) == 3
    linear, embedding, conv = forwards
    for forward in (linear, embedding):
        # the bias is not taken out of the output: it is multiplied with it
        assert "result - bias" not in forward and "output = F.linear(output.to(matrix.dtype), matrix)" in forward
    assert "bias = self._merged_bias(bias, adapter_name)" in conv
    assert "base_layer._conv_forward(x, self._to_weight_layout(weight), bias)" in conv


def test_inverse_matrix_unmerges_the_bias_with_inv(tmp_path: Path) -> None:
    code = _layer(ROAD, tmp_path)
    assert "torch.linalg.inv(matrix) @ orig_bias.to(matrix.dtype)" in _method(code, "_unmerged_bias")


def test_without_merge_bias_the_bias_is_still_left_alone(tmp_path: Path) -> None:
    plan = build_plan(load_spec(EXPROT))
    assert not plan.scales_bias
    code = _layer(EXPROT, tmp_path)
    assert "_merged_bias" not in code and "output = result if bias is None else result - bias" in code


_ROT = yaml.safe_load(BIASROT.read_text(encoding="utf-8"))


def _with(**changes: Any) -> dict[str, Any]:
    return {**_ROT, **changes}


REFUSED = [
    ("other-matrix", _with(merge_bias="skew @ bias"), "merge_bias"),
    ("scaled-not-rotated", _with(merge_bias="bias * 2", unmerge_bias="bias / 2"), "merge_bias"),
    ("unmerge-not-inverse", _with(unmerge_bias="rotation @ bias"), "unmerge_bias"),
    # `unmerge` uses the transpose: the bias must be undone the same way
    ("unmerge-bias-other-inverse", _with(unmerge_bias="torch.linalg.inv(rotation) @ bias"), "unmerge_bias"),
    ("left-alone-but-undone", _with(merge_bias="bias"), "unmerge_bias"),
    (
        "input-side",
        _with(
            merge="weight @ rotation",
            unmerge="weight @ rotation.T",
            delta_weight="weight @ rotation - weight",
            values={**_ROT["values"], "identity": "torch.eye(in_features, dtype=A.dtype, device=A.device)"},
            weights={k: {**v, "shape": ["in_features", "r"]} for k, v in _ROT["weights"].items()},
            layers=["Linear"],
        ),
        "merge_bias",
    ),
]


@pytest.mark.parametrize("data, field", [pytest.param(d, f, id=i) for i, d, f in REFUSED])
def test_check_refuses_with_one_line_naming_the_field(data: dict[str, Any], field: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    where = message.split(f"{path}: ", 1)[1].split(": ", 1)[0]
    assert where == field or where.endswith(f".{field}"), message
