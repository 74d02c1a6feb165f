"""Golden files: generated output, checked in, so any template change shows up as a readable diff in review.
Regenerate with `UPDATE_GOLDEN=1 pytest tests/test_golden.py`.

- tests/golden/reflora: the reference LoRA's files as rendered (`render_method`, without registered constants).
- tests/golden/tree/<spec>: what a user actually gets from `new SPEC --peft-root TREE` in a fresh PEFT tree, for
  every kind (tuner, lora_variant, lora_layer): each created file as written, and each edited PEFT file as a
  unified diff (`<path>.diff`). Only the manifests (hashes and tool version) are left out.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.kinds.tuner.files import render_method
from scaffold.plan import build_plan
from scaffold.render import Layout
from scaffold.spec import load_spec


REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "reflora"
SPEC = REPO / "reference_methods" / "lora.yaml"
GOLDEN_TREE = REPO / "tests" / "golden" / "tree"
# one spec of each kind
TREE_SPECS = ("lora", "dora", "lora_convtranspose2d")
_YEAR = re.compile(r"^# Copyright \d{4}-present", flags=re.MULTILINE)


def _render() -> dict[str, str]:
    plan = build_plan(load_spec(SPEC))
    return render_method(plan, layout=Layout.PEFT_TREE, spec_file="lora.yaml", year=2026)


def test_reference_output_matches_golden_files():
    files = _render()
    if os.environ.get("UPDATE_GOLDEN"):
        for rel, text in files.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(text)
    golden = {p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()}
    assert sorted(golden) == sorted(files)
    for rel, text in files.items():
        assert text == golden[rel], f"{rel} differs from tests/golden (UPDATE_GOLDEN=1 to accept)"


def test_regeneration_keeps_the_original_header_year(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["new", str(SPEC), "--out", str(tmp_path)]).exit_code == 0
    # as if generated in 2020: a later run must not rewrite every file just because the year changed
    for path in tmp_path.rglob("*.py"):
        text = path.read_text()
        assert "-present the HuggingFace Inc. team." in text
        path.write_text(text.replace(text.split("Copyright ")[1][:4], "2020", 1))
    page = tmp_path / "docs" / "reflora.md"  # the docs page has PEFT's docs licence header, with the same year
    page.write_text(re.sub(r"<!--Copyright \d{4}", "<!--Copyright 2020", page.read_text(), count=1))
    result = runner.invoke(app, ["new", str(SPEC), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert '"up_to_date": true' in result.stdout


@pytest.mark.parametrize("rel", ["src/peft/tuners/reflora/layer.py", "src/peft/tuners/reflora/config.py"])
def test_golden_files_read_like_peft_code(rel):
    text = (GOLDEN / rel).read_text()
    assert text.startswith("# Copyright 2026-present the HuggingFace Inc. team.")
    assert "peft-scaffold" in text.splitlines()[14]  # provenance line right after the licence


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:  # exactly the bytes: no newline translation
        return fh.read()


def _tree_output(spec: Path, tree: Path) -> dict[str, str]:
    """What `new SPEC --peft-root TREE` writes: created files' text, edited files as unified diffs (`.diff`)."""
    from scaffold import pipeline

    files = {}
    for change in pipeline.generate_into_tree(spec, tree).changeset.changes:
        name = Path(change.relpath).name
        if name.startswith(".peft-scaffold") and name.endswith(".json"):
            continue  # the manifest: spec hash, file hashes, tool version
        assert change.new is not None, change.relpath
        new = _YEAR.sub("# Copyright 2026-present", change.new)  # the header's year is the year of generation
        if change.old is None:
            files[change.relpath] = new
        else:
            diff = difflib.unified_diff(
                change.old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"a/{change.relpath}",
                f"b/{change.relpath}",
            )
            files[f"{change.relpath}.diff"] = "".join(diff)
    return files


@pytest.mark.parametrize("spec_name", TREE_SPECS)
def test_what_a_tree_receives_matches_golden_files(spec_name, peft_tree):
    files = _tree_output(REPO / "reference_methods" / f"{spec_name}.yaml", peft_tree)
    golden_dir = GOLDEN_TREE / spec_name
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden_dir, ignore_errors=True)
        for rel, text in files.items():
            (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden_dir / rel).write_text(text, encoding="utf-8", newline="")
    golden = {p.relative_to(golden_dir).as_posix(): _read(p) for p in golden_dir.rglob("*") if p.is_file()}
    assert sorted(golden) == sorted(files), "the set of files differs from tests/golden/tree (UPDATE_GOLDEN=1)"
    for rel, text in files.items():
        assert text == golden[rel], f"{rel} differs from tests/golden/tree/{spec_name} (UPDATE_GOLDEN=1 to accept)"


def test_the_tree_golden_files_protect_the_registered_model():
    """The tree's model.py uses the registered target-module constant (what golden/reflora, rendered without
    registered constants, does not show), and the edits include the registry sites."""
    model = (GOLDEN_TREE / "lora" / "src/peft/tuners/reflora/model.py").read_text(encoding="utf-8")
    assert "TRANSFORMERS_MODELS_TO_REFLORA_TARGET_MODULES_MAPPING" in model
    assert model != (GOLDEN / "src/peft/tuners/reflora/model.py").read_text(encoding="utf-8")
    edited = {p.name for p in (GOLDEN_TREE / "lora").rglob("*.diff")}
    assert {"peft_types.py.diff", "constants.py.diff", "test_custom_models.py.diff"} <= edited
    assert (GOLDEN_TREE / "dora" / "src/peft/tuners/lora/refdora.py").is_file()
    assert (GOLDEN_TREE / "lora_convtranspose2d" / "src/peft/tuners/lora/convtranspose2d.py").is_file()
