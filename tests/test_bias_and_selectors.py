"""Module selectors (a `modules` hyperparameter and its per-layer flag), conditional scaling merges, `merge_bias` and
`delta_bias`: what the plan decides, what the generated code says, and the specs `check` refuses (one line naming
the field, exit 2).

The numbers are checked elsewhere: against PEFT's IA3 in tests/test_zoo_parity_ia3.py, against the oracle in
tests/test_oracle.py (refia3 and biasshift are among its specs), and by PEFT's matrix in tests/test_zoo_in_tree.py.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plan import build_plan
from scaffold.plan.registration import registration_for
from scaffold.spec import load_spec


REPO = Path(__file__).resolve().parent.parent
IA3 = REPO / "reference_methods" / "ia3.yaml"
BIASSHIFT = REPO / "tests" / "specs" / "biasshift.yaml"
runner = CliRunner()


def _files(spec: Path, out: Path) -> dict[str, str]:
    """The package `new --out` writes, by file name."""
    result = runner.invoke(app, ["new", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    name = load_spec(spec).name
    return {p.name: p.read_text(encoding="utf-8") for p in (out / name).glob("*.py")}


def test_ia3_plan_selects_input_or_output_scaling_by_its_flag() -> None:
    plan = build_plan(load_spec(IA3))
    assert plan.composition == "selected"
    assert [(s.name, s.flag) for s in plan.selectors] == [("feedforward_modules", "is_feedforward")]
    assert plan.input_flags == ["is_feedforward"]
    assert plan.input_condition == "self.refia3_is_feedforward[adapter_name]"
    assert plan.input_condition_update == "is_feedforward"
    # the same vector scales rows or columns: no conditional left in `_scale`
    assert plan.scale is not None and plan.scale.expression == "ia3_l"
    assert plan.scales_bias and plan.delta_bias is None
    # the shape reads the flag as update_layer's argument
    assert plan.weights[0].shape_code == ["int(self.in_features if is_feedforward else self.out_features)"]


def test_ia3_generated_code_matches_modules_like_peft_and_refuses_feedforward_convolutions(tmp_path: Path) -> None:
    files = _files(IA3, tmp_path)
    layer, model, config = (files[f"{n}.py"] for n in ("layer", "model", "config"))
    for source in (layer, model, config):
        ast.parse(source)
    assert "return bool(re.fullmatch(modules, key))" in model
    assert "return any(key.endswith(name) for name in modules)" in model
    assert "is_feedforward = self._is_selected(config.feedforward_modules, current_key)" in model
    assert "feedforward_modules: Optional[Union[list[str], set[str], str]] = field(" in config
    assert "if not self.feedforward_modules.issubset(self.target_modules):" in config
    assert "if is_feedforward and not isinstance(self, Linear):" in layer
    # output scaling scales the whole output: the bias is merged too
    assert "return result * self._scale(adapter_name)[:, None, None]" in layer
    assert "return result * self._scale(adapter_name)[:, None, None, None]" in layer  # Conv3d has its own view
    assert "return orig_bias * self._scale(adapter_name).to(orig_bias.dtype)" in layer


def test_registrar_adds_selector_rows_only_where_the_layer_accepts_the_flag() -> None:
    reg = registration_for(build_plan(load_spec(IA3)))
    selected = [(desc, model) for desc, model, kwargs in reg.test_cases if "feedforward_modules" in kwargs]
    assert {model for _, model in selected} == {"MLP", "EmbConv1D"}  # not Conv2d/Conv3d: refused there
    assert any(kwargs.get("feedforward_modules") == "lin0" for _, _, kwargs in reg.test_cases)  # a regex
    assert any("feedforward_modules" in first for _, first, _ in reg.multiple_active_adapters_cases)
    # a spec without selectors gets exactly the rows it got before
    from scaffold.plan.registration import _TEST_MODELS

    lora = load_spec(REPO / "reference_methods" / "lora.yaml")
    rows = registration_for(build_plan(lora)).test_cases
    assert len(rows) == sum(len(_TEST_MODELS[t]) for t in lora.layers) + ("Linear" in lora.layers)


def test_bias_update_plan_and_code_follow_lora_bias(tmp_path: Path) -> None:
    plan = build_plan(load_spec(BIASSHIFT))
    assert plan.composition == "additive" and plan.delta_bias is not None
    assert plan.delta_bias.expression == "db * scaling"
    assert {lc.forward for lc in plan.layer_classes} == {"factored"}
    layer = _files(BIASSHIFT, tmp_path)["layer.py"]
    # PEFT's LoRA with lora_bias: warn when the layer has no bias, raise when merging into it
    assert "PeftWarning," in layer and "has no bias. This means that merging the adapter won't be possible." in layer
    assert "raise RuntimeError(" in layer
    assert "return orig_bias + self._delta_bias(adapter_name).to(orig_bias.dtype)" in layer
    assert "result = result + self._delta_bias(adapter_name)[:, None, None].to(result.dtype)" in layer


def test_bias_only_method_leaves_the_weight_alone(tmp_path: Path) -> None:
    spec = REPO / "reference_methods" / "beft.yaml"
    plan = build_plan(load_spec(spec))
    assert plan.spec.delta_weight is None and plan.delta.expression == ""
    assert {lc.forward for lc in plan.layer_classes} == {"bias_only"}
    layer = _files(spec, tmp_path)["layer.py"]
    assert "return torch.zeros(self.out_features, self.in_features, dtype=weight.dtype, device=weight.device)" in layer
    merged_weight = layer.split("def _merged_weight", 1)[1].split("def ", 1)[0]
    assert "return orig_weight\n" in merged_weight and "get_delta_weight" not in merged_weight


_IA3 = yaml.safe_load(IA3.read_text(encoding="utf-8"))
_BEFT = yaml.safe_load((REPO / "reference_methods" / "beft.yaml").read_text(encoding="utf-8"))
_BIAS = yaml.safe_load(BIASSHIFT.read_text(encoding="utf-8"))
_SELECTOR = _IA3["hyperparameters"]["feedforward_modules"]


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = {**base, **changes}
    return {k: v for k, v in data.items() if v is not None}


REFUSED = [
    ("selector-without-flag", _with(_IA3, hyperparameters={"feedforward_modules": {"type": "modules"}}), "flag"),
    (
        "selector-with-default",
        _with(_IA3, hyperparameters={"feedforward_modules": {**_SELECTOR, "default": ["x"]}}),
        "default",
    ),
    (
        "flag-on-an-int",
        _with(_BIAS, hyperparameters={**_BIAS["hyperparameters"], "r": {"type": "int", "default": 4, "flag": "f"}}),
        "flag",
    ),
    (
        "flag-shadows-a-weight",
        _with(_IA3, hyperparameters={"feedforward_modules": {**_SELECTOR, "flag": "ia3_l"}}),
        "hyperparameters.feedforward_modules.flag",
    ),
    ("selector-read-directly", _with(_IA3, delta_weight="weight * feedforward_modules"), "delta_weight"),
    (
        "unmerge-other-condition",
        _with(_IA3, unmerge="weight / ia3_l[None, :] if not is_feedforward else weight / ia3_l[:, None]"),
        "unmerge",
    ),
    (
        "additive-branch",
        _with(
            _IA3,
            merge="weight * ia3_l[None, :] if is_feedforward else weight + delta_weight",
            unmerge="weight / ia3_l[None, :] if is_feedforward else weight - delta_weight",
            merge_bias=None,
            unmerge_bias=None,
        ),
        "merge",
    ),
    ("merge-bias-alone", _with(_IA3, unmerge_bias=None), "unmerge_bias"),
    ("merge-bias-other-vector", _with(_IA3, merge_bias="bias if is_feedforward else bias * 2"), "merge_bias"),
    (
        "merge-bias-unconditional",
        _with(_IA3, merge_bias="bias * ia3_l", unmerge_bias="bias / ia3_l"),
        "merge_bias",
    ),
    (
        "merge-bias-on-input-branch",
        _with(_IA3, merge_bias="bias * ia3_l if is_feedforward else bias * ia3_l"),
        "merge_bias",
    ),
    ("unmerge-bias-wrong", _with(_IA3, unmerge_bias="bias if is_feedforward else bias * ia3_l"), "unmerge_bias"),
    ("merge-bias-additive", _with(_BIAS, merge_bias="bias * db", unmerge_bias="bias / db"), "merge_bias"),
    ("delta-bias-unknown-name", _with(_BIAS, delta_bias="nope * scaling"), "delta_bias"),
    ("delta-bias-embedding", _with(_BIAS, layers=["Linear", "Embedding"]), "delta_bias"),
    (
        "delta-bias-with-scaling-merge",
        _with(_IA3, delta_bias="ia3_l", merge_bias=None, unmerge_bias=None),
        "delta_bias",
    ),
    ("no-delta-at-all", _with(_BEFT, delta_bias=None), "delta_weight"),
    ("bias-only-with-merge", _with(_BEFT, merge="weight * 2", unmerge="weight / 2"), "merge"),
    ("bias-only-with-forward", _with(_BEFT, forward={"Linear": "x @ weight.T * 0"}), "forward.Linear"),
    (
        "delta-bias-forward-reads-base",
        _with(_BIAS, forward={"Linear": "base + layer_op(x, delta_weight)"}),
        "forward.Linear",
    ),
]


@pytest.mark.parametrize("data, field", [pytest.param(d, f, id=i) for i, d, f in REFUSED])
def test_check_refuses_with_one_line_naming_the_field(data: dict[str, Any], field: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    where = message.split(f"{path}: ", 1)[1].split(": ", 1)[0]
    assert where == field or where.endswith(f".{field}"), message
