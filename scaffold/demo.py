"""`peft-scaffold demo`: the whole job on the reference LoRA spec, into a fresh PEFT 0.21.2 tree."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scaffold.errors import FAILURE, ScaffoldError


DEMO_MARKER = ".peft-scaffold-demo"
DEMO_SPEC = "lora"


def prepare_tree(directory: Path, console: Console) -> Path:
    from scaffold.peft_source import DEFAULT_PEFT_VERSION, copy_peft_tree, ensure_peft_sdist

    directory = Path(directory).resolve()
    if directory.exists():
        if not (directory / DEMO_MARKER).exists():
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
            else:
                raise ScaffoldError(str(directory), "exists and is not a previous demo tree; choose another directory")
        else:
            shutil.rmtree(directory)
    with console.status(f"Fetching the PEFT {DEFAULT_PEFT_VERSION} sdist (cached after the first run)..."):
        sdist = ensure_peft_sdist(DEFAULT_PEFT_VERSION)
    copy_peft_tree(sdist, directory)
    (directory / DEMO_MARKER).write_text("created by `peft-scaffold demo`; safe to delete\n")
    (directory / "tests" / "__init__.py").touch()
    return directory


def run_demo(directory: Path, console: Console, as_json: bool = False) -> dict[str, Any]:
    from scaffold import pipeline
    from scaffold.resources import reference_spec
    from scaffold.verify import lint_generated, run_pytest

    started = time.perf_counter()
    tree = prepare_tree(directory, console)
    spec = reference_spec(DEMO_SPEC)
    console.print(f"[bold]1.[/] PEFT tree ready at {tree}")

    t0 = time.perf_counter()
    generation = pipeline.generate_into_tree(spec, tree)
    changed_files = len(generation.changeset.changes)
    generation.changeset.apply()
    plan = generation.plan
    test_file = generation.templates["tests/test_method.py.j2"]  # the demo spec is a tuner
    package_dir = generation.templates["tuner/__init__.py.j2"].rsplit("/", 1)[0]
    generate_seconds = time.perf_counter() - t0
    console.print(
        f"[bold]2.[/] Generated and registered {plan.title} ({changed_files} files) in {generate_seconds:.2f}s"
    )
    for note in generation.notes:
        console.print(f"     {note}", highlight=False, markup=False, soft_wrap=True)

    with console.status(f"Running the generated tests (tests/{Path(test_file).name})..."):
        generated_tests = run_pytest(tree, [test_file])
    console.print(f"[bold]3.[/] Generated tests: {_counts(generated_tests.as_dict())}")

    with console.status("Running ruff and mypy on the generated code..."):
        lint_paths = [package_dir, test_file]
        lint = lint_generated(tree, lint_paths)
    console.print(f"[bold]4.[/] ruff + mypy on generated code: {'clean' if lint.ok else '; '.join(lint.findings)}")

    matrix: dict[str, Any] = {}
    with console.status(f"Running PEFT's own test matrix for {plan.model_cls} / {plan.config_cls}..."):
        custom = run_pytest(tree, ["tests/test_custom_models.py", "-k", plan.class_name])
        config = run_pytest(
            tree,
            ["tests/test_config.py", "-k", f"{plan.config_cls} and not from_pretrained and not runtime_config"],
        )
    matrix = {"test_custom_models": custom.as_dict(), "test_config": config.as_dict()}
    console.print(f"[bold]5.[/] PEFT's test_custom_models.py -k {plan.class_name}: {_counts(custom.as_dict())}")
    console.print(f"     PEFT's test_config.py -k {plan.config_cls}: {_counts(config.as_dict())}")

    summary = {
        "tree": str(tree),
        "method": plan.name,
        "generate_seconds": round(generate_seconds, 3),
        "generated_tests": generated_tests.as_dict(),
        "lint": {"ok": lint.ok, "findings": lint.findings},
        "peft_matrix": matrix,
        "seconds": round(time.perf_counter() - started, 1),
    }
    ok = generated_tests.ok and lint.ok and custom.ok and config.ok
    summary["ok"] = ok
    table = Table(title=f"peft-scaffold demo: {plan.title}", show_header=True)
    table.add_column("check")
    table.add_column("result")
    table.add_row("generated tests", _counts(generated_tests.as_dict()))
    table.add_row("ruff + mypy", "clean" if lint.ok else "; ".join(lint.findings))
    table.add_row("PEFT test_custom_models", _counts(custom.as_dict()))
    table.add_row("PEFT test_config", _counts(config.as_dict()))
    table.add_row("total time", f"{summary['seconds']}s")
    console.print(table)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if not ok:
        failing = [r for r in (generated_tests, custom, config) if not r.ok]
        for result in failing:
            console.print(result.output_tail, highlight=False, markup=False)
        raise ScaffoldError("demo", "some checks failed (see above)", FAILURE)
    return summary


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {key}" for key, value in counts.items() if value or key in ("passed", "failed"))
