"""Which forward each layer type gets (factored, dense, derived from a scaling merge, the spec's), as the plan decides
it and `check` reports it, and the specs whose forward cannot agree with their merge, refused by `check`.

The numbers (factored forward == dense forward == merged weight, two active adapters == their merge, merge ->
unmerge restores the weight) are checked by each spec's generated tests and PEFT's matrix in tests/test_in_tree.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plan import build_plan
from scaffold.spec import load_spec, spec_from_data


REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "tests" / "specs"
runner = CliRunner()

LORA_LIKE = {
    "name": "mylow",
    "hyperparameters": {"r": {"type": "int", "default": 4}, "s": {"type": "float", "default": 2.0}},
    "weights": {
        "A": {"shape": ["r", "in_features"], "init": "kaiming_uniform"},
        "B": {"shape": ["out_features", "r"], "init": "zeros"},
        "v": {"shape": ["out_features"], "init": "ones"},
        "u": {"shape": ["in_features"], "init": "ones"},
        "M": {"shape": ["out_features", "in_features"], "init": "zeros"},
        "g": {"shape": [1], "init": "ones"},
    },
    "layers": ["Linear", "Embedding", "Conv2d"],
}


def _plan(**fields):
    return build_plan(spec_from_data({**LORA_LIKE, **fields}))


def _forwards(plan):
    return {lc.family.class_name: lc.forward for lc in plan.layer_classes}


@pytest.mark.parametrize(
    "delta, expected",
    [
        ("B @ A * s", "F.linear(F.linear(x, A), B) * s"),
        ("s * (B @ A)", "F.linear(F.linear(x, A), B) * s"),
        ("B @ A / s", "F.linear(F.linear(x, A), B) / s"),
        ("-(B @ A)", "-F.linear(F.linear(x, A), B)"),
        # per-row factors fold into the first operand, per-column ones into the last
        ("B @ A * v[:, None]", "F.linear(F.linear(x, A), B * v[:, None])"),
        ("B @ A * u[None, :] * s", "F.linear(F.linear(x, A * u[None, :]), B) * s"),
        ("B @ A * u", "F.linear(F.linear(x, A * u), B)"),
        ("(v[:, None] * B) @ A", "F.linear(F.linear(x, A), v[:, None] * B)"),
        ("B @ A * g * torch.linalg.norm(weight)", "F.linear(F.linear(x, A), B) * g * torch.linalg.norm(weight)"),
    ],
)
def test_products_get_a_factored_forward(delta, expected):
    plan = _plan(delta_weight=delta)
    assert set(_forwards(plan).values()) == {"factored"}
    linear = plan.layer_classes[0]
    assert linear.expression == expected
    embedding = plan.layer_classes[1]
    assert "F.linear(self._layer_op(x, " in embedding.expression  # a lookup in the factor, then a matmul
    conv = plan.layer_classes[2]
    assert "F.conv2d(self._layer_op(x, " in conv.expression  # the base layer's conv, then a 1x1
    assert "[:, :, None, None]" in conv.expression


@pytest.mark.parametrize(
    "delta",
    [
        "(B @ A) * (B @ A)",  # Hadamard: elementwise product of two full matrices
        "B @ A * M",  # a full-size elementwise factor
        "B @ A + M",
        "torch.kron(A, B)",
        "M * s",  # no `@`: nothing to factor
    ],
)
def test_other_deltas_materialise(delta):
    plan = _plan(delta_weight=delta)
    assert set(_forwards(plan).values()) == {"dense"}


def test_spec_forward_wins_and_check_json_reports_each_layer_type():
    result = runner.invoke(app, ["check", str(REPO / "reference_methods" / "lora.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    forwards = json.loads(result.stdout)["forwards"]
    assert list(forwards) == ["Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d"]
    assert forwards["Linear"] == forwards["Conv1D"] == "the spec's forward"
    assert forwards["Embedding"].startswith("factored")
    assert forwards["Conv2d"].startswith("factored") and "groups > 1" in forwards["Conv2d"]


def test_check_says_when_a_forward_materialises_the_update():
    spec = SPECS / "hadamard.yaml"
    result = runner.invoke(app, ["check", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    forwards = json.loads(result.stdout)["forwards"]
    assert sorted(forwards) == sorted(load_spec(spec).layers)
    assert all("materialises ΔW" in text and "O(out × in)" in text for text in forwards.values())
    human = runner.invoke(app, ["check", str(spec)])
    assert human.exit_code == 0 and "forwards:" in human.output and "materialises ΔW" in human.output


def test_scaling_merges_derive_the_forward():
    out_plan = build_plan(load_spec(SPECS / "scaler.yaml"))
    assert out_plan.composition == "output"
    assert set(_forwards(out_plan).values()) == {"output_scale"}
    assert out_plan.scale is not None and out_plan.scale.expression == "lvec"
    assert out_plan.scale.bindings == [("lvec", "self.outscale_lvec[adapter_name]")]
    in_plan = build_plan(load_spec(SPECS / "inscale.yaml"))
    assert in_plan.composition == "input"
    assert set(_forwards(in_plan).values()) == {"input_scale"}


def test_weight_reading_deltas_keep_the_pre_merge_weight():
    assert build_plan(load_spec(SPECS / "normdelta.yaml")).caches_base_weight
    assert not build_plan(load_spec(REPO / "reference_methods" / "lora.yaml")).caches_base_weight


_SCALER = yaml.safe_load((SPECS / "scaler.yaml").read_text())


@pytest.mark.parametrize(
    "changes, field",
    [
        # the old scaler: a forward that adds per adapter, against a merge that multiplies
        ({"forward": {"Linear": "base + layer_op(x, weight * (lvec[:, None] - 1))"}}, "forward.Linear"),
        ({"merge": "lvec[:, None] @ weight", "unmerge": "weight / lvec[:, None]"}, "merge"),
        ({"merge": "weight * lvec[:, None] + 1", "unmerge": "(weight - 1) / lvec[:, None]"}, "merge"),
        ({"unmerge": "weight * lvec[:, None]"}, "unmerge"),
        ({"unmerge": "weight / (lvec + 1)[:, None]"}, "unmerge"),
        ({"unmerge": "weight / lvec[None, :]"}, "unmerge"),
        ({"merge": "weight + weight * lvec[:, None]", "unmerge": "weight - weight * lvec[:, None]"}, "merge"),
        ({"merge": "weight + delta_weight", "unmerge": "weight + delta_weight"}, "unmerge"),
        (
            {
                "merge": "weight * lvec[None, :]",
                "unmerge": "weight / lvec[None, :]",
                "layers": ["Linear", "Embedding"],
            },
            "layers",
        ),
    ],
)
def test_check_refuses_a_forward_that_cannot_agree_with_merge(changes, field, tmp_path):
    data = {**_SCALER, **changes}
    if "[None, :]" in data["merge"]:
        data["weights"] = {"lvec": {**_SCALER["weights"]["lvec"], "shape": ["in_features"]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert f"{path}: {field}:" in message, message
