"""The `peft-scaffold` command line (typer). Each command is a thin layer over `scaffold.pipeline`.

Exit codes: 0 ok, 1 the work failed, 2 bad input (a bad spec, an unrecognised tree, a refused edit).
Errors print as one line on stderr, never as a traceback (set PEFT_SCAFFOLD_DEBUG=1 to see one).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from scaffold.changeset import ChangeSet, FileChange
from scaffold.errors import BAD_INPUT, FAILURE, ScaffoldError


app = typer.Typer(
    name="peft-scaffold",
    help="Generate a new PEFT method from a short YAML spec, and register it in a PEFT source tree.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def handle_errors(func: F) -> F:
    """Turn `ScaffoldError` (and anything unexpected) into one line on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ScaffoldError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except RecursionError:  # hostile input (an expression nested thousands deep): bad input, not a bug
            err.print("[bold red]error:[/] input nested too deeply to process", highlight=False)
            raise typer.Exit(BAD_INPUT) from None
        except MemoryError:
            err.print("[bold red]error:[/] input too large to process (out of memory)", highlight=False)
            raise typer.Exit(BAD_INPUT) from None
        except Exception as exc:  # a bug of ours: still one line, unless debugging
            if os.environ.get("PEFT_SCAFFOLD_DEBUG"):
                raise
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(FAILURE) from None

    return wrapper  # type: ignore[return-value]


def locks_tree(*params: str) -> Callable[[F], F]:
    """Run the command holding the tree's lock (the first of `params` given names the tree), after recovering an
    apply that an earlier run left interrupted there (see `scaffold.journal`); the recovery is reported on stderr."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            root = next((kwargs[p] for p in params if kwargs.get(p) is not None), None)
            if root is None:
                return func(*args, **kwargs)
            from scaffold import journal
            from scaffold.lock import tree_lock

            with tree_lock(root):
                note = journal.recover(root)
                if note:
                    err.print(f"recovered {escape(str(root))}: {note}", highlight=False, soft_wrap=True)
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def apply_changes(changeset: ChangeSet, *, quiet: bool) -> list[FileChange]:
    """Apply atomically, then list what changed (computed before applying: afterwards disk equals the plan)."""
    applied = changeset.changes
    changeset.apply()
    if not quiet:
        for change in applied:
            out.print(f"  {change.action:<7} {change.relpath}", highlight=False, markup=False)
    return applied


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
@handle_errors
@locks_tree("peft_root", "out_dir", "plugin_dir")
def new(
    spec: Annotated[Path, typer.Argument(help="The method spec (YAML).", show_default=False)],
    peft_root: Annotated[
        Path | None,
        typer.Option("--peft-root", help="A PEFT source tree (with src/peft): generate into it and register."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Only write the generated files into this directory.")
    ] = None,
    plugin_dir: Annotated[
        Path | None,
        typer.Option(
            "--plugin",
            help="Write a pip-installable package DIR/peft-<name>/ that adds the method to stock PEFT from PyPI "
            "when imported (a kind: lora_layer spec: DIR/peft-lora-<name>/, which adds the layer type to LoRA; "
            "see docs/plugin.md); DIR must be empty unless --force.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the change as a diff; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files generated from a different spec.")] = False,
    templates: Annotated[
        Path | None,
        typer.Option(
            "--templates",
            help="A directory of templates that shadow the built-in ones of the same relative path "
            "(e.g. _header.j2 for your licence header, tuner/layer.py.j2); all others are the built-in ones.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate the method described by SPEC.

    With --peft-root, the tuner goes to src/peft/tuners/<name>/ with its tests, and the method is registered in
    the tree (PeftType member, exports). With --out, only the files are written. With --plugin, a package for
    stock PEFT is written. All edits are computed first and applied atomically: on any error nothing is written.
    """
    from scaffold import pipeline

    if [peft_root, out_dir, plugin_dir].count(None) != 2:
        raise ScaffoldError("new", "give exactly one of --peft-root DIR, --out DIR or --plugin DIR")
    if templates is not None and not templates.is_dir():
        raise ScaffoldError(str(templates), "--templates must be a directory of jinja2 templates")
    if plugin_dir is not None:
        from scaffold.plugin import generate_plugin

        generation = generate_plugin(spec, plugin_dir, force=force, templates=templates)
        root = plugin_dir
    else:
        from scaffold.render.files import Layout

        target, layout = (peft_root, Layout.PEFT_TREE) if peft_root is not None else (out_dir, Layout.STANDALONE)
        assert target is not None
        generation = pipeline.generate(spec, target, layout, force=force, templates=templates)
        root = target
    changeset = generation.changeset
    if as_json:
        emit_json(
            {
                "name": generation.name,
                "root": str(root),
                "dry_run": dry_run,
                "up_to_date": generation.up_to_date,
                "changes": changeset.to_json(),
                "notes": generation.notes,
            }
        )
    if dry_run:
        if not as_json:
            if changeset.is_empty():
                out.print(f"{generation.name}: up to date; nothing to change.")
            else:
                changeset.render_diff(out)
        return
    if changeset.is_empty():
        if not as_json:
            out.print(f"{generation.name}: up to date; nothing to change.")
        return
    apply_changes(changeset, quiet=as_json)
    if not as_json:
        for note in generation.notes:
            out.print(f"  {note}", highlight=False, markup=False, soft_wrap=True)
        title, root_shown = escape(generation.title), escape(str(root))
        out.print(f"[green]Generated {title}[/] ({escape(generation.headline)}) in {root_shown}")


@app.command()
@handle_errors
@locks_tree("peft_root")
def remove(
    name: Annotated[str, typer.Argument(help="The method to remove (as generated by `new`).", show_default=False)],
    peft_root: Annotated[Path, typer.Option("--peft-root", help="The PEFT source tree.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the change as a diff; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Also delete generated files edited since.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Undo `new`: remove NAME's registry edits and generated files, restoring the tree as it was.

    Only methods generated by peft-scaffold (with a manifest) can be removed; a generated file edited since is
    kept, and the command refused, unless --force.
    """
    from scaffold import pipeline
    from scaffold.spec.load import MAX_NAME_LENGTH

    if not (name.isascii() and name.isidentifier() and len(name) <= MAX_NAME_LENGTH):  # it becomes a path
        raise ScaffoldError(repr(name) if len(name) <= 60 else repr(name[:57]) + "...", "is not a method name")
    changeset, notes = pipeline.remove_from_tree(name, peft_root, force=force)
    if as_json:
        emit_json({"name": name, "dry_run": dry_run, "changes": changeset.to_json(), "notes": notes})
    elif dry_run:
        changeset.render_diff(out)
    if dry_run:
        return
    apply_changes(changeset, quiet=as_json)
    if not as_json:
        out.print(f"[green]Removed {name}[/] from {peft_root}")


@app.command()
@handle_errors
def doctor(
    peft_root: Annotated[Path, typer.Option("--peft-root", help="The PEFT source tree.")],
    name: Annotated[str | None, typer.Argument(help="One method (default: every method).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Report, for each method in a PEFT tree (hand-written ones too), which registry sites it is in and what is
    missing; and, for the tree, an interrupted run, leftover temporary files and missing generated files. Exit
    code 1 when a method has gaps or the tree has such a problem."""
    from scaffold.journal import tree_problems
    from scaffold.kinds.tuner.doctor import doctor as doctor_rows
    from scaffold.register.tree import detect_peft_tree

    problems = tree_problems(peft_root)
    try:
        tree = detect_peft_tree(peft_root)
        rows = doctor_rows(tree, name)
    except ScaffoldError as exc:
        if not problems:
            raise
        # An interrupted run can leave a registry file under its backup name: say why, not only what is broken.
        if as_json:
            emit_json({"tree_problems": problems, "error": str(exc), "methods": []})
        else:
            for problem in problems:
                out.print(f"[red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(FAILURE) from None
    incomplete = [row for row in rows if not row.complete]
    if as_json:
        emit_json(
            {"peft_version": tree.version, "methods": [row.as_dict() for row in rows], "tree_problems": problems}
        )
    else:
        for problem in problems:
            out.print(f"[red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        from rich.table import Table

        table = Table(title=f"PEFT {tree.version}: registry sites per method")
        table.add_column("method")
        table.add_column("status")
        table.add_column("missing")
        for row in rows:
            status = "[green]complete[/]" if row.complete else "[red]gaps[/]"
            missing = ", ".join(row.gaps + list(row.problems))
            if row.optional_gaps:
                missing = ", ".join(filter(None, [missing, f"(optional: {', '.join(row.optional_gaps)})"]))
            table.add_row(row.name, status, missing)
        out.print(table)
        out.print(f"{len(rows) - len(incomplete)} of {len(rows)} methods fully registered")
    if incomplete or problems:
        raise typer.Exit(FAILURE)


@app.command()
@handle_errors
def check(
    spec: Annotated[Path, typer.Argument(help="The method spec (YAML).", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Validate SPEC and show what would be generated (classes, weights, files), without writing anything."""
    from scaffold import pipeline

    summary = pipeline.check(spec)
    if as_json:
        emit_json(summary)
        return
    out.print(f"[green]ok[/] {escape(str(spec))}: {escape(summary['kind'])} `{escape(summary['name'])}`")
    for key, value in summary.items():
        if key not in ("name", "kind"):
            out.print(f"  {key}: {value}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def init(
    name: Annotated[str, typer.Argument(help="The new method's name (lowercase identifier).", show_default=False)],
    like: Annotated[str, typer.Option("--like", help="Start from this template: lora or blank.")] = "lora",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the spec here (default: stdout).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
) -> None:
    """Write a starter spec for a new method NAME."""
    from scaffold.starters import starter_spec

    text = starter_spec(name, like)
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists() and not force:
        raise ScaffoldError(str(output), "already exists; pass --force to overwrite")
    output.write_text(text, encoding="utf-8")
    out.print(f"Wrote {output}. Next: peft-scaffold check {output}")


@app.command()
@handle_errors
def schema() -> None:
    """Print the JSON schema of the method spec (for editors and validators)."""
    from scaffold.spec.model import MethodSpec

    emit_json(MethodSpec.model_json_schema())


@app.command()
@handle_errors
def verify(
    spec: Annotated[
        Path, typer.Argument(help="The method spec (YAML) the method was generated from.", show_default=False)
    ],
    peft_root: Annotated[Path, typer.Option("--peft-root", help="The PEFT source tree it was generated into.")],
    fast: Annotated[bool, typer.Option("--fast", help="Only the numeric probe (seconds).")] = False,
    skip_peft_tests: Annotated[
        bool, typer.Option("--skip-peft-tests", help="Skip PEFT's own test_custom_models.py / test_config.py.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="pytest-xdist workers for the test runs.")] = 2,
    as_json: JsonOption = False,
) -> None:
    """Check that the method generated from SPEC into a PEFT tree is sound.

    First a numeric probe on a tiny random layer of every listed layer type (identity init is a no-op, one
    training step moves every trainable weight, merge/unmerge round-trips, two active adapters equal their merge,
    no NaN/inf, fp16/bf16 forward, and agreement with an independent evaluation of the spec), then the method's
    generated tests, ruff + mypy on the generated code, and PEFT's own test_custom_models.py / test_config.py rows
    for it. Prints one table; exit 0 when all is green, 1 when anything fails, 2 on bad input.
    """
    from scaffold.verify.run import run_verify

    report = run_verify(
        spec, peft_root, err if as_json else out, fast=fast, skip_peft_tests=skip_peft_tests, workers=workers
    )
    if as_json:
        emit_json(report.as_dict())
    if not report.ok:
        raise ScaffoldError("verify", f"{len(report.failures)} failing check(s), see the table", FAILURE)


@app.command()
@handle_errors
def demo(
    directory: Annotated[
        Path, typer.Argument(help="Where to put the demo PEFT tree (created; a previous demo there is replaced).")
    ] = Path("peft-scaffold-demo"),
    as_json: JsonOption = False,
) -> None:
    """Generate the reference LoRA into a fresh PEFT 0.21.2 tree and `verify` it.

    Downloads the PEFT sdist once (cached), copies it to DIRECTORY, runs `new` with the reference spec, then
    `verify` (the numeric probe, the generated tests, ruff and mypy on the generated code, PEFT's own tests for
    it), and prints a summary.
    """
    from scaffold.demo import run_demo

    run_demo(directory, console=err if as_json else out, as_json=as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
