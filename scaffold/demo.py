"""`peft-scaffold demo`: the whole job on the reference LoRA spec, into a fresh PEFT 0.21.2 tree."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

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
    """Generate the reference LoRA into a fresh tree, then `verify` it (all stages)."""
    from scaffold import pipeline
    from scaffold.resources import reference_spec
    from scaffold.verify.run import run_verify

    started = time.perf_counter()
    tree = prepare_tree(directory, console)
    spec = reference_spec(DEMO_SPEC)
    console.print(f"[bold]1.[/] PEFT tree ready at {tree}")

    t0 = time.perf_counter()
    generation = pipeline.generate_into_tree(spec, tree)
    changed_files = len(generation.changeset.changes)
    generation.changeset.apply()
    plan = generation.plan
    generate_seconds = time.perf_counter() - t0
    console.print(
        f"[bold]2.[/] Generated and registered {plan.title} ({changed_files} files) in {generate_seconds:.2f}s"
    )
    for note in generation.notes:
        console.print(f"     {note}", highlight=False, markup=False, soft_wrap=True)

    console.print(f"[bold]3.[/] peft-scaffold verify {spec.name} --peft-root {tree}")
    report = run_verify(spec, tree, console)
    summary = {
        "tree": str(tree),
        "method": plan.name,
        "generate_seconds": round(generate_seconds, 3),
        "verify": report.as_dict(),
        "ok": report.ok,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if not report.ok:
        raise ScaffoldError("demo", f"{len(report.failures)} failing check(s), see the table", FAILURE)
    return summary
