"""The pipeline end to end: spec -> plan -> render -> (register) -> one change set, applied atomically.

The CLI is a thin layer over these functions. Nothing on this path imports torch or peft, so `new` answers
quickly; only `verify` (running what was generated) needs them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.plan import MethodPlan, build_plan
from scaffold.render import GeneratedFiles, Layout, render_method
from scaffold.spec import load_spec


@dataclass
class Generation:
    """The outcome of planning a `new`: what would change, and why."""

    plan: MethodPlan
    changeset: ChangeSet
    generated: GeneratedFiles
    notes: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.changeset.is_empty()


def plan_from_file(spec_path: Path) -> MethodPlan:
    spec = load_spec(spec_path)
    return build_plan(spec, source=str(spec_path))


def spec_hash(spec_path: Path) -> str:
    return hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()


def generate_files_only(spec_path: Path, out_dir: Path, *, force: bool = False) -> Generation:
    """`new SPEC --out DIR`: write the method's files into DIR (standalone layout), nothing else."""
    plan = plan_from_file(spec_path)
    generated = render_method(plan, layout=Layout.STANDALONE, spec_file=Path(spec_path).name)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ScaffoldError(str(out_dir), "exists and is not a directory")
    changeset = ChangeSet(out_dir)
    _stage(changeset, generated, force=force, what=str(out_dir))
    return Generation(plan, changeset, generated)


def generate_into_tree(spec_path: Path, peft_root: Path, *, force: bool = False) -> Generation:
    """`new SPEC --peft-root DIR`: the method's files plus its registration in the PEFT tree."""
    from scaffold import register

    plan = plan_from_file(spec_path)
    tree = register.detect_peft_tree(Path(peft_root))
    from scaffold.plan.registration import registration_for

    registration = registration_for(plan)
    generated = render_method(
        plan,
        layout=Layout.PEFT_TREE,
        spec_file=Path(spec_path).name,
        registered_constants=register.registers_constants(register.NEW_SITES),
    )
    changeset = ChangeSet(Path(peft_root))
    register.check_collision(tree, registration, spec_hash=spec_hash(spec_path), force=force)
    _stage(changeset, generated, force=force, what=generated.package_dir)
    results = register.plan_registration(changeset, tree, registration, sites=register.NEW_SITES)
    notes = [str(result) for result in results]
    register.write_manifest(changeset, tree, registration, generated.files, spec_hash=spec_hash(spec_path))
    return Generation(plan, changeset, generated, notes)


def _stage(changeset: ChangeSet, generated: GeneratedFiles, *, force: bool, what: str) -> None:
    for relpath, text in generated:
        current = changeset.read(relpath)
        if current is not None and current != text and not force:
            raise ScaffoldError(
                relpath, f"exists with different content; pass --force to overwrite ({what} was generated before?)"
            )
        changeset.write(relpath, text)


def remove_from_tree(name: str, peft_root: Path, *, force: bool = False) -> tuple[ChangeSet, list[str]]:
    """`remove NAME --peft-root DIR`: undo every registry edit and delete the generated files (from the manifest)."""
    from scaffold import register

    tree = register.detect_peft_tree(Path(peft_root))
    changeset = ChangeSet(Path(peft_root))
    results = register.plan_unregistration(changeset, tree, name, force=force)
    return changeset, [str(result) for result in results]
