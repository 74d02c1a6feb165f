"""`mergeable: false` (docs/spec.md, "Adapters that cannot be merged"): the spec rules, the plan, the generated code
and its registration, on the unseen tests/specs/bottleneck.yaml. Fast: plans and rendered text only; the generated
method runs in tests/test_zoo_in_tree.py (PEFT's matrix, the generated tests) and tests/test_oracle.py (the probe)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.kinds.tuner.files import render_method
from scaffold.plan import build_plan
from scaffold.plan.registration import registration_for
from scaffold.render.files import Layout
from scaffold.spec import load_spec
from scaffold.spec.model import MethodSpec


REPO = Path(__file__).resolve().parent.parent
BOTTLENECK = REPO / "tests" / "specs" / "bottleneck.yaml"
DATA: dict[str, Any] = yaml.safe_load(BOTTLENECK.read_text(encoding="utf-8"))
runner = CliRunner()


def _check(tmp_path: Path, data: dict[str, Any]) -> Any:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return runner.invoke(app, ["check", str(spec)])


@pytest.mark.parametrize(
    "change, field, reason",
    [
        ({"merge": "weight + delta_weight", "unmerge": "weight - delta_weight"}, "merge", "cannot be merged"),
        ({"mergeable": True}, "delta_weight", "one whose forward is not a weight update says `mergeable: false`"),
        ({"layers": ["Linear", "Embedding", "Conv2d"]}, "forward", "add `Conv2d`"),
        ({"forward": {"Linear": DATA["forward"]["Linear"]}}, "forward", "add `Embedding`"),
        ({"forward": {"Linear": "base + delta_weight", "Embedding": "base"}}, "forward.Linear", "unknown name"),
        ({"mergeable": "sometimes"}, "mergeable", "bool"),
        ({"delta_bias": "up.sum(dim=1)"}, "delta_bias", "cannot be merged"),
    ],
)
def test_bad_non_mergeable_specs_are_one_line_errors(tmp_path, change, field, reason):
    result = _check(tmp_path, {**DATA, **change})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert field in lines[0] and reason in lines[0], lines[0]


def test_check_says_the_method_cannot_merge():
    result = runner.invoke(app, ["check", str(BOTTLENECK), "--json"])
    assert result.exit_code == 0, result.output
    assert "merge_adapter / merge_and_unload raise" in result.stdout
    assert "test_merge_skip" in result.stdout


def _module(files: dict[str, str], path: str) -> ast.Module:
    return ast.parse(files[path])


def _methods(module: ast.Module, cls: str) -> dict[str, ast.FunctionDef]:
    node = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}


def _raises(func: ast.FunctionDef) -> str | None:
    """The exception a method body consisting of a raise raises (None if the body does not end in one)."""
    last = func.body[-1]
    if isinstance(last, ast.Raise) and isinstance(last.exc, ast.Call) and isinstance(last.exc.func, ast.Name):
        return last.exc.func.id
    return None


def test_generated_layer_and_model_refuse_merging_the_way_peft_does():
    """Like PEFT's Lily and ShadowPEFT: the layer's merge/unmerge/get_delta_weight and the model's
    `_check_merge_allowed` raise NotImplementedError; no merge arithmetic is generated."""
    plan = build_plan(load_spec(BOTTLENECK))
    assert not plan.mergeable and not plan.delta.expression and plan.merge is None
    files = render_method(plan, layout=Layout.STANDALONE)
    layer = _methods(_module(files, "bottleneck/layer.py"), "BottleneckLayer")
    for name in ("merge", "unmerge", "get_delta_weight"):
        assert _raises(layer[name]) == "NotImplementedError", name
    assert not {"_merged_weight", "_unmerged_weight", "_canonical_delta"} & set(layer)
    model = _methods(_module(files, "bottleneck/model.py"), "BottleneckModel")
    assert _raises(model["_check_merge_allowed"]) == "NotImplementedError"
    assert "check_adapters_to_merge" not in files["bottleneck/layer.py"]
    # `base` reaches the adapter in the adapter's dtype (fp32 weights on a half-precision model)
    assert files["bottleneck/layer.py"].count("base = self._adapter_input(result, adapter_name)") == 2
    tests = files["tests/test_bottleneck.py"]
    assert "def test_merging_is_refused_and_changes_nothing" in tests
    assert "def test_two_active_adapters_apply_in_order" in tests
    assert "merge_unmerge_restores_base_weights" not in tests and "equal_their_merge" not in tests
    assert "merge_and_unload should refuse" in files["examples/bottleneck/bottleneck_example.py"]


def test_a_mergeable_spec_gets_none_of_it():
    plan = build_plan(load_spec(REPO / "reference_methods" / "lora.yaml"))
    assert plan.mergeable and registration_for(plan).mergeable
    files = render_method(plan, layout=Layout.STANDALONE)
    text = "".join(files.values())
    assert "_check_merge_allowed" not in text and "cannot be merged" not in text


def test_registration_lists_the_method_for_peft_merge_test_skips():
    reg = registration_for(build_plan(load_spec(BOTTLENECK)))
    assert reg.mergeable is False
    assert type(reg).from_data(reg.to_data()) == reg
    # manifests written before the field existed read back as mergeable
    data = reg.to_data()
    del data["mergeable"]
    assert type(reg).from_data(data).mergeable is True


def test_a_non_mergeable_spec_may_keep_a_delta_for_its_forwards():
    """`delta_weight` stays usable (in a forward, or to derive one); merging is still refused."""
    data = {
        **DATA,
        "weights": {**DATA["weights"], "proj": {"shape": ["r", "in_features"], "init": "zeros"}},
        "delta_weight": "up @ proj",
        "forward": {"Linear": "base + torch.tanh(layer_op(x, delta_weight))"},
        "layers": ["Linear", "Embedding"],
    }
    plan = build_plan(MethodSpec.model_validate(data))
    kinds = {lc.family.class_name: lc.forward for lc in plan.layer_classes}
    assert kinds == {"Linear": "spec", "Embedding": "factored"}
    assert plan.delta.expression and not plan.mergeable and not plan.caches_base_weight
    layer = _methods(_module(render_method(plan, layout=Layout.STANDALONE), "bottleneck/layer.py"), "BottleneckLayer")
    assert "_canonical_delta" in layer and _raises(layer["get_delta_weight"]) == "NotImplementedError"


def test_coverage_claim_lily_forward_is_writable_as_a_non_mergeable_spec():
    """docs/coverage.yaml says one layer of PEFT's Lily is writable with `mergeable: false` (what it still needs is
    sharing across layers): its expression, evaluated by the oracle, matches PEFT's Lily on one layer."""
    import copy
    import re

    import torch
    from peft import LilyConfig, get_peft_model

    from scaffold.verify.oracle import Adapter, BaseLayer, Oracle

    note = yaml.safe_load((REPO / "docs" / "coverage.yaml").read_text(encoding="utf-8"))["tuners"]["lily"]["note"]
    expression = next(text for text in re.findall(r"`([^`]+)`", note) if text.startswith("base + "))
    hp = {"r": 2, "num_B": 3, "scaling": 0.7}
    spec = MethodSpec.model_validate(
        {
            "name": "onelily",
            "mergeable": False,
            "hyperparameters": {k: {"type": type(v).__name__, "default": v} for k, v in hp.items()},
            "weights": {
                "A": {"shape": ["r", "in_features"], "init": "kaiming_uniform"},
                "router": {"shape": ["num_B", "r"], "init": "kaiming_uniform"},
                "B": {"shape": ["num_B * r", "out_features"], "init": "zeros"},
            },
            "forward": {"Linear": expression},
        }
    )
    build_plan(spec)  # the generator accepts it
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5))
    config = LilyConfig(target_modules=["0"], stride_A=1, init_weights=False, **hp)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    layer = model.base_model.model[0]
    weights = {"A": layer.lily_A, "router": layer.lily_router, "B": layer.lily_B}
    adapter = Adapter(hp, {name: module["default"].weight for name, module in weights.items()})
    x = torch.randn(3, 4, 6)
    with torch.no_grad():
        expected, before = model(x).double(), base(x).double()
    actual = Oracle(spec).forward(BaseLayer.of("Linear", base[0]), x, [adapter])
    assert (expected - before).abs().max() > 0.1  # not a no-op
    assert torch.allclose(actual, expected, atol=1e-5)


def test_verify_shows_checks_that_do_not_apply_as_skipped_not_as_passed():
    from scaffold.verify.probe import CHECKS, MERGE_CHECKS, NOT_MERGEABLE
    from scaffold.verify.run import probe_stage

    layer = {check: {"ok": True, "value": 0.0, "detail": ""} for check in CHECKS}
    layer.update(
        {check: {"ok": True, "value": None, "detail": NOT_MERGEABLE, "skipped": True} for check in MERGE_CHECKS}
    )
    layer["fp16"] = {"ok": False, "value": 1.0, "detail": "off by 1"}
    stages, failures = probe_stage({"error": None, "layers": {"Linear": layer, "Conv1D": layer}})
    shown = {stage.name: (stage.result, stage.skipped) for stage in stages}
    assert shown["probe: merge_unmerge"] == (f"skipped ({NOT_MERGEABLE})", True)
    assert shown["probe: merge_refused"] == ("ok (2 layer types)", False)
    assert [f.name for f in failures] == ["fp16"]
