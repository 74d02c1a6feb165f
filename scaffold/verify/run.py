"""`peft-scaffold verify SPEC --peft-root DIR`: is the method generated from SPEC into DIR sound?

Stages, fastest first: the numeric probe (`scaffold.verify.probe`, seconds, in a subprocess that imports the tree's
peft), the method's generated tests, ruff + mypy on the generated code, and PEFT's own `tests/test_custom_models.py`
and `tests/test_config.py` rows for it (less the ones that need the Hub). The outcome is one table, failures
grouped by check or test name with a one-line hint each. Nothing here imports torch or peft: everything that runs
generated code runs in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scaffold.errors import BAD_INPUT, ScaffoldError
from scaffold.verify.checks import LintReport, TestCounts, lint_generated, run_pytest, tree_env


# PEFT's test_config.py tests that download from the Hub
OFFLINE_CONFIG_DESELECT = "not from_pretrained and not runtime_config"
PROBE_TIMEOUT = 600

# hints for failures of PEFT's matrix / the generated tests, by test name (prefix)
TEST_HINTS: dict[str, str] = {
    "test_merge": "merging disagrees with the unmerged forward; `verify --fast` names the layer type",
    "test_unmerge": "unmerge does not restore the base weight (does delta_weight read the merged `weight`?)",
    "test_disable_adapters_with_merging": "merge / disable / unmerge disagree; see the probe's merge checks",
    "test_multiple_active_adapters": "two active adapters differ from both merged (non-additive composition?)",
    "test_safe_merge": "safe_merge differs from merge, or the merged weight is not finite",
    "test_identity": "the identity init is not a no-op",
    "test_only_params_are_updated": "some adapter weight does not move in training (gradient, or a too small init)",
    "test_parameters_after_loading_model": "some adapter weight does not move in training",
    "test_save_pretrained": "save/load does not round-trip the adapter (frozen tensors must be saved buffers)",
    "test_load": "save/load does not round-trip the adapter",
    "test_forward_float16": "the fp16 forward fails",
    "test_forward_bfloat16": "the bf16 forward fails",
    "test_mixed_adapter_batches": "`adapter_names` (mixed batches) differs from one adapter at a time",
}

T = TypeVar("T")


@dataclass
class Failure:
    """A group of failures with one name: a probe check, or a test function (parametrisations together)."""

    stage: str
    name: str
    where: list[str]
    hint: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "count": len(self.where),
            "where": self.where,
            "hint": self.hint,
        }


@dataclass
class Stage:
    name: str
    ok: bool
    result: str
    data: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class VerifyReport:
    spec: str
    tree: str
    method: str
    stages: list[Stage] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(stage.ok for stage in self.stages) and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "tree": self.tree,
            "method": self.method,
            "ok": self.ok,
            "stages": {s.name: {"ok": s.ok, "skipped": s.skipped, "result": s.result, **s.data} for s in self.stages},
            "failures": [f.as_dict() for f in self.failures],
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class Target:
    """What verify works on, once the input is known to be good."""

    spec_path: Path
    tree: Path
    plan: Any  # MethodPlan
    test_file: str
    package_dir: str
    notes: list[str]


def resolve_target(spec_path: Path, peft_root: Path) -> Target:
    """Check the input (exit 2 when bad): a valid `kind: tuner` spec, a PEFT tree, and the method generated there."""
    from scaffold import pipeline
    from scaffold.core.manifest import read_manifest
    from scaffold.register.tree import detect_peft_tree

    kind, spec = pipeline.load(spec_path)
    if kind.name != "tuner":
        raise ScaffoldError(
            f"{spec_path}: kind",
            f"verify checks `kind: tuner` methods only (this spec is `{kind.name}`; its own tests cover it)",
        )
    tree_info = detect_peft_tree(Path(peft_root))
    plan = kind.plan(spec, str(spec_path), tree_info)
    tree = Path(peft_root).resolve()
    package_dir = f"src/peft/tuners/{plan.name}"
    test_file = f"tests/test_{plan.name}.py"
    if not (tree / package_dir / "layer.py").is_file() or read_manifest(tree, kind, plan.name) is None:
        raise ScaffoldError(
            str(peft_root),
            f"`{plan.name}` was not generated into this tree; run `peft-scaffold new {spec_path} --peft-root "
            f"{peft_root}` first",
        )
    notes = []
    generation = pipeline.generate_into_tree(Path(spec_path), tree, force=True)
    if not generation.changeset.is_empty():
        changed = ", ".join(change.relpath for change in generation.changeset.changes)
        notes.append(f"the tree differs from what {spec_path} generates now ({changed}): verifying the tree as it is")
    return Target(Path(spec_path).resolve(), tree, plan, test_file, package_dir, notes)


# ---------------------------------------------------------------------------------------------------------------------
# stages


def run_probe(tree: Path, spec_path: Path, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Run the probe script in a subprocess that imports the tree's peft; its report for `spec_path`."""
    import scaffold
    from scaffold.verify.probe import JSON_MARKER

    command = [sys.executable, "-m", "scaffold.verify.probe", str(tree), str(spec_path)]
    env = tree_env(tree)
    # scaffold itself, wherever it is installed, after the tree's src: the tree's peft still comes first
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(Path(scaffold.__file__).resolve().parent.parent)])
    try:
        proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the probe did not finish in {timeout:.0f}s", "layers": {}}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(JSON_MARKER)]
    if proc.returncode != 0 or len(lines) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": f"the probe did not run: {tail[0]}", "layers": {}}
    report: dict[str, Any] = json.loads(lines[0][len(JSON_MARKER) :])["methods"][str(spec_path)]
    return report


def probe_stage(report: dict[str, Any]) -> tuple[list[Stage], list[Failure]]:
    from scaffold.verify.probe import CHECKS

    if report.get("error"):
        error = report["error"].strip().splitlines()[-1]
        return [Stage("probe", False, error, {"error": report["error"]})], [
            Failure("probe", "probe", ["-"], f"the generated method could not be exercised: {error}")
        ]
    layers: dict[str, dict[str, Any]] = report["layers"]
    stages, failures = [], []
    for check, hint in CHECKS.items():
        results = {layer: checks[check] for layer, checks in layers.items() if check in checks}
        if not results:  # a check for a feature the spec does not use (shared weights)
            continue
        failed = [layer for layer, result in results.items() if not result["ok"]]
        if results and all(result.get("skipped") for result in results.values()):
            # e.g. the merge checks of a method that cannot be merged
            detail = next(iter(results.values()))["detail"]
            stages.append(Stage(f"probe: {check}", True, f"skipped ({detail})", {"layers": results}, skipped=True))
        elif failed:
            details = sorted({results[layer]["detail"] for layer in failed if results[layer]["detail"]})
            detail = f"FAIL on {', '.join(failed)}" + (f": {details[0]}" if details else "")
            stages.append(Stage(f"probe: {check}", False, detail, {"layers": results}))
            failures.append(Failure("probe", check, failed, hint))
        else:
            count = f"{len(results)} layer type{'s' if len(results) != 1 else ''}"
            stages.append(Stage(f"probe: {check}", True, f"ok ({count})", {"layers": results}))
    return stages, failures


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {key}" for key, value in counts.items() if value or key in ("passed", "failed"))


def _hint(test_name: str, message: str) -> str:
    for prefix, hint in TEST_HINTS.items():
        if test_name.startswith(prefix):
            return hint
    return message[:160] or "see the test's output"


def pytest_stage(name: str, counts: TestCounts) -> tuple[Stage, list[Failure]]:
    groups: dict[str, list[str]] = {}
    messages: dict[str, str] = {}
    for test_id, message in counts.failures:
        function, _, params = test_id.partition("[")
        groups.setdefault(function, []).append(params.rstrip("]") or function)
        messages.setdefault(function, message)
    failures = [Failure(name, fn, where, _hint(fn, messages[fn])) for fn, where in groups.items()]
    if not counts.ok and not failures:  # no test failed, yet it is not green: no test ran, or pytest broke
        reason = "no test ran" if counts.passed == 0 else f"pytest exited {counts.returncode}"
        tail = counts.output_tail.strip().splitlines()[-1:] or [""]
        failures.append(Failure(name, "pytest", ["-"], f"{reason}: {tail[0][:160]}"))
    return Stage(name, counts.ok, _counts(counts.as_dict()), {"tests": counts.as_dict()}), failures


def lint_stage(report: LintReport) -> tuple[Stage, list[Failure]]:
    failures = [Failure("ruff + mypy", f.split(":")[0], ["-"], f) for f in report.findings]
    result = "clean" if report.ok else "; ".join(report.findings)
    return Stage("ruff + mypy", report.ok, result, {"findings": report.findings}), failures


# ---------------------------------------------------------------------------------------------------------------------
# the command


def run_verify(
    spec_path: Path,
    peft_root: Path,
    console: Console,
    *,
    fast: bool = False,
    skip_peft_tests: bool = False,
    workers: int = 2,
) -> VerifyReport:
    started = time.perf_counter()
    target = resolve_target(spec_path, peft_root)
    plan, tree = target.plan, target.tree
    report = VerifyReport(str(spec_path), str(tree), plan.name, notes=list(target.notes))
    for note in target.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)

    def stage(label: str, work: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        with console.status(f"{label}..."):
            value = work()
        console.print(f"  {label}: done in {time.perf_counter() - t0:.1f}s", markup=False, highlight=False)
        return value

    probe = stage(f"Probing {plan.title} on {', '.join(plan.spec.layers)}", lambda: run_probe(tree, target.spec_path))
    stages, failures = probe_stage(probe)
    report.stages += stages
    report.failures += failures

    skipped_reason = "skipped (--fast)" if fast else ""
    if not fast:
        counts = stage(
            f"Running the generated tests ({target.test_file})",
            lambda: run_pytest(tree, [target.test_file], workers=workers),
        )
        _add(report, *pytest_stage("generated tests", counts))
        lint_paths = [target.package_dir, target.test_file]
        if (tree / "examples" / plan.name).is_dir():
            lint_paths.append(f"examples/{plan.name}")
        lint = stage("Running ruff and mypy on the generated code", lambda: lint_generated(tree, lint_paths))
        _add(report, *lint_stage(lint))
    if not fast and not skip_peft_tests:
        custom = stage(
            f"Running PEFT's test_custom_models.py -k {plan.class_name}",
            lambda: run_pytest(tree, ["tests/test_custom_models.py", "-k", plan.class_name], workers=workers),
        )
        _add(report, *pytest_stage("PEFT test_custom_models", custom))
        config = stage(
            f"Running PEFT's test_config.py -k {plan.config_cls}",
            lambda: run_pytest(
                tree,
                ["tests/test_config.py", "-k", f"{plan.config_cls} and {OFFLINE_CONFIG_DESELECT}"],
                workers=workers,
            ),
        )
        _add(report, *pytest_stage("PEFT test_config", config))
    elif skip_peft_tests and not fast:
        skipped_reason = "skipped (--skip-peft-tests)"
    if skipped_reason:
        names = ["PEFT test_custom_models", "PEFT test_config"]
        if fast:
            names = ["generated tests", "ruff + mypy", *names]
        report.stages += [Stage(name, True, skipped_reason, skipped=True) for name in names]
    report.seconds = time.perf_counter() - started
    print_report(report, console)
    return report


def _add(report: VerifyReport, stage: Stage, failures: list[Failure]) -> None:
    report.stages.append(stage)
    report.failures += failures


def print_report(report: VerifyReport, console: Console) -> None:
    table = Table(title=f"peft-scaffold verify: {report.method} in {report.tree}", show_header=True)
    table.add_column("check")
    table.add_column("result")
    for stage in report.stages:
        if stage.skipped:
            result = f"[dim]{escape(stage.result)}[/]"
        elif stage.ok:
            result = f"[green]{escape(stage.result)}[/]"
        else:
            result = f"[red]{escape(stage.result)}[/]"
        table.add_row(escape(stage.name), result)
    table.add_row("total time", f"{report.seconds:.1f}s")
    console.print(table)
    if report.failures:
        failed = Table(title="failures, by check / test", show_header=True)
        failed.add_column("stage")
        failed.add_column("failing")
        failed.add_column("count", justify="right")
        failed.add_column("where")
        failed.add_column("hint")
        for failure in report.failures:
            where = ", ".join(failure.where[:4]) + (f", +{len(failure.where) - 4}" if len(failure.where) > 4 else "")
            failed.add_row(
                escape(failure.stage),
                escape(failure.name),
                str(len(failure.where)),
                escape(where),
                escape(failure.hint),
            )
        console.print(failed)
        console.print(f"[red]{len(report.failures)} failing check(s)[/]")
    else:
        console.print("[green]all checks passed[/]")


__all__ = ["BAD_INPUT", "Failure", "Stage", "VerifyReport", "resolve_target", "run_verify"]
