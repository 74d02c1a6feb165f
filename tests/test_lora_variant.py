"""`kind: lora_variant`: the generated module is clean (ruff with PEFT's settings, mypy), generation into a tree is
idempotent and atomic, `remove` restores the tree byte for byte, and bad input is one line, exit 2, nothing written.

Numbers (DoRA against PEFT's) are in test_lora_variant_parity.py; PEFT's own test matrix and a second, non-DoRA
variant in test_lora_variant_in_tree.py.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.errors import ScaffoldError
from scaffold.kinds import get_kind
from scaffold.kinds.lora_variant import sites
from scaffold.kinds.lora_variant.plan import build_plan
from scaffold.spec import parse_spec
from scaffold.verify import lint_generated
from tests.conftest import snapshot_tree


REPO = Path(__file__).resolve().parent.parent
DORA_SPEC = REPO / "reference_methods" / "dora.yaml"
DORA: dict[str, Any] = yaml.safe_load(DORA_SPEC.read_text(encoding="utf-8"))
runner = CliRunner()

# A second variant, nothing like DoRA in its code paths: no constant values, a learned scale per output feature
# (bounded, 2 * sigmoid(gate), so that PEFT's matrix can train it at its usual learning rate), a weight initialised
# from a number, layers Linear and Embedding only.
ROWSCALE = """\
kind: lora_variant
name: rowscale
title: RowScale
summary: LoRA whose adapted layer output gets a learned scale per output feature.
layers: [Linear, Embedding]
weights:
  gate: {shape: [out_features], init: 0.0}
values:
  row_scale: 2 * torch.sigmoid(gate)
forward: "per_output(row_scale - 1) * base + per_output(row_scale) * lora_B(lora_A(dropout(x))) * scaling"
merge: "row_scale[:, None] * (weight + delta_weight)"
unmerge: "weight / row_scale[:, None] - delta_weight"
"""

# A third: a learned diagonal between A and B (KaSA's update without its SVD), a frozen weight, a shape over `r`, a
# value that is not a constant, a forward through `layer_op` that is added to the output.
DIAG = """\
kind: lora_variant
name: diaglora
title: DiagLoRA
summary: LoRA with a learned diagonal between A and B.
layers: [Linear, Conv2d]
weights:
  diag: {shape: [r], init: 1.0}
  gain: {shape: [1], init: 1.0, trainable: false}
values:
  update: "(lora_B * diag) @ lora_A * scaling * gain"
forward: "layer_op(dropout(x), update)"
merge: "weight + update"
unmerge: "weight - update"
"""
# ... and without merge: the variant refuses to merge
DIAG_NO_MERGE = (
    "\n".join(line for line in DIAG.splitlines() if not line.startswith(("merge", "unmerge"))).replace(
        "name: diaglora", "name: diagnomerge"
    )
    + "\n"
)


# Odd corners for the code generator: torch.nn.functional in an expression, math in a shape, a per-layer forward, a
# constant value computed from another constant.
ODD = """\
kind: lora_variant
name: oddvar
layers: [Linear, Embedding, Conv1d, Conv3d]
weights:
  halves: {shape: ["max(1, ceil(r / 2))"], init: 0.5}
values:
  norm: {expr: "torch.linalg.norm(weight, dim=1)", constant: true}
  norm2: {expr: "norm * norm + 1", constant: true}
forward:
  Linear: "result + F.silu(layer_op(dropout(x), delta_weight)) / per_output(norm2)"
  Embedding: "layer_op(x, delta_weight)"
  Conv1d: "result + per_output(norm2.sqrt()) * lora_B(lora_A(dropout(x))) * halves.sum()"
  Conv3d: "result + lora_B(lora_A(dropout(x))) * scaling"
merge: "weight + delta_weight * halves.mean()"
unmerge: "weight - delta_weight * halves.mean()"
"""
ALL_SPECS = {
    "dora": DORA_SPEC.read_text(encoding="utf-8"),
    "rowscale": ROWSCALE,
    "diag": DIAG,
    "diag-no-merge": DIAG_NO_MERGE,
    "odd": ODD,
}


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _spec(text: str) -> Any:
    return parse_spec(text)


# ---------------------------------------------------------------------------------------------------------------------
# the extension seam


def test_kind_is_registered_for_its_name() -> None:
    kind = get_kind("lora_variant")
    assert kind is not None and kind.name == "lora_variant"
    spec = parse_spec(DORA_SPEC.read_text(encoding="utf-8"))
    assert type(spec).__name__ == "LoraVariantSpec" and spec.switch == "use_refdora"


def test_check_summarises_without_writing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(DORA_SPEC), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config_field"] == "LoraConfig.use_refdora"
    assert summary["variant_classes"]["Linear"] == "RefDoraLinearVariant"
    assert summary["weights"]["magnitude"]["attr"] == "lora_refdora_magnitude"
    assert summary["values"] == {"weight_norm": "constant", "scale": "computed"}


# ---------------------------------------------------------------------------------------------------------------------
# the generated module


@pytest.mark.parametrize("text", list(ALL_SPECS.values()), ids=list(ALL_SPECS))
def test_generated_module_parses_and_has_one_class_per_layer(text: str, tmp_path: Path) -> None:
    spec_path = _write(tmp_path, text)
    result = runner.invoke(app, ["new", str(spec_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    spec = _spec(text)
    module = (tmp_path / "out" / f"{spec.name}.py").read_text(encoding="utf-8")
    tree = ast.parse(module)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert sorted(classes) == sorted(f"{spec.class_name}{layer}Variant" for layer in spec.layers)
    for cls in classes.values():
        methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        assert {"init", "merge_safe", "merge_unsafe", "unmerge", "forward"} <= methods
    assert "from peft.tuners.lora.layer import" in module  # standalone: absolute import
    if spec.merge is None:
        assert 'raise RuntimeError("DiagLoRA adapters cannot be merged.")' in module
    assert "eval(" not in module and "exec(" not in module


def test_every_generated_module_passes_ruff_and_mypy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name, text in ALL_SPECS.items():
        result = runner.invoke(app, ["new", str(_write(tmp_path, text, f"{name}.yaml")), "--out", str(out / name)])
        assert result.exit_code == 0, result.output
    modules = sorted(str(p.relative_to(out)) for p in out.rglob("*.py"))
    assert len(modules) == len(ALL_SPECS)
    report = lint_generated(out, modules)
    assert report.ok, (report.findings, report.ruff_check, report.mypy)


def test_second_variant_code_is_not_dora_code(tmp_path: Path) -> None:
    plan = build_plan(_spec(ROWSCALE))
    assert not plan.uses_constant_cache  # no constant values: no cache helpers
    assert [w.attr for w in plan.weights] == ["lora_rowscale_gate"]
    (linear, embedding) = plan.classes
    assert linear.getters == [] and not any(b.cache_key for b in linear.forward.bindings)
    # Embedding has no dropout and no bias: the base output is `result`; Linear reuses or computes it
    assert embedding.forward.base == "result" and linear.forward.base == "dropout"
    assert linear.forward.base_dropped.startswith("F.linear(dropped, transpose(dequantize_module_weight(base_layer)")
    diag = build_plan(_spec(DIAG))
    assert diag.weights[1].names_tuple == "other_param_names"  # frozen: never set trainable by set_adapter
    assert not diag.weights[1].trainable
    assert build_plan(_spec(DIAG_NO_MERGE)).classes[0].merge is None
    assert diag.weights[0].shape == ["module.r[adapter_name]"]  # a shape over `r`, read when the weight is made
    # the conv class refuses groups > 1 and reads the base layer to do so; Linear does not
    assert diag.classes[1].init.refuses_groups and diag.classes[1].init.base_layer
    assert not diag.classes[0].init.refuses_groups


def test_forward_without_result_is_added_to_it() -> None:
    plan = build_plan(_spec(DIAG))
    assert plan.classes[0].forward.result.startswith("result + F.linear(")


# ---------------------------------------------------------------------------------------------------------------------
# into a PEFT tree


def _new(spec_path: Path, tree: Path, *extra: str) -> Any:
    return runner.invoke(app, ["new", str(spec_path), "--peft-root", str(tree), *extra])


def test_new_rerun_dry_run_remove_round_trip(peft_tree: Path) -> None:
    original = snapshot_tree(peft_tree)
    dry = _new(DORA_SPEC, peft_tree, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    planned = {c["path"]: c["action"] for c in json.loads(dry.stdout)["changes"]}
    assert planned == {
        "src/peft/tuners/lora/.peft-scaffold-refdora.json": "create",
        "src/peft/tuners/lora/refdora.py": "create",
        "src/peft/tuners/lora/config.py": "modify",
        "src/peft/tuners/lora/layer.py": "modify",
        "tests/test_custom_models.py": "modify",
    }
    assert snapshot_tree(peft_tree) == original  # dry-run wrote nothing

    first = _new(DORA_SPEC, peft_tree)
    assert first.exit_code == 0, first.output
    layer = (peft_tree / "src/peft/tuners/lora/layer.py").read_text(encoding="utf-8")
    for cls in ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d"):
        assert sites.mapping_entries(layer, cls)['("use_refdora",)'] == f"refdora.RefDora{cls}Variant"
    assert layer.count("from . import refdora, variants") == 5
    config = (peft_tree / "src/peft/tuners/lora/config.py").read_text(encoding="utf-8")
    assert sites.config_fields(config)[-1] == "use_refdora"
    assert '"is_lora_variant": True' in config.split("use_refdora: bool")[1].split(")\n\n")[0]
    assert "        use_refdora (`bool`):\n" in config
    tests = (peft_tree / "tests/test_custom_models.py").read_text(encoding="utf-8")
    assert "Vanilla MLP 1 LoRA with RefDoRA" in sites.test_case_descriptions(tests)

    after_new = snapshot_tree(peft_tree)
    again = _new(DORA_SPEC, peft_tree, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["up_to_date"] is True
    assert snapshot_tree(peft_tree) == after_new  # idempotent

    removed = runner.invoke(app, ["remove", "refdora", "--peft-root", str(peft_tree)])
    assert removed.exit_code == 0, removed.output
    assert snapshot_tree(peft_tree) == original  # byte-identical, no leftovers


def test_generated_and_edited_files_pass_ruff_and_mypy(peft_tree: Path) -> None:
    assert _new(DORA_SPEC, peft_tree).exit_code == 0
    report = lint_generated(peft_tree, ["src/peft/tuners/lora/refdora.py"])
    assert report.ok, report.findings
    # the registry edits keep PEFT's own files ruff-clean (check and format)
    edited = ["src/peft/tuners/lora/config.py", "src/peft/tuners/lora/layer.py", "tests/test_custom_models.py"]
    report = lint_generated(peft_tree, edited, mypy=False)
    assert report.ok, report.findings


def test_two_variants_stack_and_unstack(peft_tree: Path, tmp_path: Path) -> None:
    original = snapshot_tree(peft_tree)
    rowscale = _write(tmp_path, ROWSCALE, "rowscale.yaml")
    assert _new(DORA_SPEC, peft_tree).exit_code == 0
    assert _new(rowscale, peft_tree).exit_code == 0
    layer = (peft_tree / "src/peft/tuners/lora/layer.py").read_text(encoding="utf-8")
    assert layer.count("from . import refdora, rowscale, variants") == 2  # Linear and Embedding
    report = lint_generated(peft_tree, ["src/peft/tuners/lora/layer.py", "src/peft/tuners/lora/config.py"], mypy=False)
    assert report.ok, report.findings
    shutil.rmtree(peft_tree / ".ruff_cache", ignore_errors=True)
    # removed in the other order than added
    assert runner.invoke(app, ["remove", "refdora", "--peft-root", str(peft_tree)]).exit_code == 0
    assert runner.invoke(app, ["remove", "rowscale", "--peft-root", str(peft_tree)]).exit_code == 0
    assert snapshot_tree(peft_tree) == original


def test_changed_spec_regenerates_in_place(peft_tree: Path, tmp_path: Path) -> None:
    original = snapshot_tree(peft_tree)
    assert _new(DORA_SPEC, peft_tree).exit_code == 0
    fewer = dict(DORA, layers=["Linear"])
    changed = _write(tmp_path, yaml.safe_dump(sort_keys=False, data=fewer), "dora.yaml")
    result = _new(changed, peft_tree)
    assert result.exit_code == 0, result.output
    layer = (peft_tree / "src/peft/tuners/lora/layer.py").read_text(encoding="utf-8")
    assert layer.count("refdora") == 3  # Linear only: the import, the key and the class
    assert runner.invoke(app, ["remove", "refdora", "--peft-root", str(peft_tree)]).exit_code == 0
    assert snapshot_tree(peft_tree) == original


def test_edited_module_is_kept_unless_forced(peft_tree: Path) -> None:
    assert _new(DORA_SPEC, peft_tree).exit_code == 0
    module = peft_tree / "src/peft/tuners/lora/refdora.py"
    module.write_text(module.read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    refused = runner.invoke(app, ["remove", "refdora", "--peft-root", str(peft_tree)])
    assert refused.exit_code == 2 and "edited since it was generated" in refused.stderr
    assert module.exists()
    assert runner.invoke(app, ["remove", "refdora", "--peft-root", str(peft_tree), "--force"]).exit_code == 0
    assert not module.exists()


def test_registration_transforms_are_inverse_on_real_sources(peft_sdist: Path) -> None:
    plan = build_plan(_spec(DORA_SPEC.read_text(encoding="utf-8")))
    from scaffold.kinds.lora_variant.registration import registration_for

    reg = registration_for(plan)
    for site in sites.SITES:
        source = (peft_sdist / site.relpath).read_text(encoding="utf-8")
        added = site.apply(source, reg)
        assert added != source
        assert site.apply(added, reg) == added  # idempotent
        assert site.remove(added, reg) == source  # byte-identical inverse
        assert site.remove(source, reg) == source  # removing what is not there changes nothing


# ---------------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def _assert_refused(result: Any, *needles: str) -> None:
    output = result.output
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == 2, (result.exit_code, output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"name": "dora"}, ["name", "use_dora"]),
        ({"name": "rslora"}, ["name", "use_rslora"]),
        ({"layers": ["Linear", "MultiheadAttention"]}, ["layers[1]", "MultiheadAttention"]),
        ({"layers": ["Linear", "Linear"]}, ["layers", "more than once"]),
        ({"values": {"a": "b + 1", "b": "a * 2"}}, ["values.", "cycle"]),
        ({"layers": ["Conv1D"]}, ["layers[0]", "list `Linear`"]),
        ({"layers": ["Dense"]}, ["layers[0]", "unknown LoRA layer class"]),
        ({"forward": "result + unknown * x"}, ["forward", "unknown name `unknown`"]),
        ({"forward": "__import__('os')"}, ["forward"]),
        ({"forward": "result + per_output(magnitude, 2)"}, ["forward", "per_output"]),
        ({"merge": None}, ["unmerge", "together"]),
        ({"merge": "scale[:, None] * delta_weight"}, ["merge", "from `weight`"]),
        (
            {"values": {"weight_norm": "torch.linalg.norm(weight, dim=1)", "scale": "magnitude / weight_norm"}},
            ["values.weight_norm", "constant"],
        ),
        ({"weights": {"magnitude": {"shape": ["out_features"], "init": "magnitude"}}}, ["weights.magnitude.init"]),
        ({"weights": {"x": {"shape": [1], "init": 1}}}, ["weights.x", "reserved"]),
        ({"kind": "lora_varient"}, ["kind"]),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_bad_spec_is_one_line_and_writes_nothing(
    change: dict[str, Any], needles: list[str], tmp_path: Path, peft_tree: Path
) -> None:
    data = {**DORA, **change}
    spec_path = _write(tmp_path, yaml.safe_dump(sort_keys=False, data=data))
    _assert_refused(runner.invoke(app, ["check", str(spec_path)]), *needles)
    out = tmp_path / "out"
    _assert_refused(runner.invoke(app, ["new", str(spec_path), "--out", str(out)]), *needles)
    assert not out.exists()
    before = snapshot_tree(peft_tree)
    _assert_refused(_new(spec_path, peft_tree), *needles)
    assert snapshot_tree(peft_tree) == before


def test_tree_without_lora_variants_mapping_is_refused(make_peft_tree: Any) -> None:
    old = make_peft_tree("0.19.1")  # PEFT 0.19 chose variants in `resolve_lora_variant`, no mapping
    before = snapshot_tree(old)
    result = _new(DORA_SPEC, old)
    _assert_refused(result, "src/peft/tuners/lora/layer.py", "`class Linear` has no `lora_variants` mapping")
    assert snapshot_tree(old) == before


def test_name_taken_in_the_tree_is_refused(peft_tree: Path, tmp_path: Path) -> None:
    config = peft_tree / "src/peft/tuners/lora/config.py"
    text = config.read_text(encoding="utf-8")
    anchor = "    ensure_weight_tying: bool = field("
    config.write_text(text.replace(anchor, "    use_myvar: bool = field(default=False)\n" + anchor), encoding="utf-8")
    before = snapshot_tree(peft_tree)
    taken = _write(tmp_path, yaml.safe_dump(sort_keys=False, data={**DORA, "name": "myvar"}))
    _assert_refused(_new(taken, peft_tree), "src/peft/tuners/lora/config.py", "already has a field `use_myvar`")
    module_taken = _write(tmp_path, yaml.safe_dump(sort_keys=False, data={**DORA, "name": "velora"}), "velora.yaml")
    _assert_refused(_new(module_taken, peft_tree), "src/peft/tuners/lora/velora.py", "already exists")
    assert snapshot_tree(peft_tree) == before


def test_test_row_taken_by_peft_is_refused(peft_tree: Path, tmp_path: Path) -> None:
    # PEFT's own "Conv1d LoRA with DoRA" row: adding ours would be skipped, and removing it would take PEFT's
    before = snapshot_tree(peft_tree)
    same_title = _write(tmp_path, yaml.safe_dump(sort_keys=False, data={**DORA, "name": "mydora", "title": "DoRA"}))
    _assert_refused(_new(same_title, peft_tree), "tests/test_custom_models.py", "'Conv1d LoRA with DoRA'")
    assert snapshot_tree(peft_tree) == before


def test_unsupported_layer_class_in_tree_is_refused(peft_tree: Path) -> None:
    layer = peft_tree / "src/peft/tuners/lora/layer.py"
    text = layer.read_text(encoding="utf-8")
    layer.write_text(text.replace("class Conv3d(_ConvNd):", "class Conv3dRenamed(_ConvNd):"), encoding="utf-8")
    before = snapshot_tree(peft_tree)
    _assert_refused(_new(DORA_SPEC, peft_tree), "src/peft/tuners/lora/layer.py", "no `class Conv3d`")
    assert snapshot_tree(peft_tree) == before


def test_scaffold_error_names_the_field() -> None:
    with pytest.raises(ScaffoldError) as info:
        build_plan(_spec(DORA_SPEC.read_text(encoding="utf-8").replace("lora_B(lora_A(", "lora_C(lora_A(")))
    assert "forward" in str(info.value) and "lora_C" in str(info.value)
