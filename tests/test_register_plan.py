"""Registering and removing whole methods in copies of PEFT trees: plan, apply, manifest, collisions, versions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import scaffold.journal as changeset_mod  # the apply's file-system seams live in the journal
from scaffold.changeset import ChangeSet
from scaffold.core.manifest import Manifest
from scaffold.core.manifest import read_manifest as core_read_manifest
from scaffold.errors import ScaffoldError
from tests.conftest import fake_method_files, fake_registration
from tests.tuner_api import (
    SITES,
    check_collision,
    detect_peft_tree,
    edited_files,
    manifest_path,
    plan_registration,
    plan_unregistration,
    read_manifest,
    write_manifest,
)


def register_fake(root: Path, source: str = "supertuning") -> ChangeSet:
    """Plan (not apply) a stand-in method cloned from `source`: its package files, registration and manifest, all
    in one change set as the generator does it."""
    tree = detect_peft_tree(root)
    reg, files = fake_method_files(root, source)
    check_collision(tree, reg)
    cs = ChangeSet(root)
    for rel, text in files.items():
        cs.write(rel, text)
    plan_registration(cs, tree, reg)
    write_manifest(cs, tree, reg, files, spec_hash="0" * 64)
    return cs


def peft_import_check(root: Path, reg_config: str, reg_model: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import peft, torch\n"
        f"from peft import {reg_config}, {reg_model}, get_peft_model\n"
        "model = torch.nn.Sequential(torch.nn.Linear(64, 64))\n"
        f"print(type(get_peft_model(model, {reg_config}(target_modules=['0']))).__name__)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={
            "PYTHONPATH": str(root / "src"),
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "version, source", [("0.21.2", "supertuning"), ("0.20.0", "tinylora"), ("0.19.1", "tinylora")]
)
def test_register_apply_then_remove_restores_the_tree(version: str, source: str, make_peft_tree, snapshot):
    root = make_peft_tree(version)
    before = snapshot(root)
    cs = register_fake(root, source)
    actions = {c["path"]: c["action"] for c in cs.to_json()}
    reg = fake_registration(source)
    assert actions[manifest_path(reg.name)] == "create"
    assert actions["src/peft/utils/peft_types.py"] == "modify"
    cs.apply()

    # the registered tree imports and the method works through PEFT's public API
    proc = peft_import_check(root, reg.config_cls, reg.model_cls)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "PeftModel"

    # a second registration changes nothing
    tree = detect_peft_tree(root)
    again = ChangeSet(root)
    results = plan_registration(again, tree, reg)
    assert again.is_empty()
    assert {r.status for r in results} == {"already registered", "skipped"}

    # remove, by name, from the manifest
    cs = ChangeSet(root)
    results = plan_unregistration(cs, tree, reg.name)
    assert {r.site: r.status for r in results}["peft_types"] == "removed"
    cs.apply()
    assert snapshot(root) == before


def test_results_say_what_happened(peft_tree: Path):
    tree = detect_peft_tree(peft_tree)
    cs = ChangeSet(peft_tree)
    results = plan_registration(cs, tree, fake_registration())
    by_site = {r.site: r for r in results}
    assert [r.site for r in results] == [s.name for s in SITES]
    assert by_site["constants"].status == "changed"
    assert by_site["docs_page"].status == "skipped"
    assert by_site["docs_page"].detail == "tree has no docs/"
    assert str(by_site["docs_toctree"]) == "docs_toctree (docs/source/_toctree.yml): skipped: tree has no docs/"


def test_sites_without_cases_are_skipped(peft_tree: Path):
    reg = dataclasses.replace(fake_registration(), test_cases=(), multiple_active_adapters_cases=())
    results = plan_registration(ChangeSet(peft_tree), detect_peft_tree(peft_tree), reg)
    statuses = {r.site: (r.status, r.detail) for r in results}
    assert statuses["test_custom_models"] == ("skipped", "no test cases given")
    assert statuses["test_custom_models_multi"] == ("skipped", "no multi-adapter cases given")
    assert statuses["test_config"][0] == "changed"


def test_tree_without_tests_skips_test_sites(peft_tree: Path):
    (peft_tree / "tests" / "test_custom_models.py").unlink()
    tree = detect_peft_tree(peft_tree)
    assert not tree.has_tests
    results = plan_registration(ChangeSet(peft_tree), tree, fake_registration())
    assert {r.detail for r in results if r.site.startswith("test_")} == {"tree has no tests/"}


@pytest.mark.parametrize("k", [1, 2, 5, 9, 14])
def test_failure_while_applying_leaves_the_tree_untouched(k: int, peft_tree: Path, snapshot, monkeypatch):
    cs = register_fake(peft_tree)
    before = snapshot(peft_tree)
    calls = [0]
    real = changeset_mod._replace

    def flaky(src: Path, dst: Path) -> None:
        calls[0] += 1
        if calls[0] == k:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(changeset_mod, "_replace", flaky)
    with pytest.raises(ScaffoldError, match="rolled back"):
        cs.apply()
    assert snapshot(peft_tree) == before
    assert not (peft_tree / "src" / "peft" / "tuners" / "mysuper").exists()


# -- the manifest and `remove` -------------------------------------------------------------------------------------


def test_manifest_records_generated_files(peft_tree: Path):
    register_fake(peft_tree).apply()
    manifest = read_manifest(peft_tree, "mysuper")
    assert manifest is not None
    assert manifest.registration == fake_registration()
    assert sorted(manifest.files) == [
        "src/peft/tuners/mysuper/__init__.py",
        "src/peft/tuners/mysuper/config.py",
        "src/peft/tuners/mysuper/layer.py",
        "src/peft/tuners/mysuper/model.py",
    ]
    assert edited_files(peft_tree, manifest) == []
    data = json.loads((peft_tree / manifest_path("mysuper")).read_text())
    assert data["format"] == 1 and data["spec_hash"] == "0" * 64


def test_remove_refuses_edited_files_unless_forced(peft_tree: Path, snapshot):
    register_fake(peft_tree).apply()
    layer = peft_tree / "src/peft/tuners/mysuper/layer.py"
    layer.write_text(layer.read_text() + "# my edit\n")
    tree = detect_peft_tree(peft_tree)
    with pytest.raises(ScaffoldError) as excinfo:
        plan_unregistration(ChangeSet(peft_tree), tree, "mysuper")
    assert (
        str(excinfo.value)
        == "src/peft/tuners/mysuper/layer.py: edited since it was generated; use --force to remove it anyway"
    )
    cs = ChangeSet(peft_tree)
    plan_unregistration(cs, tree, "mysuper", force=True)
    cs.apply()
    assert not (peft_tree / "src/peft/tuners/mysuper").exists()


def test_remove_deletes_bytecode_left_by_test_runs(peft_tree: Path):
    register_fake(peft_tree).apply()
    cache = peft_tree / "src/peft/tuners/mysuper/__pycache__"
    cache.mkdir()
    (cache / "layer.cpython-311.pyc").write_bytes(b"\x00bytecode")
    cs = ChangeSet(peft_tree)
    plan_unregistration(cs, detect_peft_tree(peft_tree), "mysuper")
    cs.apply()
    assert not (peft_tree / "src/peft/tuners/mysuper").exists()


def test_remove_refuses_hand_written_methods(peft_tree: Path, snapshot):
    before = snapshot(peft_tree)
    with pytest.raises(ScaffoldError, match="'lora' was not generated by peft-scaffold"):
        plan_unregistration(ChangeSet(peft_tree), detect_peft_tree(peft_tree), "lora")
    assert snapshot(peft_tree) == before


def test_unreadable_manifest_is_an_error(peft_tree: Path):
    register_fake(peft_tree).apply()
    (peft_tree / manifest_path("mysuper")).write_text("{not json")
    with pytest.raises(ScaffoldError, match="unreadable peft-scaffold manifest"):
        read_manifest(peft_tree, "mysuper")


def _manifest_of_kind(kind_name: str) -> tuple[Any, Any]:
    """A valid manifest of each spec kind (as the core writes it for that kind's registration), and the kind."""
    from scaffold.kinds import get_kind
    from scaffold.kinds.lora_layer.register import LayerRegistration
    from scaffold.kinds.lora_variant.sites import VariantRegistration

    kind = get_kind(kind_name)
    files = {"src/peft/tuners/x/generated.py": "0" * 64}
    if kind_name == "tuner":
        reg: Any = fake_registration()
    elif kind_name == "lora_variant":
        mapping = (("Linear", "MyVarLinear"),)
        reg = VariantRegistration("myvar", "use_myvar", "use_myvar: bool = False\n", "", mapping, (), (), ())
    else:
        reg = LayerRegistration("mylayer", "MyLayer", "torch.nn.Bilinear")
    return Manifest(kind_name, reg.name, "1" * 64, reg, files, kind.manifest_path(reg.name)), kind


_CORRUPTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "not json": lambda good: "{not json",
    "not an object": lambda good: "[]",
    "missing key": lambda good: json.dumps({k: v for k, v in good.items() if k != "files"}),
    "wrong type": lambda good: json.dumps({**good, "files": 3}),
    "other format": lambda good: json.dumps({**good, "format": 99}),
    "other tool": lambda good: json.dumps({**good, "tool": "x"}),
    "other kind": lambda good: json.dumps({**good, "kind": "x"}),
}


@pytest.mark.parametrize("kind", ["tuner", "lora_variant", "lora_layer"])
@pytest.mark.parametrize("how", list(_CORRUPTIONS))
def test_every_kind_reads_its_manifest_and_names_it_when_unreadable(tmp_path: Path, kind: str, how: str):
    """The three spec kinds share one reader: a good manifest reads back as written; a corrupt one is one
    `ScaffoldError` line naming the manifest's path, never a traceback."""
    manifest, kind_obj = _manifest_of_kind(kind)
    rel = manifest.relpath
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    good = manifest.to_json()
    path.write_text(good)
    assert core_read_manifest(tmp_path, kind_obj, manifest.name) == manifest
    path.write_text(_CORRUPTIONS[how](json.loads(good)))
    with pytest.raises(ScaffoldError) as excinfo:
        core_read_manifest(tmp_path, kind_obj, manifest.name)
    message = str(excinfo.value)
    assert message.startswith(f"{rel}: unreadable peft-scaffold manifest (")
    assert "\n" not in message


def test_a_lora_layer_manifest_of_the_earlier_format_reads(tmp_path: Path):
    """Before the kinds shared one manifest format, lora_layer manifests kept their registration at the top level."""
    from scaffold.kinds import get_kind
    from scaffold.kinds.lora_layer.register import LayerRegistration

    kind = get_kind("lora_layer")
    rel = kind.manifest_path("convtranspose2d")
    legacy = {
        "format": 1,
        "tool": "peft-scaffold",
        "tool_version": "0.1.0",
        "kind": "lora_layer",
        "name": "convtranspose2d",
        "class_name": "ConvTranspose2d",
        "base_layer": "torch.nn.ConvTranspose2d",
        "spec_hash": "1" * 64,
        "edits": ["src/peft/tuners/lora/layer.py: dispatch_default branch"],
        "files": {"src/peft/tuners/lora/convtranspose2d.py": "0" * 64},
    }
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text(json.dumps(legacy))
    manifest = core_read_manifest(tmp_path, kind, "convtranspose2d")
    assert manifest is not None
    assert manifest.registration == LayerRegistration("convtranspose2d", "ConvTranspose2d", "torch.nn.ConvTranspose2d")
    assert manifest.files == legacy["files"]


def test_a_manifest_without_kind_is_a_tuners(peft_tree: Path):
    """Manifests written before the kinds shared one format have no `kind`: they are read as tuner manifests."""
    register_fake(peft_tree).apply()
    path = peft_tree / manifest_path("mysuper")
    data = json.loads(path.read_text())
    del data["kind"]
    path.write_text(json.dumps(data))
    manifest = read_manifest(peft_tree, "mysuper")
    assert manifest is not None and manifest.registration == fake_registration()


# -- collisions ----------------------------------------------------------------------------------------------------


def _reg(**changes):
    return dataclasses.replace(fake_registration(), **changes)


def _with_names(name: str, camel: str, **changes):
    return _reg(
        name=name,
        peft_type=name.upper(),
        config_cls=f"{camel}Config",
        model_cls=f"{camel}Model",
        exported=(f"{camel}Config", f"{camel}Model"),
        **changes,
    )


def test_collision_existing_method(peft_tree: Path):
    tree = detect_peft_tree(peft_tree)
    with pytest.raises(ScaffoldError, match="src/peft/tuners/lora: already exists"):
        check_collision(tree, _with_names("lora", "Lora"))


def test_collision_peft_type_member(peft_tree: Path):
    path = peft_tree / "src/peft/utils/peft_types.py"
    path.write_text(path.read_text().replace('    DEFT = "DEFT"\n', '    DEFT = "DEFT"\n    MYSUPER = "MYSUPER"\n'))
    with pytest.raises(ScaffoldError, match="PeftType.MYSUPER already exists"):
        check_collision(detect_peft_tree(peft_tree), fake_registration())


def test_collision_prefix(peft_tree: Path):
    layer = peft_tree / "src/peft/tuners/vera/layer.py"
    layer.write_text(layer.read_text() + '\n\nclass Other:\n    prefix: str = "mysuper_"\n')
    with pytest.raises(ScaffoldError, match="prefix 'mysuper_' is already used by 'vera'"):
        check_collision(detect_peft_tree(peft_tree), fake_registration())


def test_collision_exported_class(peft_tree: Path):
    reg = _reg(config_cls="LoraConfig", exported=("LoraConfig", "MySuperModel"))
    with pytest.raises(ScaffoldError, match="src/peft/tuners/__init__.py: already exports 'LoraConfig'"):
        check_collision(detect_peft_tree(peft_tree), reg)


def test_collision_mapping_constant(peft_tree: Path):
    path = peft_tree / "src/peft/utils/constants.py"
    path.write_text(path.read_text() + "\nTRANSFORMERS_MODELS_TO_MYSUPER_TARGET_MODULES_MAPPING = {}\n")
    with pytest.raises(
        ScaffoldError, match="TRANSFORMERS_MODELS_TO_MYSUPER_TARGET_MODULES_MAPPING is already defined"
    ):
        check_collision(detect_peft_tree(peft_tree), fake_registration())


def test_collision_docs_page(peft_tree_with_docs: Path):
    (peft_tree_with_docs / "docs/source/package_reference/mysuper.md").write_text("# Mine\n")
    with pytest.raises(ScaffoldError, match="docs/source/package_reference/mysuper.md: already exists"):
        check_collision(detect_peft_tree(peft_tree_with_docs), fake_registration())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "Bad"}, "name: 'Bad' must be lowercase"),
        ({"peft_type": "OTHER"}, "peft_type: must be 'MYSUPER'"),
        ({"exported": ("MySuperConfig",)}, "exported: must include the config and the model class"),
        ({"config_cls": "my config"}, "config_cls: 'my config' is not a class name"),
    ],
)
def test_invalid_registration_is_refused(peft_tree: Path, changes, message):
    with pytest.raises(ScaffoldError, match=message):
        check_collision(detect_peft_tree(peft_tree), _reg(**changes))
    with pytest.raises(ScaffoldError, match=message):
        plan_registration(ChangeSet(peft_tree), detect_peft_tree(peft_tree), _reg(**changes))


def test_regenerating_a_generated_method_is_allowed(peft_tree: Path):
    register_fake(peft_tree).apply()
    tree = detect_peft_tree(peft_tree)
    check_collision(tree, fake_registration())  # same names: fine
    with pytest.raises(ScaffoldError, match="was generated with config_cls 'MySuperConfig'"):
        check_collision(tree, _reg(config_cls="MySuperCfg", exported=("MySuperCfg", "MySuperModel")))
    (peft_tree / "src/peft/tuners/mysuper/model.py").write_text("# rewritten\n")
    with pytest.raises(ScaffoldError, match="model.py: edited since it was generated"):
        check_collision(tree, fake_registration())
    check_collision(tree, fake_registration(), force=True)


# -- recognising trees -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.21.2", "0.20.0", "0.19.1"])
def test_supported_versions_are_detected(version: str, peft_sdist_for):
    tree = detect_peft_tree(peft_sdist_for(version))
    assert (tree.version, tree.series, tree.has_tests, tree.has_docs) == (version, version[:4], True, False)


@pytest.mark.parametrize("version", ["0.20.1.dev0", "0.21.0rc1", "0.19.0"])
def test_dev_and_other_patch_versions_are_accepted(version: str, peft_tree: Path):
    init = peft_tree / "src/peft/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.21.2"', f'__version__ = "{version}"'))
    assert detect_peft_tree(peft_tree).version == version


@pytest.mark.parametrize("version", ["0.18.1", "0.22.0", "1.0.0", "banana"])
def test_unsupported_versions_are_refused(version: str, peft_tree: Path):
    init = peft_tree / "src/peft/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.21.2"', f'__version__ = "{version}"'))
    with pytest.raises(ScaffoldError) as excinfo:
        detect_peft_tree(peft_tree)
    assert f"PEFT {version} is not supported; supported versions: 0.19.x, 0.20.x, 0.21.x" in str(excinfo.value)


def test_unrecognised_trees_are_refused(tmp_path: Path, peft_tree: Path):
    with pytest.raises(ScaffoldError, match="not a PEFT source tree"):
        detect_peft_tree(tmp_path)
    (peft_tree / "src/peft/utils/other.py").unlink()
    with pytest.raises(ScaffoldError, match="src/peft/utils/other.py: missing"):
        detect_peft_tree(peft_tree)
    init = peft_tree / "src/peft/__init__.py"
    init.write_text("from .tuners import *\n")
    with pytest.raises(ScaffoldError, match='expected `__version__ = "X.Y.Z"`'):
        detect_peft_tree(peft_tree)
