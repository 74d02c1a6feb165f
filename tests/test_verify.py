"""`peft-scaffold verify SPEC --peft-root DIR`: green on the reference specs, exit 1 naming the failing check on
deliberately broken specs (tests/specs/broken/), exit 2 with one line on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.verify.probe import CHECKS, FEATURE_CHECKS
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
    assert set(probe_rows) == {f"probe: {check}" for check in CHECKS if check not in FEATURE_CHECKS}
    assert all(row["ok"] for name, row in probe_rows.items() if name.removeprefix("probe: ") not in may_fail)
    assert snapshot_tree(verify_tree) == before  # verify writes nothing into the tree's sources


@pytest.mark.slow
def test_verify_runs_the_generated_tests_and_linters_green_on_the_reference_lora(verify_tree):
    """Probe, generated tests, ruff + mypy. (PEFT's own rows for reflora take minutes on 2 cores and run in
    tests/test_in_tree.py; `demo` runs them through verify.)"""
    # one pytest process: a second xdist worker imports torch and peft again for ~30 tests (the suite's own workers
    # keep the cores busy anyway)
    code, report = _verify(str(LORA), "--peft-root", str(verify_tree), "--skip-peft-tests", "--workers", "1")
    assert code == 0, report["failures"]
    stages = report["stages"]
    assert [name for name, stage in stages.items() if stage["skipped"]] == [
        "probe: merge_refused",  # for methods with `mergeable: false`
        "PEFT test_custom_models",
        "PEFT test_config",
    ]
    assert stages["generated tests"]["tests"]["passed"] > 20 and stages["generated tests"]["tests"]["failed"] == 0
    assert stages["ruff + mypy"]["findings"] == []
    assert not any(f"probe: {check}" in stages for check in FEATURE_CHECKS)  # LoRA shares no weights
    for check in set(CHECKS) - set(FEATURE_CHECKS):
        layers = stages[f"probe: {check}"]["layers"]
        assert sorted(layers) == sorted(["Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d"]), check
        assert all(result["ok"] for result in layers.values()), (check, layers)


def test_verify_notes_a_tree_that_differs_from_the_spec(verify_tree, tmp_path):
    from scaffold.verify.run import resolve_target

    assert resolve_target(LORA, verify_tree).notes == []
    spec = tmp_path / "lora.yaml"
    spec.write_text(LORA.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    (note,) = resolve_target(spec, verify_tree).notes
    assert "differs from what" in note and "verifying the tree as it is" in note


def test_test_failures_are_grouped_by_test_name_with_a_hint(tmp_path):
    """What the table shows for a failing pytest stage: one group per test function, its parametrisations listed."""
    from scaffold.verify.checks import run_pytest
    from scaffold.verify.run import TEST_HINTS, pytest_stage

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fake.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('case', ['a', 'b', 'c'])\n"
        "def test_merge_layers(case):\n"
        "    assert case == 'a', f'merged output differs for {case}'\n\n"
        "def test_other():\n"
        "    raise ValueError('boom happened')\n\n"
        "def test_fine():\n"
        "    pass\n",
        encoding="utf-8",
    )
    counts = run_pytest(tmp_path, ["tests/test_fake.py"], workers=1)
    assert (counts.passed, counts.failed) == (2, 3)
    stage, failures = pytest_stage("generated tests", counts)
    assert not stage.ok and stage.result == "2 passed, 3 failed"
    groups = {f.name: f for f in failures}
    assert sorted(groups) == ["test_merge_layers", "test_other"]
    assert groups["test_merge_layers"].where == ["b", "c"]
    assert groups["test_merge_layers"].hint == TEST_HINTS["test_merge"]
    assert "boom happened" in groups["test_other"].hint  # no known hint: the failure's own first line

    # every case's outcome, by id, and the counts of a share of the run (tests/test_in_tree.py: one run, many methods)
    assert counts.outcomes == {
        "tests.test_fake::test_merge_layers[a]": "passed",
        "tests.test_fake::test_merge_layers[b]": "failed",
        "tests.test_fake::test_merge_layers[c]": "failed",
        "tests.test_fake::test_other": "failed",
        "tests.test_fake::test_fine": "passed",
    }
    merge = counts.subset(lambda test_id: "merge_layers" in test_id)
    assert (merge.passed, merge.failed, merge.errors, merge.skipped) == (1, 2, 0, 0)
    assert [name for name, _ in merge.failures] == ["test_merge_layers[b]", "test_merge_layers[c]"]
    assert counts.subset(lambda test_id: test_id.endswith("test_fine")).as_dict() == {
        "passed": 1,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
    }


def test_verify_itself_imports_no_torch():
    """Only the probe's subprocess runs generated code (with the tree's peft); the command's process stays light."""
    import subprocess
    import sys

    code = (
        "import sys, scaffold.cli, scaffold.verify.run, scaffold.verify.probe, scaffold.demo; "
        "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"
