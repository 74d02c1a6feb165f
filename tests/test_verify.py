"""`peft-scaffold verify SPEC --peft-root DIR`: green on the reference specs, exit 1 naming the failing check on
deliberately broken specs (tests/specs/broken/), exit 2 with one line on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.verify.probe import CHECKS
from tests.conftest import snapshot_tree


REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "reference_methods" / "lora.yaml"
BROKEN = REPO / "tests" / "specs" / "broken"
runner = CliRunner()

# broken spec -> (the check that must fail, every check allowed to fail with it)
BROKEN_SPECS: dict[str, tuple[str, set[str]]] = {
    "identity_not_noop.yaml": ("identity_init", {"identity_init"}),
    "no_gradient.yaml": ("gradient", {"gradient"}),
    # the Linear forward disagrees with its merge, so two active adapters disagree with both merged as well
    "merge_mismatch.yaml": ("merge_matches_forward", {"merge_matches_forward", "two_adapters"}),
}


def _one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _verify(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["verify", *args, "--json"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


# -- bad input: exit 2, one line, nothing run -------------------------------------------------------------------------


def test_verify_refuses_a_directory_that_is_not_a_peft_tree(tmp_path):
    _one_line_error(runner.invoke(app, ["verify", str(LORA), "--peft-root", str(tmp_path)]), "not a PEFT source tree")


def test_verify_refuses_a_method_not_generated_in_the_tree(peft_tree, snapshot):
    before = snapshot(peft_tree)
    result = runner.invoke(app, ["verify", str(LORA), "--peft-root", str(peft_tree)])
    _one_line_error(result, "`reflora` was not generated into this tree", "peft-scaffold new")
    assert snapshot(peft_tree) == before


def test_verify_refuses_an_invalid_spec(tmp_path, peft_tree):
    spec = tmp_path / "bad.yaml"
    spec.write_text(LORA.read_text(encoding="utf-8").replace("delta_weight: lora_B @ lora_A", "delta_weight: eval(1)"))
    _one_line_error(runner.invoke(app, ["verify", str(spec), "--peft-root", str(peft_tree)]), "delta_weight")


@pytest.mark.parametrize("spec", ["dora.yaml", "lora_convtranspose2d.yaml"])
def test_verify_refuses_other_kinds_with_one_line(spec, peft_tree):
    result = runner.invoke(app, ["verify", str(REPO / "reference_methods" / spec), "--peft-root", str(peft_tree)])
    _one_line_error(result, "kind", "verify checks `kind: tuner` methods only")


def test_verify_help_explains_the_checks():
    result = runner.invoke(app, ["verify", "--help"])
    assert result.exit_code == 0
    for word in ("--peft-root", "--fast", "--skip-peft-tests", "identity init", "exit 0"):
        assert word in result.output, word


# -- the probe on real generated methods ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verify_tree(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree

    tree = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("verify") / "peft")
    for spec in [LORA, *(BROKEN / name for name in BROKEN_SPECS)]:
        pipeline.generate_into_tree(spec, tree).changeset.apply()
    return tree


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BROKEN_SPECS))
def test_verify_names_the_failing_check_of_a_broken_spec(verify_tree, name):
    must_fail, may_fail = BROKEN_SPECS[name]
    before = snapshot_tree(verify_tree)
    code, report = _verify(str(BROKEN / name), "--peft-root", str(verify_tree), "--fast")
    assert code == 1, report
    failed = {f["name"] for f in report["failures"]}
    assert must_fail in failed and failed <= may_fail, failed
    failure = next(f for f in report["failures"] if f["name"] == must_fail)
    assert failure["stage"] == "probe" and failure["hint"] == CHECKS[must_fail] and failure["where"]
    assert report["stages"][f"probe: {must_fail}"]["ok"] is False
    # every other probe check ran and passed: the failure is named, not drowned
    probe_rows = {name: row for name, row in report["stages"].items() if name.startswith("probe: ")}
    assert set(probe_rows) == {f"probe: {check}" for check in CHECKS}
    assert all(row["ok"] for name, row in probe_rows.items() if name.removeprefix("probe: ") not in may_fail)
    assert snapshot_tree(verify_tree) == before  # verify writes nothing into the tree's sources


@pytest.mark.slow
def test_verify_fast_is_green_on_the_reference_lora(verify_tree):
    code, report = _verify(str(LORA), "--peft-root", str(verify_tree), "--fast")
    assert code == 0, report["failures"]
    assert report["ok"] and not report["failures"]
    for check in CHECKS:
        layers = report["stages"][f"probe: {check}"]["layers"]
        assert sorted(layers) == sorted(["Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d"]), check
        assert all(result["ok"] for result in layers.values())
    assert report["stages"]["generated tests"]["skipped"] is True


@pytest.mark.slow
def test_verify_runs_every_stage_green_on_the_reference_lora(verify_tree):
    """The whole command: probe, generated tests, ruff + mypy, PEFT's own rows (what `demo` runs)."""
    code, report = _verify(str(LORA), "--peft-root", str(verify_tree))
    assert code == 0, report["failures"]
    stages = report["stages"]
    assert not any(stage["skipped"] for stage in stages.values())
    assert stages["generated tests"]["passed"] > 20 and stages["generated tests"]["failed"] == 0
    assert stages["ruff + mypy"]["findings"] == []
    assert stages["PEFT test_custom_models"]["passed"] > 100
    assert stages["PEFT test_config"]["passed"] > 5
    assert stages["PEFT test_config"]["failed"] == stages["PEFT test_config"]["errors"] == 0


@pytest.mark.slow
def test_verify_notes_a_tree_that_differs_from_the_spec(verify_tree, tmp_path):
    spec = tmp_path / "lora.yaml"
    spec.write_text(LORA.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    result = runner.invoke(app, ["verify", str(spec), "--peft-root", str(verify_tree), "--fast"])
    assert result.exit_code == 0, result.output
    assert "differs from what" in result.output
