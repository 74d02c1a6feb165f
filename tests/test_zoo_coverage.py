"""docs/coverage.md is the output of `python -m scaffold.coverage`, and docs/coverage.yaml covers exactly PEFT's layer
tuners: the sdist's list, cross-checked against the installed peft 0.21.2's own registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scaffold import coverage
from scaffold.spec import load_spec


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def current(peft_sdist: Path) -> coverage.Coverage:
    return coverage.load(peft_sdist)


def test_data_covers_the_sdists_layer_tuners_exactly(current: coverage.Coverage) -> None:
    assert current.errors == []
    assert sorted(current.tuners) == sorted(m.name for m in current.layer_tuners)


def test_committed_page_is_the_scripts_output(current: coverage.Coverage) -> None:
    assert (REPO / "docs" / "coverage.md").read_text(encoding="utf-8") == coverage.render(current), (
        "docs/coverage.md is stale: run `python -m scaffold.coverage`"
    )


@pytest.mark.slow  # imports peft (and transformers): seconds of CPU
def test_sdist_classification_matches_peft_at_runtime(current: coverage.Coverage) -> None:
    # the script parses the sdist without importing it; the installed peft (same version) says at runtime what
    # each method is
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils import PeftType

    assert current.peft_version == __import__("peft").__version__
    runtime_layer = {t.value.lower() for t in PeftType if issubclass(PEFT_TYPE_TO_TUNER_MAPPING[t], BaseTuner)}
    runtime_prompt = {
        t.value.lower() for t in PeftType if issubclass(PEFT_TYPE_TO_CONFIG_MAPPING[t], PromptLearningConfig)
    }
    assert {m.name for m in current.methods} == {t.value.lower() for t in PeftType}
    assert {m.name for m in current.layer_tuners} == runtime_layer
    assert {m.name for m in current.methods if m.prompt_learning} == runtime_prompt


def test_reference_specs_load_and_name_their_parity_test(current: coverage.Coverage) -> None:
    references = {name: e for name, e in current.tuners.items() if e["status"] == "reference"}
    assert {"lora", "loha", "lokr"} <= set(references)
    for name, entry in references.items():
        spec = load_spec(REPO / entry["spec"])
        assert spec.name != name  # generated under its own name, next to PEFT's
        parity = (REPO / entry["parity"]).read_text(encoding="utf-8")
        assert Path(entry["spec"]).name in parity, f"{entry['parity']} does not use {entry['spec']}"


def _write_data(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((REPO / "docs" / "coverage.yaml").read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "coverage.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_check_reports_missing_unknown_and_broken_entries(peft_sdist: Path, tmp_path: Path) -> None:
    def edit(data: dict) -> None:
        del data["tuners"]["vera"]
        data["tuners"]["notamethod"] = {"status": "expressible", "note": "x"}
        data["tuners"]["prompt_tuning"] = {"status": "expressible", "note": "x"}
        data["tuners"]["loha"]["spec"] = "reference_methods/missing.yaml"
        data["tuners"]["adamss"]["needs"] = ["teleportation"]
        data["tuners"]["c3a"] = {"status": "maybe"}
        data["tuners"]["hira"] = {"status": "expressible", "note": "x", "spec": "reference_methods/lora.yaml"}

    errors = coverage.load(peft_sdist, _write_data(tmp_path, edit)).errors
    assert errors == [
        "tuners: PEFT's layer tuner `vera` has no entry",
        "tuners.notamethod: is not a PEFT method in the sdist",
        "tuners.prompt_tuning: is not a layer tuner in the sdist",
        "tuners.adamss.needs: unknown feature `teleportation`",
        "tuners.c3a.status: 'maybe' is not one of reference, expressible, needs, out_of_scope",
        "tuners.hira.spec: not a field of a `expressible` entry",
        "tuners.loha.spec: reference_methods/missing.yaml does not exist",
    ]


def test_cli_check_and_write(peft_sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    page = tmp_path / "coverage.md"
    shutil.copyfile(REPO / "docs" / "coverage.md", page)
    monkeypatch.setattr(coverage, "PAGE_FILE", page)
    assert coverage.main(["--sdist", str(peft_sdist), "--check"]) == 0

    page.write_text(page.read_text(encoding="utf-8").replace("38 layer tuners", "37 layer tuners"), encoding="utf-8")
    assert coverage.main(["--sdist", str(peft_sdist), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert coverage.main(["--sdist", str(peft_sdist)]) == 0
    assert page.read_text(encoding="utf-8") == (REPO / "docs" / "coverage.md").read_text(encoding="utf-8")

    # a data file that disagrees with the sdist: one line per problem, exit 2, the page left alone
    broken = _write_data(tmp_path, lambda data: data["tuners"].pop("vera"))
    monkeypatch.setattr(coverage, "DATA_FILE", broken)
    before = page.read_text(encoding="utf-8")
    assert coverage.main(["--sdist", str(peft_sdist)]) == 2
    assert capsys.readouterr().err.strip() == "error: coverage.yaml: tuners: PEFT's layer tuner `vera` has no entry"
    assert page.read_text(encoding="utf-8") == before
