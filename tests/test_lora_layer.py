"""`kind: lora_layer`: a LoRA layer class for a base layer type PEFT's LoRA does not cover (torch.nn.ConvTranspose2d in
reference_methods/, torch.nn.EmbeddingBag in tests/specs/lora_layer/ for generality).

Fast tests: the spec and its bad inputs, the libcst registration in `dispatch_default` and its exact inverse on PEFT
0.19/0.20/0.21 trees, the generated code's lint, and the out-of-tree layer on stock peft (installed in this environment)
checked numerically against an independent functional computation. The in-tree layer is run in
tests/test_lora_layer_in_tree.py (a subprocess with the tree's own peft), with `numeric_report` from this module.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.errors import ScaffoldError
from tests.conftest import snapshot_tree


REPO = Path(__file__).resolve().parent.parent
CONVT_SPEC = REPO / "reference_methods" / "lora_convtranspose2d.yaml"
BAG_SPEC = REPO / "tests" / "specs" / "lora_layer" / "lora_embeddingbag.yaml"
CONVT: dict[str, Any] = yaml.safe_load(CONVT_SPEC.read_text(encoding="utf-8"))
runner = CliRunner()


def _write_spec(directory: Path, data: Any, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _assert_one_line_error(result: Any, *fragments: str) -> str:
    output = result.output
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == 2, (result.exit_code, output)
    assert result.stdout.strip() == "", output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.fixture
def skip_import_check(monkeypatch):
    """Tests that are not about the base type skip its subprocess import check (2-3 s: it imports torch)."""
    monkeypatch.setenv("PEFT_SCAFFOLD_SKIP_IMPORT_CHECK", "1")


# -- the spec -------------------------------------------------------------------------------------------------------


def test_check_summarises_the_reference_spec():
    result = runner.invoke(app, ["check", str(CONVT_SPEC), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "lora_layer"
    assert summary["base_layer"] == "torch.nn.ConvTranspose2d"
    assert summary["layer_class"] == "ConvTranspose2d"
    assert summary["forward"] == "spec"
    assert "checked in a subprocess" in summary["base_layer_check"]
    assert "src/peft/tuners/lora/convtranspose2d.py" in summary["files_in_tree"]
    assert "lora_convtranspose2d.py" in summary["files_out"]


def test_plan_renders_the_spec_expressions():
    from scaffold.kinds.lora_layer import build_layer_plan
    from scaffold.spec import load_spec

    plan = build_layer_plan(load_spec(CONVT_SPEC))
    assert plan.features_prelude == [("kh", "base_layer.kernel_size[0]"), ("kw", "base_layer.kernel_size[1]")]
    assert plan.features == ("base_layer.in_channels * kh * kw", "base_layer.out_channels")
    assert plan.delta == (
        "(weight_B @ weight_A).reshape(base_layer.out_channels, base_layer.in_channels, kh, kw)"
        ".transpose(0, 1) * self.scaling[adapter]"
    )
    assert plan.checks[-1].condition == "base_layer.groups == 1"
    assert (
        plan.checks[-1].message == "LoRA for ConvTranspose2d supports groups=1 only (got groups={base_layer.groups})."
    )
    assert plan.forward is not None and plan.forward.cast_input and plan.forward.dropout
    bag = build_layer_plan(load_spec(BAG_SPEC))
    assert bag.forward is None and bag.indices_input  # the default forward, no cast of the indices
    assert bag.example_input == "torch.randint(0, 20, (3, 4))"


def _set(path: str, value: Any):
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[int(part)] if isinstance(data, list) else data.setdefault(part, {})
        data[last] = copy.deepcopy(value)

    return mutate


def _delete(key: str):
    return lambda data: data.pop(key)


# (mutation, the spec field the error names, a fragment of the reason); none of these needs the import check
STATIC_CASES = [
    (_set("base_layer", "ConvTranspose2d"), "base_layer", "dotted path"),
    (_set("base_layer", "torch.nn.modules.conv._ConvTransposeNd"), "base_layer", "private"),
    (_set("base_layer", "torch.nn.conv_transpose2d"), "base_layer", "does not name a class"),
    (_set("base_layer", "torch.nn.Conv2d"), "base_layer", "already supports torch.nn.Conv2d"),
    (_set("base_layer", "transformers.pytorch_utils.Conv1D"), "base_layer", "already supports"),
    (_set("base_layer", "os; import os"), "base_layer", "dotted path"),
    (_set("base_layer", ["torch.nn.ConvTranspose2d"]), "base_layer", "valid string"),
    (_set("name", "layer"), "name", "module of PEFT's LoRA package"),
    (_set("name", "Conv-T"), "name", "lowercase identifier"),
    (_set("name", "import"), "name", "keyword"),
    (_set("class_name", "Linear"), "class_name", "already a class"),
    (_set("class_name", "convT"), "class_name", "CamelCase"),
    (_set("kind", "lora_layers"), "kind", "must be one of"),
    (_set("attributes", ["_weight"]), "attributes", "not an identifier"),
    (_set("attributes", ["stride", "stride"]), "attributes", "listed twice"),
    (_set("attributes", ["x"]), "attributes", "uses itself"),
    (_set("attributes", ["print"]), "attributes", "uses itself"),
    (_set("dims.B", "in_channels"), "dims.B", "uses itself"),
    (_set("dims.stride", "1"), "dims.stride", "also listed in `attributes`"),
    (_set("dims.kh", "__import__('os').getcwd()"), "dims.kh", "allowed"),
    (_set("dims.kh", "eval('1')"), "dims.kh", "unknown function"),
    (_set("in_features", "in_channels.__class__"), "in_features", "not allowed"),
    (_set("in_features", "bias.shape[0]"), "in_features", "must be listed under `attributes`"),
    (_set("out_features", "open('x')"), "out_features", "unknown function"),
    (_set("delta_weight", "A.T @ A.T"), "delta_weight", "missing: B"),
    (_set("delta_weight", "B @ A @ weight"), "delta_weight", "unknown name `weight`"),
    (_set("delta_weight", "(B @ A).reshape(*kernel_size)"), "delta_weight", "starred"),
    (_set("delta_weight", "(lambda: B @ A)()"), "delta_weight", "lambda"),
    (_delete("delta_weight"), "delta_weight", "required field is missing"),
    (_set("forward", "F.linear(x, B @ A)"), "forward", "dropout"),
    (_set("forward", "F.linear(dropout(B), A)"), "forward", "must use the input `x`"),
    (_set("forward", "torch.load(x)"), "forward", "not in the allowed list"),
    (_set("checks.0.condition", "__builtins__"), "checks[0].condition", "not allowed"),
    (_set("checks.0.message", "groups {0}"), "checks[0].message", "braces"),
    (_set("checks.0.message", ""), "checks[0].message", "empty"),
    (_set("title", 'say "hi"'), "title", "quotes"),
    (_set("input", "ints"), "input", "float"),
    (_set("example.input_shape", [1, 4, 5, 5]), "example.input_shape", "batch"),
    (_set("example.input_shape", []), "example.input_shape", "at least 1"),
    (_set("example.kwargs", {"__class__": 1}), "example.kwargs", "not an identifier"),
    (_set("example.args", [{"a": 1}]), "example.args", "only numbers"),
    (_set("example.args", [float("inf")]), "example.args", "finite"),
    (_delete("example"), "example", "required field is missing"),
    (_set("surprise", 1), "surprise", "unknown field"),
]


@pytest.mark.parametrize(
    "mutate, field, reason", STATIC_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(STATIC_CASES)]
)
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(mutate, field, reason, tmp_path, peft_tree_copy):
    data = copy.deepcopy(CONVT)
    mutate(data)
    spec = _write_spec(tmp_path, data)
    out = tmp_path / "out"
    before = snapshot_tree(peft_tree_copy)
    for args in (
        ["check", str(spec)],
        ["new", str(spec), "--out", str(out)],
        ["new", str(spec), "--peft-root", str(peft_tree_copy)],
    ):
        line = _assert_one_line_error(runner.invoke(app, args), f"{spec}: {field}")
        if reason:
            assert reason in line, line
    assert not out.exists()
    assert snapshot_tree(peft_tree_copy) == before


@pytest.fixture(scope="module")
def peft_tree_copy(peft_sdist, tmp_path_factory):
    """One PEFT 0.21.2 tree shared by the tests that must leave it untouched."""
    from scaffold.peft_source import copy_peft_tree

    return copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("shared") / "peft")


# base types and examples only the import check (a subprocess with torch) can refuse
IMPORT_CASES = [
    (_set("base_layer", "torch.nn.DoesNotExist"), "base_layer", "has no attribute `DoesNotExist`"),
    (_set("base_layer", "nosuchpackage.layers.Layer"), "base_layer", "no module `nosuchpackage`"),
    (_set("base_layer", "torch.Tensor"), "base_layer", "not a torch.nn.Module subclass"),
    (_set("base_layer", "torch.nn.LazyLinear"), "base_layer", "subclass of torch.nn.modules.linear.Linear"),
    (_set("example.args", [4, 6]), "example", "ConvTranspose2d(*args, **kwargs) failed"),
    (_set("attributes", ["in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
                         "groups", "dilation", "fan_in"]), "attributes", "has no attribute `fan_in`"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, field, reason", IMPORT_CASES, ids=[c[2].split()[-1] for c in IMPORT_CASES])
def test_unimportable_or_unsuitable_base_type(mutate, field, reason, tmp_path):
    data = copy.deepcopy(CONVT)
    mutate(data)
    spec = _write_spec(tmp_path, data)
    out = tmp_path / "out"
    for args in (["check", str(spec)], ["new", str(spec), "--out", str(out)]):
        line = _assert_one_line_error(runner.invoke(app, args), f"{spec}: {field}")
        assert reason in line, line
    assert not out.exists()


def test_a_class_without_weight_is_refused(tmp_path):
    data = copy.deepcopy(CONVT)
    data.update(base_layer="torch.nn.ReLU", attributes=[], dims={}, example={"input_shape": [2, 3]})
    data.update(in_features=3, out_features=3, checks=[], delta_weight="B @ A * scaling", forward=None)
    spec = _write_spec(tmp_path, {k: v for k, v in data.items() if v is not None})
    _assert_one_line_error(runner.invoke(app, ["check", str(spec)]), f"{spec}: base_layer", "no `weight` tensor")


def test_in_tree_needs_a_torch_type(tmp_path, peft_tree_copy, skip_import_check):
    data = copy.deepcopy(CONVT)
    data["base_layer"] = "mypkg.layers.FancyConv"
    spec = _write_spec(tmp_path, data)
    before = snapshot_tree(peft_tree_copy)
    line = _assert_one_line_error(
        runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree_copy)]), f"{spec}: base_layer"
    )
    assert "_register_custom_module" in line
    assert snapshot_tree(peft_tree_copy) == before


def test_the_import_check_runs_in_a_subprocess_not_in_the_cli_process(tmp_path):
    # the generation path never imports torch: the base type is imported by a child process
    code = f"""
import sys
from pathlib import Path
from scaffold import pipeline
generation = pipeline.generate_files_only(Path({str(CONVT_SPEC)!r}), Path({str(tmp_path / "out")!r}))
assert any("checked in a subprocess" in note for note in generation.notes), generation.notes
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "peft", "transformers")))
assert not leaked, leaked
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- trees the registration cannot handle ----------------------------------------------------------------------------


def test_tree_without_dispatch_default(tmp_path, peft_tree, skip_import_check):
    layer = peft_tree / "src/peft/tuners/lora/layer.py"
    layer.write_text(layer.read_text().replace("def dispatch_default(", "def dispatch_fallback("))
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(peft_tree)])
    _assert_one_line_error(result, "src/peft/tuners/lora/layer.py", "no top-level `dispatch_default`")
    assert snapshot_tree(peft_tree) == before


def test_tree_with_another_dispatch_shape(tmp_path, peft_tree, skip_import_check):
    layer = peft_tree / "src/peft/tuners/lora/layer.py"
    text = layer.read_text()
    head, tail = text.split("def dispatch_default(")
    layer.write_text(head + "def dispatch_default(target, adapter_name, config, **kwargs):\n    return None\n")
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(peft_tree)])
    _assert_one_line_error(result, "src/peft/tuners/lora/layer.py", "chain")
    assert snapshot_tree(peft_tree) == before


def test_tree_without_lora_layer_module(tmp_path, peft_tree, skip_import_check):
    (peft_tree / "src/peft/tuners/lora/layer.py").unlink()
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(peft_tree)])
    _assert_one_line_error(result, "src/peft/tuners/lora/layer.py", "missing")
    assert snapshot_tree(peft_tree) == before


def test_not_a_peft_tree(tmp_path, skip_import_check):
    result = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(tmp_path)])
    _assert_one_line_error(result, str(tmp_path), "not a PEFT source tree")
    assert list(tmp_path.iterdir()) == []


def test_collisions_with_what_the_tree_has(tmp_path, peft_tree, skip_import_check):
    before = snapshot_tree(peft_tree)
    data = copy.deepcopy(CONVT)
    data["class_name"] = "Conv2dFancy"
    (peft_tree / "src/peft/tuners/lora/convtranspose2d.py").write_text("# someone's module\n")
    spec = _write_spec(tmp_path, data)
    line = _assert_one_line_error(runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]))
    assert "convtranspose2d.py: already exists" in line
    (peft_tree / "src/peft/tuners/lora/convtranspose2d.py").unlink()
    layer = peft_tree / "src/peft/tuners/lora/layer.py"
    original = layer.read_text()
    layer.write_text(original + "\n\nclass Conv2dFancy:\n    pass\n")
    line = _assert_one_line_error(runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]))
    assert "already defines 'Conv2dFancy'" in line
    layer.write_text(
        original.replace(
            "isinstance(target_base_layer, Conv1D)", "isinstance(target_base_layer, torch.nn.ConvTranspose2d)"
        )
    )
    line = _assert_one_line_error(runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]))
    assert "already handles torch.nn.ConvTranspose2d" in line
    layer.write_text(original)
    assert snapshot_tree(peft_tree) == before


# -- registration in a tree: the edits, re-running, remove -----------------------------------------------------------


EXPECTED_BRANCH = """\
    elif isinstance(target_base_layer, Conv1D):
        if not config.fan_in_fan_out:
            warnings.warn(
                "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True."
            )
            config.fan_in_fan_out = True
        new_module = Linear(target, adapter_name, is_target_conv_1d_layer=True, config=config, **kwargs)
    elif isinstance(target_base_layer, torch.nn.ConvTranspose2d):
        from .convtranspose2d import ConvTranspose2d

        new_module = ConvTranspose2d(target, adapter_name, config=config, **kwargs)
    elif isinstance(target_base_layer, torch.nn.EmbeddingBag):
        from .embeddingbag import EmbeddingBag

        new_module = EmbeddingBag(target, adapter_name, config=config, **kwargs)

    return new_module
"""


@pytest.mark.parametrize("version", ["0.21.2", "0.20.0", "0.19.1"])
def test_new_rerun_dry_run_and_remove_restore_the_tree_byte_for_byte(version, make_peft_tree, skip_import_check):
    tree = make_peft_tree(version)
    original = snapshot_tree(tree)

    dry = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(tree), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = {c["path"]: c["action"] for c in json.loads(dry.stdout)["changes"]}
    assert planned == {
        "examples/lora_convtranspose2d/lora_convtranspose2d_example.py": "create",
        "src/peft/tuners/lora/.peft-scaffold-lora_layer-convtranspose2d.json": "create",
        "src/peft/tuners/lora/__init__.py": "modify",
        "src/peft/tuners/lora/convtranspose2d.py": "create",
        "src/peft/tuners/lora/layer.py": "modify",
        "tests/test_lora_convtranspose2d.py": "create",
    }
    assert snapshot_tree(tree) == original

    for spec in (CONVT_SPEC, BAG_SPEC):  # two layer types stacked in one tree
        result = runner.invoke(app, ["new", str(spec), "--peft-root", str(tree)])
        assert result.exit_code == 0, result.output
        assert "dispatch_default (src/peft/tuners/lora/layer.py): changed" in result.stdout
    layer = (tree / "src/peft/tuners/lora/layer.py").read_text()
    assert layer.endswith(EXPECTED_BRANCH) or EXPECTED_BRANCH in layer
    init = (tree / "src/peft/tuners/lora/__init__.py").read_text()
    assert "from .convtranspose2d import ConvTranspose2d\n" in init
    assert "from .embeddingbag import EmbeddingBag\n" in init
    assert '    "ConvTranspose2d",\n' in init and '    "EmbeddingBag",\n' in init

    after = snapshot_tree(tree)
    again = runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(tree), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["up_to_date"] is True
    assert snapshot_tree(tree) == after

    # removed in the order they were added in: each inverse works on the other one's edits too
    for name in ("convtranspose2d", "embeddingbag"):
        removed = runner.invoke(app, ["remove", name, "--peft-root", str(tree)])
        assert removed.exit_code == 0, removed.output
    assert snapshot_tree(tree) == original


def test_remove_refuses_edited_files_unless_forced(peft_tree, skip_import_check):
    original = snapshot_tree(peft_tree)
    assert runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    module = peft_tree / "src/peft/tuners/lora/convtranspose2d.py"
    module.write_text(module.read_text() + "# my edit\n")
    edited = snapshot_tree(peft_tree)
    for args in (["remove", "convtranspose2d"], ["new", str(CONVT_SPEC)]):
        line = _assert_one_line_error(runner.invoke(app, [*args, "--peft-root", str(peft_tree)]), "convtranspose2d.py")
        assert "--force" in line
        assert snapshot_tree(peft_tree) == edited
    forced = runner.invoke(app, ["remove", "convtranspose2d", "--peft-root", str(peft_tree), "--force"])
    assert forced.exit_code == 0, forced.output
    assert snapshot_tree(peft_tree) == original
    # a name this kind never generated is still refused (by the tuner registrar)
    line = _assert_one_line_error(runner.invoke(app, ["remove", "convtranspose2d", "--peft-root", str(peft_tree)]))
    assert "not generated by peft-scaffold" in line


def test_regenerating_under_another_class_name_needs_remove_first(tmp_path, peft_tree, skip_import_check):
    assert runner.invoke(app, ["new", str(CONVT_SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    data = copy.deepcopy(CONVT)
    data["class_name"] = "LoraConvTranspose2d"
    spec = _write_spec(tmp_path, data)
    line = _assert_one_line_error(runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]))
    assert "run `remove convtranspose2d`" in line
    # a changed spec that keeps the names is a normal re-generation
    data = copy.deepcopy(CONVT)
    data["summary"] = "Another summary."
    spec = _write_spec(tmp_path, data)
    result = runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    assert "Another summary." in (peft_tree / "src/peft/tuners/lora/convtranspose2d.py").read_text()


def test_dispatch_transforms_are_exact_inverses_on_the_real_file(peft_sdist):
    from scaffold.kinds.lora_layer.register import (
        AddDispatchBranch,
        LayerRegistration,
        RemoveDispatchBranch,
        dispatched_types,
    )
    from scaffold.register.transforms import run

    source = (peft_sdist / "src/peft/tuners/lora/layer.py").read_text()
    reg = LayerRegistration("convtranspose2d", "ConvTranspose2d", "torch.nn.ConvTranspose2d")
    added = run(source, "layer.py", lambda ctx: AddDispatchBranch(ctx, reg))
    assert dispatched_types(added)[-1] == "torch.nn.ConvTranspose2d"
    assert dispatched_types(added)[:-1] == dispatched_types(source)
    assert run(added, "layer.py", lambda ctx: AddDispatchBranch(ctx, reg)) == added  # idempotent
    assert run(added, "layer.py", lambda ctx: RemoveDispatchBranch(ctx, reg)) == source
    assert run(source, "layer.py", lambda ctx: RemoveDispatchBranch(ctx, reg)) == source
    # a branch for the same type that is not ours is neither duplicated nor removed
    theirs = source.replace(
        "isinstance(target_base_layer, Conv1D)", "isinstance(target_base_layer, torch.nn.ConvTranspose2d)"
    )
    with pytest.raises(ScaffoldError, match="already has a branch"):
        run(theirs, "layer.py", lambda ctx: AddDispatchBranch(ctx, reg))
    assert run(theirs, "layer.py", lambda ctx: RemoveDispatchBranch(ctx, reg)) == theirs


# -- the generated code ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [CONVT_SPEC, BAG_SPEC], ids=["convtranspose2d", "embeddingbag"])
def test_generated_out_of_tree_code_is_ruff_and_mypy_clean_and_idempotent(spec, tmp_path, skip_import_check):
    from scaffold.verify.checks import lint_generated

    out = tmp_path / "out"
    result = runner.invoke(app, ["new", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.py"))
    module = next(f for f in files if "/" not in f)
    assert len(files) == 3, files
    report = lint_generated(out, files, first_party=(module.removesuffix(".py"),))
    assert report.ok, (report.findings, report.mypy, report.ruff_check)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = runner.invoke(app, ["new", str(spec), "--out", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["up_to_date"] is True
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_generated_in_tree_code_is_ruff_and_mypy_clean(peft_tree, skip_import_check):
    from scaffold.verify.checks import lint_generated

    for spec in (CONVT_SPEC, BAG_SPEC):
        assert runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]).exit_code == 0
    files = [
        "src/peft/tuners/lora/convtranspose2d.py",
        "src/peft/tuners/lora/embeddingbag.py",
        "tests/test_lora_convtranspose2d.py",
        "tests/test_lora_embeddingbag.py",
        "examples/lora_convtranspose2d/lora_convtranspose2d_example.py",
        "examples/lora_embeddingbag/lora_embeddingbag_example.py",
    ]
    report = lint_generated(peft_tree, files)
    assert report.ok, (report.findings, report.mypy, report.ruff_check)
    # the registry edits keep PEFT's own files ruff-clean (isort order of the import, RUF022 order of __all__)
    registry = lint_generated(
        peft_tree, ["src/peft/tuners/lora/__init__.py", "src/peft/tuners/lora/layer.py"], mypy=False
    )
    assert registry.ok, (registry.findings, registry.ruff_check)


# -- numbers: the out-of-tree layer on stock peft --------------------------------------------------------------------


def _import_file(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numeric_report(layer_classes: dict[str, Any], register: bool) -> dict[str, dict[str, float]]:
    """Max abs differences between the generated LoRA layers and an independent functional computation.

    `layer_classes`: base class name ("ConvTranspose2d", "EmbeddingBag") -> generated LoRA class. With `register`,
    the classes are mapped with `LoraConfig._register_custom_module` (stock peft); without, the tree's
    `dispatch_default` must create them.
    """
    import tempfile

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, PeftModel, get_peft_model
    from torch import nn

    report: dict[str, dict[str, float]] = {}

    def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
        assert a.shape == b.shape, (a.shape, b.shape)
        return (a.detach().double() - b.detach().double()).abs().max().item()

    class Net(nn.Module):
        def __init__(self, layer: nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
            return self.layer(x, *args)

    def config(base_cls: type, lora_cls: Any, **kwargs: Any) -> LoraConfig:
        cfg = LoraConfig(target_modules=["layer"], **kwargs)
        if register:
            cfg._register_custom_module({base_cls: lora_cls})
        return cfg

    def common(name: str, make: Any, base_cls: type, x: torch.Tensor, delta: Any, apply: Any) -> dict[str, float]:
        lora_cls = layer_classes[name]
        torch.manual_seed(0)
        base = Net(make()).eval()
        base_weight = base.layer.weight.detach().clone()
        torch.manual_seed(1)
        cfg = config(base_cls, lora_cls, r=3, lora_alpha=5, init_lora_weights=False)
        model = get_peft_model(Net(make()), cfg).eval()
        model.base_model.model.layer.get_base_layer().load_state_dict(base.layer.state_dict())
        layer = model.base_model.model.layer
        assert type(layer) is lora_cls, type(layer)
        out: dict[str, float] = {}
        with torch.no_grad():
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            W = delta(A, B, 5 / 3)  # computed here, independently of the generated code
            expected = base(x) + apply(x, W)
            output = model(x)
            out["forward"] = maxdiff(output, expected)
            out["effect"] = maxdiff(output, base(x))  # must be large: a no-op adapter cannot pass
            out["delta_weight"] = maxdiff(layer.get_delta_weight("default"), W)
            model.merge_adapter()
            out["merged_weight"] = maxdiff(layer.get_base_layer().weight, base_weight + W)
            out["merged_forward"] = maxdiff(model(x), output)
            model.unmerge_adapter()
            out["restored_weight"] = maxdiff(layer.get_base_layer().weight, base_weight)
            out["unmerged_forward"] = maxdiff(model(x), output)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                loaded_cfg = LoraConfig.from_pretrained(tmp)
                if register:
                    loaded_cfg._register_custom_module({base_cls: lora_cls})
                torch.manual_seed(0)
                loaded = PeftModel.from_pretrained(Net(make()), tmp, config=loaded_cfg).eval()
            loaded.base_model.model.layer.get_base_layer().load_state_dict(base.layer.state_dict())
            out["loaded_forward"] = maxdiff(loaded(x), output)
            state, loaded_state = model.state_dict(), loaded.state_dict()
            assert state.keys() == loaded_state.keys()
            out["loaded_state"] = max(maxdiff(state[k], loaded_state[k]) for k in state if "lora_" in k)
            unloaded = model.merge_and_unload()
            assert type(unloaded.layer) is base_cls
            out["merge_and_unload"] = maxdiff(unloaded(x), output)
        return out

    # ConvTranspose2d with a non-square kernel, stride, padding, output padding and dilation (any mix-up of the
    # kernel axes or of the (in, out) order of the weight shows)
    def make_convt() -> nn.Module:
        return nn.ConvTranspose2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2))

    def convt_delta(A: torch.Tensor, B: torch.Tensor, s: float) -> torch.Tensor:
        # W[i, o, p, q] = s * sum_r B[o, r] A[r, (i, p, q)]: (in, out, kh, kw) like ConvTranspose2d.weight
        return torch.einsum("or,ripq->iopq", B, A.reshape(A.shape[0], 3, 3, 2)) * s

    def convt_apply(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, W, None, stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2))

    torch.manual_seed(2)
    x = torch.randn(4, 3, 6, 5)
    report["ConvTranspose2d"] = common("ConvTranspose2d", make_convt, nn.ConvTranspose2d, x, convt_delta, convt_apply)
    try:  # the spec's check: groups must be 1
        get_peft_model(
            Net(nn.ConvTranspose2d(4, 4, 3, groups=2)), config(nn.ConvTranspose2d, layer_classes["ConvTranspose2d"])
        )
        report["ConvTranspose2d"]["groups_refused"] = 0.0
    except ValueError as exc:
        report["ConvTranspose2d"]["groups_refused"] = float("groups=2" in str(exc))

    # EmbeddingBag (sum): integer input, no bias, the default forward (the base layer's own forward with the delta)
    def make_bag() -> nn.Module:
        return nn.EmbeddingBag(20, 6, mode="sum")

    def bag_delta(A: torch.Tensor, B: torch.Tensor, s: float) -> torch.Tensor:
        return (B @ A).T * s  # (num_embeddings, embedding_dim)

    def bag_apply(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(x, W, mode="sum")

    indices = torch.randint(0, 20, (5, 4))
    report["EmbeddingBag"] = common("EmbeddingBag", make_bag, nn.EmbeddingBag, indices, bag_delta, bag_apply)
    # 1-D input with offsets: the extra forward argument reaches the adapter path too
    torch.manual_seed(1)
    model = get_peft_model(
        Net(make_bag()),
        config(nn.EmbeddingBag, layer_classes["EmbeddingBag"], r=3, lora_alpha=5, init_lora_weights=False),
    ).eval()
    layer = model.base_model.model.layer
    flat, offsets = torch.randint(0, 20, (10,)), torch.tensor([0, 3, 7])
    with torch.no_grad():
        W = bag_delta(layer.lora_A["default"].weight, layer.lora_B["default"].weight, 5 / 3)
        expected = layer.get_base_layer()(flat, offsets) + F.embedding_bag(flat, W, offsets, mode="sum")
        report["EmbeddingBag"]["forward_offsets"] = maxdiff(model(flat, offsets), expected)
    return report


TOLERANCES = {
    "forward": 1e-5,
    "delta_weight": 1e-6,
    "merged_weight": 1e-6,
    "merged_forward": 1e-5,
    "restored_weight": 1e-6,
    "unmerged_forward": 1e-6,
    "loaded_forward": 0.0,
    "loaded_state": 0.0,
    "merge_and_unload": 1e-5,
    "forward_offsets": 1e-5,
}


def assert_report(report: dict[str, dict[str, float]]) -> None:
    assert set(report) == {"ConvTranspose2d", "EmbeddingBag"}
    for layer, values in report.items():
        for key, tolerance in TOLERANCES.items():
            if key in values:
                assert values[key] <= tolerance, (layer, key, values[key])
        assert values["effect"] > 1e-3, (layer, values)
    assert report["ConvTranspose2d"]["groups_refused"] == 1.0
    assert "forward_offsets" in report["EmbeddingBag"]


@pytest.fixture(scope="module")
def out_of_tree_classes(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out")
    classes = {}
    for spec, module, cls in (
        (CONVT_SPEC, "lora_convtranspose2d", "ConvTranspose2d"),
        (BAG_SPEC, "lora_embeddingbag", "EmbeddingBag"),
    ):
        result = runner.invoke(
            app, ["new", str(spec), "--out", str(out)], env={"PEFT_SCAFFOLD_SKIP_IMPORT_CHECK": "1"}
        )
        assert result.exit_code == 0, result.output
        classes[cls] = getattr(_import_file(out / f"{module}.py", f"_generated_{module}"), cls)
    return classes


def test_out_of_tree_layers_on_stock_peft_match_the_functional_computation(out_of_tree_classes):
    import peft

    assert "site-packages" in peft.__file__ or "dist-packages" in peft.__file__  # the installed, stock peft
    report = numeric_report(out_of_tree_classes, register=True)
    assert_report(report)


def test_stock_peft_does_not_support_the_type_without_registration():
    # why the layer type is needed at all: PEFT 0.21.2's LoRA refuses it
    from peft import LoraConfig, get_peft_model
    from torch import nn

    for layer in (nn.ConvTranspose2d(2, 2, 3), nn.EmbeddingBag(5, 2)):
        with pytest.raises(ValueError, match="is not supported"):
            get_peft_model(nn.Sequential(layer), LoraConfig(target_modules=["0"]))


def test_import_check_is_skipped_without_torch(monkeypatch):
    # an environment without torch can still generate (the check says it did not verify the type)
    from scaffold.kinds.lora_layer import base_type
    from scaffold.spec import load_spec

    real_find_spec = importlib.util.find_spec
    monkeypatch.delenv("PEFT_SCAFFOLD_SKIP_IMPORT_CHECK", raising=False)
    monkeypatch.setattr(
        base_type.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    check = base_type.check_base_type(load_spec(CONVT_SPEC), "spec.yaml")
    assert not check.checked and "torch is not installed" in check.note
