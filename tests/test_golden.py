"""Golden files: the reference LoRA's generated output, checked in, so any template change shows up as a
readable diff in review. Regenerate with `UPDATE_GOLDEN=1 pytest tests/test_golden.py`."""

from __future__ import annotations

import os
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


def _render() -> dict[str, str]:
    plan = build_plan(load_spec(SPEC))
    return render_method(plan, layout=Layout.PEFT_TREE, spec_file="lora.yaml", year=2026)


def test_reference_output_matches_golden_files():
    files = _render()
    if os.environ.get("UPDATE_GOLDEN"):
        for rel, text in files.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(text)
    golden = {p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*.py")}
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
    result = runner.invoke(app, ["new", str(SPEC), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert '"up_to_date": true' in result.stdout


@pytest.mark.parametrize("rel", ["src/peft/tuners/reflora/layer.py", "src/peft/tuners/reflora/config.py"])
def test_golden_files_read_like_peft_code(rel):
    text = (GOLDEN / rel).read_text()
    assert text.startswith("# Copyright 2026-present the HuggingFace Inc. team.")
    assert "peft-scaffold" in text.splitlines()[14]  # provenance line right after the licence
