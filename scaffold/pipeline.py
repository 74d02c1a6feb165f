"""The pipeline end to end, for every kind: spec -> kind -> plan -> render -> (register) -> one change set.

The CLI is a thin layer over these functions; the work is `scaffold.core.generate`'s, and what differs between
kinds is behind `scaffold.core.kind.Kind`. Nothing on this path imports torch or peft, so `new` answers quickly;
only `verify` (running what was generated) needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.core import generate as core
from scaffold.core.generate import Generation
from scaffold.core.kind import Kind
from scaffold.kinds import all_kinds, kind_of
from scaffold.render.files import Layout
from scaffold.spec import load_spec


__all__ = ["Generation", "check", "generate", "generate_files_only", "generate_into_tree", "load", "remove_from_tree"]


def load(spec_path: Path) -> tuple[Kind, Any]:
    """The spec at `spec_path`, validated by the model of its kind, and that kind."""
    spec = load_spec(spec_path)
    return kind_of(spec.kind, str(spec_path)), spec


def generate(
    spec_path: Path, root: Path, layout: Layout, *, force: bool = False, templates: Path | None = None
) -> Generation:
    """`new SPEC --peft-root DIR` (`Layout.PEFT_TREE`: the files plus their registration in the PEFT tree) or
    `new SPEC --out DIR` (`Layout.STANDALONE`: the files only)."""
    kind, spec = load(spec_path)
    return core.generate(kind, spec, Path(spec_path), Path(root), layout, force=force, templates=templates)


def generate_files_only(spec_path: Path, out_dir: Path, *, force: bool = False) -> Generation:
    return generate(spec_path, out_dir, Layout.STANDALONE, force=force)


def generate_into_tree(spec_path: Path, peft_root: Path, *, force: bool = False) -> Generation:
    return generate(spec_path, peft_root, Layout.PEFT_TREE, force=force)


def remove_from_tree(name: str, peft_root: Path, *, force: bool = False) -> tuple[ChangeSet, list[str]]:
    """`remove NAME --peft-root DIR`: undo every registry edit and delete the generated files (from the manifest
    of whichever kind generated NAME)."""
    return core.remove(all_kinds(), name, Path(peft_root), force=force)


def check(spec_path: Path) -> dict[str, Any]:
    """`check SPEC`: the spec validated fully, and what would be generated."""
    kind, spec = load(spec_path)
    return kind.summary(spec, str(spec_path))
