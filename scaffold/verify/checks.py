"""Run pytest, ruff and mypy on a PEFT tree as subprocesses and report counts, not just exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scaffold.peft_source import default_cache_dir
from scaffold.render.format import ruff_binary
from scaffold.render.format import ruff_config as ruff_settings


# mypy settings for generated code: PEFT ships no type information (no py.typed), so its modules (and
# transformers') are treated as untyped rather than analysed; torch is checked for real.
MYPY_CONFIG = """\
[mypy]
ignore_missing_imports = True
[mypy-peft.*]
follow_imports = skip
[mypy-transformers.*]
follow_imports = skip
"""


@dataclass
class TestCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    returncode: int = 0
    output_tail: str = ""
    # (test id, first line of its failure or error message) for each failing test
    failures: list[tuple[str, str]] = field(default_factory=list)
    # every test case of the JUnit report, "classname::name" (e.g. "tests.test_config.TestPeftConfig::test_x[...]")
    # -> "passed", "failed", "error" or "skipped": for counting one file's or one method's share of a shared run
    outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.returncode in (0, 5) and self.passed > 0

    def as_dict(self) -> dict[str, int]:
        return {"passed": self.passed, "failed": self.failed, "errors": self.errors, "skipped": self.skipped}

    def subset(self, keep: Callable[[str], bool]) -> TestCounts:
        """The counts of the test cases whose id (`outcomes`' keys) `keep` accepts, as if only they had run (the
        return code and output tail are the whole run's)."""
        kept = {test_id: outcome for test_id, outcome in self.outcomes.items() if keep(test_id)}
        outcomes = list(kept.values())
        return TestCounts(
            passed=outcomes.count("passed"),
            failed=outcomes.count("failed"),
            errors=outcomes.count("error"),
            skipped=outcomes.count("skipped"),
            returncode=self.returncode,
            output_tail=self.output_tail,
            failures=[
                (name, message) for name, message in self.failures if any(k.endswith(f"::{name}") for k in kept)
            ],
            outcomes=kept,
        )


@dataclass
class LintReport:
    ruff_check: str = ""
    ruff_format: str = ""
    mypy: str = ""
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def tree_env(tree: Path) -> dict[str, str]:
    # absolute: the subprocesses run with the tree as their working directory
    tree = Path(tree).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(tree)])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_pytest(tree: Path, args: list[str], *, workers: int = 1, timeout: float = 1800) -> TestCounts:
    """Run pytest inside a PEFT tree (PYTHONPATH=src:.) and count results from its JUnit XML.

    `workers` > 1 runs pytest-xdist workers; each of them imports torch and peft and collects the test files again
    (20k tests in PEFT's test_custom_models.py: seconds of CPU). For a `-k` selection of PEFT's matrix one process
    takes 30-50% less CPU time (400 selected tests: 37 s -> 19 s; 1300: 57 s -> 39 s), which is what counts when the
    cores are busy anyway, as in this project's own test suite.
    """
    tree = Path(tree).resolve()
    (tree / "tests" / "__init__.py").touch()  # PEFT's tests import each other as `tests.*`
    with tempfile.TemporaryDirectory(prefix="peft-scaffold-pytest-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "--no-cov", "-p", "no:cacheprovider", "-q", f"--junit-xml={junit}"]
        if workers > 1:
            command += ["-n", str(workers)]
        proc = subprocess.run(
            command + args, cwd=tree, env=tree_env(tree), capture_output=True, text=True, timeout=timeout, check=False
        )
        counts = TestCounts(returncode=proc.returncode, output_tail=(proc.stdout + proc.stderr)[-4000:])
        if junit.exists():
            root = ET.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            for suite in suites:
                total = int(suite.get("tests", 0))
                counts.failed += int(suite.get("failures", 0))
                counts.errors += int(suite.get("errors", 0))
                counts.skipped += int(suite.get("skipped", 0))
                counts.passed += (
                    total - int(suite.get("failures", 0)) - int(suite.get("errors", 0)) - int(suite.get("skipped", 0))
                )
                for case in suite.iter("testcase"):
                    failure, error = case.find("failure"), case.find("error")
                    outcome = "failed" if failure is not None else "error" if error is not None else "passed"
                    if outcome == "passed" and case.find("skipped") is not None:
                        outcome = "skipped"
                    counts.outcomes[f"{case.get('classname', '')}::{case.get('name', '?')}"] = outcome
                    problem = failure if failure is not None else error
                    if problem is not None:
                        message = (problem.get("message") or problem.text or "").strip()
                        counts.failures.append((case.get("name", "?"), message.splitlines()[0] if message else ""))
        return counts


def lint_generated(
    tree: Path, paths: list[str], *, mypy: bool = True, first_party: tuple[str, ...] = ()
) -> LintReport:
    """ruff check, ruff format --check (PEFT's settings) and mypy over generated files under `tree`."""
    report = LintReport()
    with tempfile.TemporaryDirectory(prefix="peft-scaffold-lint-") as tmp:
        ruff_config = Path(tmp) / "ruff.toml"
        ruff_config.write_text(ruff_settings(first_party))
        ruff = ruff_binary()
        for label, args in (("ruff check", ["check"]), ("ruff format", ["format", "--check"])):
            proc = subprocess.run(
                [ruff, *args, "--config", str(ruff_config), *paths], cwd=tree, capture_output=True, text=True
            )
            text = (proc.stdout + proc.stderr).strip()
            if label == "ruff check":
                report.ruff_check = text
            else:
                report.ruff_format = text
            if proc.returncode != 0:
                report.findings.append(f"{label}: {text.splitlines()[-1] if text else 'failed'}")
        if mypy:
            mypy_config = Path(tmp) / "mypy.ini"
            mypy_config.write_text(MYPY_CONFIG)
            env = tree_env(tree)
            env["MYPYPATH"] = str(Path(tree).resolve() / "src")
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mypy",
                    "--config-file",
                    str(mypy_config),
                    "--cache-dir",
                    str(default_cache_dir() / "mypy"),
                    *paths,
                ],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            report.mypy = (proc.stdout + proc.stderr).strip()
            if proc.returncode != 0:
                report.findings.append(f"mypy: {report.mypy.splitlines()[-1] if report.mypy else 'failed'}")
    return report
