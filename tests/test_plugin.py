"""`new SPEC --plugin OUTDIR` without installing anything: the package's files, its metadata, that its adapter code is
the generator's own (only import lines differ), ruff, and bad input. tests/test_plugin_install.py installs it."""

from __future__ import annotations

import ast
import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plugin import PEFT_REQUIREMENT
from scaffold.render.format import ruff_binary


REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "reference_methods" / "lora.yaml"
CONV_TRANSPOSE = REPO / "reference_methods" / "lora_convtranspose2d.yaml"
runner = CliRunner()


def _new_plugin(spec: Path, out: Path, *extra: str):
    return runner.invoke(app, ["new", str(spec), "--plugin", str(out), *extra])


def _files(root: Path) -> dict[str, str]:
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return {p.relative_to(root).as_posix(): p.read_text() for p in paths}


def _toml(path: Path) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads(path.read_text())


def _spec_variant(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(LORA.read_text())
    data.update(changes)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin")
    result = _new_plugin(LORA, out)
    assert result.exit_code == 0, result.output
    return out / "peft-reflora"


def test_plugin_layout(plugin):
    assert sorted(_files(plugin)) == [
        "LICENSE",
        "README.md",
        "docs/reflora.md",
        "examples/reflora/README.md",
        "examples/reflora/reflora_benchmark.py",
        "examples/reflora/reflora_example.py",
        "pyproject.toml",
        "ruff.toml",
        "src/peft_reflora/__init__.py",
        "src/peft_reflora/_registration.py",
        "src/peft_reflora/config.py",
        "src/peft_reflora/layer.py",
        "src/peft_reflora/model.py",
        "tests/test_reflora.py",
        "tests/test_registration.py",
    ]
    for rel, text in _files(plugin).items():
        if rel.endswith(".py"):
            ast.parse(text, filename=rel)
        assert "{{" not in text and "cookiecutter" not in text, rel  # every placeholder rendered


def test_pyproject_declares_the_tested_peft_range_and_pins_nothing(plugin):
    project = _toml(plugin / "pyproject.toml")["project"]
    assert project["name"] == "peft-reflora"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert f"peft{PEFT_REQUIREMENT}" in project["dependencies"]
    assert not any("==" in dep for dep in project["dependencies"])
    registration = (plugin / "src/peft_reflora/_registration.py").read_text()
    assert f'PEFT_REQUIREMENT = "{PEFT_REQUIREMENT}"' in registration
    assert (plugin / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_registration_runs_before_the_adapter_code_imports_peft(plugin):
    """`_registration` checks PEFT's version on import: it must be the package's first import."""
    tree = ast.parse((plugin / "src/peft_reflora/__init__.py").read_text())
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert (imports[0].level, imports[0].module) == (1, "_registration")
    assert [alias.name for alias in imports[0].names] == ["register_peft_method"]
    call = tree.body[-1]
    assert isinstance(call, ast.Expr) and ast.unparse(call.value).startswith("register_peft_method(name='reflora'")


def test_adapter_code_is_the_generator_s_with_only_import_lines_changed(plugin, tmp_path):
    assert runner.invoke(app, ["new", str(LORA), "--out", str(tmp_path)]).exit_code == 0
    for module in ("__init__", "config", "layer", "model"):
        standalone = (tmp_path / "reflora" / f"{module}.py").read_text().splitlines()
        packaged = (plugin / "src/peft_reflora" / f"{module}.py").read_text().splitlines()
        changed = [
            line[1:].strip()
            for line in difflib.unified_diff(standalone, packaged, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        for line in changed:
            # an import moved between isort's sections takes its blank line along
            assert not line or line.startswith(("from ", "import ", ">>> from ", "# Copyright ")), (module, line)
    tests = (plugin / "tests/test_reflora.py").read_text()
    assert "from peft_reflora import RefLoraConfig, RefLoraLayer" in tests
    assert "from peft_reflora import RefLoraConfig\n" in (plugin / "src/peft_reflora/model.py").read_text().replace(
        ">>> ", ""
    )


TUNER_SPECS = [
    path
    for path in sorted([*(REPO / "reference_methods").glob("*.yaml"), *(REPO / "tests" / "specs").glob("*.yaml")])
    if "\nkind:" not in path.read_text()
]
LORA_LAYER_SPECS = [CONV_TRANSPOSE, *sorted((REPO / "tests" / "specs" / "lora_layer").glob("*.yaml"))]


@pytest.mark.parametrize("spec", TUNER_SPECS + LORA_LAYER_SPECS, ids=lambda p: p.stem)
def test_plugin_is_ruff_clean_with_its_own_settings(spec, tmp_path):
    result = _new_plugin(spec, tmp_path)
    assert result.exit_code == 0, result.output
    (root,) = tmp_path.iterdir()
    ruff = ruff_binary()
    for args in (["check", "."], ["format", "--check", "."]):  # README.md's code blocks too
        proc = subprocess.run([ruff, *args], cwd=root, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_method_llama_lacks_gets_a_generic_usage(tmp_path):
    weights = yaml.safe_load(LORA.read_text())["weights"]
    for weight in weights.values():
        weight.pop("init_by_layer")  # they name Embedding
    spec = _spec_variant(
        tmp_path, name="convlora", layers=["Conv2d"], forward={}, weights=weights, peft_test_kwargs={}
    )
    assert _new_plugin(spec, tmp_path / "out").exit_code == 0
    root = tmp_path / "out" / "peft-convlora"
    assert "LLAMA_TARGETS = None" in (root / "tests/test_registration.py").read_text()
    readme = (root / "README.md").read_text()
    assert "Llama" not in readme and "torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))" in readme


def test_license_field_chooses_mit(tmp_path):
    spec = _spec_variant(tmp_path, name="mitlora", class_prefix="MitLora", license="MIT")
    result = _new_plugin(spec, tmp_path / "out")
    assert result.exit_code == 0, result.output
    root = tmp_path / "out" / "peft-mitlora"
    assert (root / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) ")
    assert "the peft-mitlora authors" in (root / "LICENSE").read_text()
    assert _toml(root / "pyproject.toml")["project"]["license"] == "MIT"
    for rel, text in _files(root).items():
        if rel.endswith(".py"):
            assert "Apache" not in text and "# Licensed under the MIT License" in text, rel


def test_unknown_license_is_refused(tmp_path):
    result = _new_plugin(_spec_variant(tmp_path, license="GPL-3.0"), tmp_path / "out")
    assert result.exit_code == 2
    assert "license" in result.output and "Apache-2.0" in result.output
    assert not (tmp_path / "out").exists()


def test_non_empty_outdir_needs_force(tmp_path, plugin):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = _new_plugin(LORA, out)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "not empty" in result.output and "--force" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    stale = out / "peft-reflora" / "src" / "peft_reflora" / "old.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("# from an earlier generation\n")
    result = _new_plugin(LORA, out, "--force")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and (out / "notes.txt").read_text() == "mine"
    assert _files(out / "peft-reflora") == _files(plugin)


def test_dry_run_writes_nothing(tmp_path):
    result = _new_plugin(LORA, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "+++ b/peft-reflora/src/peft_reflora/_registration.py" in result.output
    assert not (tmp_path / "out").exists()


def test_invalid_spec_gives_the_same_error_as_new(tmp_path):
    spec = _spec_variant(tmp_path, delta_weight="lora_B @ lora_C")
    plugin = _new_plugin(spec, tmp_path / "plugin")
    files_only = runner.invoke(app, ["new", str(spec), "--out", str(tmp_path / "out")])
    assert plugin.exit_code == files_only.exit_code == 2
    assert plugin.output == files_only.output and plugin.output.count("\n") == 1
    assert not (tmp_path / "plugin").exists()


def test_lora_variant_is_refused_with_a_pointer_to_peft_root(tmp_path):
    result = _new_plugin(REPO / "reference_methods" / "dora.yaml", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "lora_variant" in result.output and "--peft-root" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def layer_plugin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layer-plugin")
    result = _new_plugin(CONV_TRANSPOSE, out)
    assert result.exit_code == 0, result.output
    return out / "peft-lora-convtranspose2d"


def test_lora_layer_plugin_layout(layer_plugin):
    files = _files(layer_plugin)
    assert sorted(files) == [
        "LICENSE",
        "README.md",
        "examples/lora_convtranspose2d_example.py",
        "pyproject.toml",
        "ruff.toml",
        "src/peft_lora_convtranspose2d/__init__.py",
        "src/peft_lora_convtranspose2d/_registration.py",
        "src/peft_lora_convtranspose2d/layer.py",
        "tests/test_dispatch.py",
        "tests/test_lora_convtranspose2d.py",
    ]
    for rel, text in files.items():
        if rel.endswith(".py"):
            ast.parse(text, filename=rel)
        assert "{{" not in text and "cookiecutter" not in text, rel
        assert "PeftType" not in text and "register_peft_method" not in text, rel  # nothing of the tuner's
    project = _toml(layer_plugin / "pyproject.toml")["project"]
    assert project["name"] == "peft-lora-convtranspose2d" and f"peft{PEFT_REQUIREMENT}" in project["dependencies"]
    assert "pip install ." in files["README.md"] and "import peft_lora_convtranspose2d" in files["README.md"]
    # the version check comes first: `_registration` is the package's first import of its own
    tree = ast.parse(files["src/peft_lora_convtranspose2d/__init__.py"])
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, node.level) for node in imports] == [("_registration", 1), ("layer", 1)]
    assert ast.unparse(tree.body[-1]) == "register_custom_module(torch.nn.ConvTranspose2d, ConvTranspose2d)"


def test_lora_layer_plugin_code_is_new_out_s_with_only_the_import_line_changed(layer_plugin, tmp_path):
    assert runner.invoke(app, ["new", str(CONV_TRANSPOSE), "--out", str(tmp_path)]).exit_code == 0
    pairs = [
        ("lora_convtranspose2d.py", "src/peft_lora_convtranspose2d/layer.py"),
        ("tests/test_lora_convtranspose2d.py", "tests/test_lora_convtranspose2d.py"),
        ("examples/lora_convtranspose2d_example.py", "examples/lora_convtranspose2d_example.py"),
    ]
    for standalone, packaged in pairs:
        # the code without the module docstring (which says how to import the layer): only import lines differ
        before, after = (_code_without_docstring(path) for path in (tmp_path / standalone, layer_plugin / packaged))
        changed = [
            line[1:]
            for line in difflib.unified_diff(before, after, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        expected = [] if packaged.startswith("src/") else ["from lora_convtranspose2d import ConvTranspose2d"]
        assert [line for line in changed if line.startswith("from lora_")] == expected, packaged
        assert all(line.startswith(("from lora_", "from peft_lora_")) for line in changed), (packaged, changed)
    tests = (layer_plugin / "tests/test_lora_convtranspose2d.py").read_text()
    assert "from peft_lora_convtranspose2d.layer import ConvTranspose2d\n" in tests


def _code_without_docstring(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    if ast.get_docstring(tree) is not None:
        tree.body = tree.body[1:]
    return ast.unparse(tree).splitlines()


_LAYER_CHECK = """
import importlib, torch, peft_lora_convtranspose2d as plugin
from peft import LoraConfig, get_peft_model
importlib.reload(plugin)  # imported twice: no error, still one mapping
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
    def forward(self, x):
        return self.up(x)
torch.manual_seed(0)
base = Model().eval()
x = torch.randn(2, 4, 5, 5)
with torch.no_grad():
    expected = base(x).clone()
    weight = base.up.weight.detach().clone()
    config = LoraConfig(target_modules=["up"], init_lora_weights=False)  # no _register_custom_module call
    model = get_peft_model(base, config).eval()
    layer = model.base_model.model.up
    assert type(layer) is plugin.ConvTranspose2d, type(layer)
    out = model(x)
    assert (out - expected).abs().max() > 1e-3
    model.merge_adapter()
    assert (layer.get_base_layer().weight - weight).abs().max() > 1e-4
    assert torch.allclose(model(x), out, atol=1e-5)
    model.unmerge_adapter()
    assert torch.allclose(layer.get_base_layer().weight, weight, atol=1e-6)
    with model.disable_adapter():
        assert torch.allclose(model(x), expected, atol=1e-6)
print("ok")
"""


def test_lora_layer_plugin_registers_with_the_installed_peft(layer_plugin, tmp_path):
    """The package on stock peft (this environment's), from its src/: a plain LoraConfig dispatches
    ConvTranspose2d to its layer; then its own tests (the kind's generated ones and test_dispatch.py) and its
    README's usage."""
    env = {**os.environ, "PYTHONPATH": str(layer_plugin / "src")}
    check = subprocess.run(
        [sys.executable, "-c", _LAYER_CHECK], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-rA", "tests"],
        cwd=layer_plugin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    usage = (layer_plugin / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "usage.py").write_text(usage)
    proc = subprocess.run(
        [sys.executable, "usage.py"], cwd=tmp_path, capture_output=True, text=True, env=env, check=False, timeout=300
    )
    assert proc.returncode == 0 and "trainable params" in proc.stdout, proc.stderr[-3000:]
    for name in (
        "test_lora_convtranspose2d.py::test_forward_equals_base_with_the_delta_applied",
        "test_lora_convtranspose2d.py::test_merge_and_unmerge_are_exact",
        "test_dispatch.py::test_a_saved_adapter_loads_without_registering_again",
        "test_dispatch.py::test_importing_again_is_harmless",
        "test_dispatch.py::test_import_refuses_an_unsupported_peft",
    ):
        assert f"PASSED tests/{name}" in run.stdout, name


def test_name_clashing_with_an_importable_package_is_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "peft_clashy").mkdir(parents=True)
    (site / "peft_clashy" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    spec = _spec_variant(tmp_path, name="clashy", class_prefix="Clashy")
    result = _new_plugin(spec, tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "name" in result.output and "peft_clashy" in result.output and "peft-clashy" in result.output
    assert not (tmp_path / "out").exists()


def test_exactly_one_destination(tmp_path):
    result = runner.invoke(app, ["new", str(LORA), "--plugin", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--plugin DIR" in result.output
