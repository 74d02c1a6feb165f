"""The generation core, the same for every kind: plan -> render -> stage -> register -> manifest, and `remove`.

    generate(kind, spec, spec_path, root, Layout.PEFT_TREE)   # a ChangeSet with the files, the registry edits and
                                                             # the manifest; nothing is written until it is applied
    remove(kinds, name, root)                                # the inverse, from the manifest

Re-generating a method generated before is a normal operation: its manifest proves which files are ours (they
may be overwritten unless edited since), and when its registration changed, the old one is undone first so the
change set holds only the net difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.core.kind import Kind
from scaffold.core.manifest import MANIFEST_NAME, Manifest, make_manifest, read_manifest, spec_hash
from scaffold.core.sites import SiteResult, register, unregister
from scaffold.errors import ScaffoldError
from scaffold.references import check_insertions_unedited, check_no_references
from scaffold.register.tree import PeftTree, detect_peft_tree
from scaffold.render.files import Layout, render_files


@dataclass
class Generation:
    """The outcome of planning a `new`: what would change, and why."""

    kind: str
    name: str
    title: str
    headline: str  # what to call it in one line, e.g. the config class
    changeset: ChangeSet
    plan: Any
    files: dict[str, str]  # the generated files (relative path -> text)
    templates: dict[str, str]  # template -> relative path of the file it rendered
    notes: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.changeset.is_empty()


def generate(
    kind: Kind,
    spec: Any,
    spec_path: Path,
    root: Path,
    layout: Layout,
    *,
    force: bool = False,
    templates: Path | None = None,
) -> Generation:
    """The change set of `new SPEC --peft-root ROOT` (`Layout.PEFT_TREE`) or `new SPEC --out ROOT`."""
    root = Path(root)
    if layout is Layout.PEFT_TREE:
        tree = detect_peft_tree(root)
    else:
        tree = None
        if root.exists() and not root.is_dir():
            raise ScaffoldError(str(root), "exists and is not a directory")
    changeset = ChangeSet(root)
    plan = kind.plan(spec, str(spec_path), tree, templates)
    paths = kind.templates(plan, layout)
    context = {**kind.context(plan, layout), "p": plan, "spec_file": Path(spec_path).name, "layout": layout.value}
    files = render_files(
        paths, context, read_existing=changeset.read, first_party=kind.first_party(plan, layout), templates=templates
    )
    generation = Generation(
        kind.name,
        plan.name,
        plan.title,
        kind.headline(plan, layout),
        changeset,
        plan,
        files,
        paths,
        kind.notes(plan, layout),
    )
    if tree is None:
        stage_files(changeset, files, force=force, ours=(), what=str(root))
        return generation

    reg = kind.registration(plan)
    old = read_manifest(changeset, kind, plan.name)
    kind.check_tree(tree, changeset, plan, reg, old)
    ours: set[str] = set()
    if old is not None:
        old.check_unedited(changeset, force=force, verb="overwrite")
        ours = set(old.files)
        if old.registration != reg:
            unregister(changeset, tree, old.registration, kind.sites)
        site_paths = {site.path(reg.name) for site in kind.sites}
        for rel in sorted(ours - set(files) - site_paths):
            changeset.delete(rel)  # a file the new spec no longer generates
    stage_files(changeset, files, force=force, ours=ours, what=plan.name, in_tree=True)
    generation.notes += [str(result) for result in register(changeset, tree, reg, kind.sites)]
    recorded = [*files, *_created_by_sites(changeset, kind, reg, ours)]
    manifest = make_manifest(changeset, kind, reg, recorded, spec_hash=spec_hash(spec_path))
    changeset.write(manifest.relpath, manifest.to_json())
    return generation


def stage_files(
    changeset: ChangeSet, files: dict[str, str], *, force: bool, ours: Iterable[str], what: str, in_tree: bool = False
) -> None:
    """Write the generated files into the change set. A file already there with other content is overwritten only
    when it is `ours` (listed in the manifest, and unedited: checked before) or with `force`; in a tree, `force`
    never overwrites a file that is not ours (a name whose files collide with the tree's own: tests/test_auto.py)."""
    ours = set(ours)
    for relpath, text in sorted(files.items()):
        owned = ours if in_tree else None
        changeset.write_generated(relpath, text, force=force or relpath in ours, owned=owned, what=what)


def _created_by_sites(changeset: ChangeSet, kind: Kind, reg: Any, ours: set[str]) -> list[str]:
    """Files a site creates (a docs page): recorded with the generated files, so the edited-files guard covers
    them. One created by an earlier generation counts too."""
    created = {c.relpath for c in changeset.changes if c.action == "create"}
    out = []
    for site in kind.sites:
        rel = site.path(reg.name)
        if (rel in created or rel in ours) and changeset.read(rel) is not None and rel not in out:
            out.append(rel)
    return out


def find_manifest(kinds: Sequence[Kind], root: Path | ChangeSet, name: str) -> tuple[Kind, Manifest] | None:
    """The kind that generated `name` into the tree, and its manifest."""
    for kind in kinds:
        manifest = read_manifest(root, kind, name)
        if manifest is not None:
            return kind, manifest
    return None


def remove(kinds: Sequence[Kind], name: str, root: Path, *, force: bool = False) -> tuple[ChangeSet, list[str]]:
    """`remove NAME --peft-root ROOT`: every registry edit undone and the generated files deleted, as the manifest
    lists them; refused for a method without a manifest, or with generated files edited since (unless `force`)."""
    tree = detect_peft_tree(Path(root))
    changeset = ChangeSet(Path(root))
    found = find_manifest(kinds, changeset, name)
    if found is None:
        raise ScaffoldError(
            f"src/peft/tuners/{name}",
            f"no {MANIFEST_NAME}: {name!r} was not generated by peft-scaffold; refusing to remove it",
        )
    kind, manifest = found
    return changeset, [str(result) for result in remove_generated(changeset, tree, kind, manifest, force=force)]


def remove_generated(
    changeset: ChangeSet, tree: PeftTree, kind: Kind, manifest: Manifest, *, force: bool = False
) -> list[SiteResult]:
    """Stack the removal of a generated method into `changeset`; what happened at each site."""
    manifest.check_unedited(changeset, force=force, verb="remove")
    if not force:
        check_insertions_unedited(changeset, tree, manifest.registration, kind.sites)
    results = unregister(changeset, tree, manifest.registration, kind.sites)
    for rel in sorted(manifest.files):
        changeset.delete(rel)
    changeset.delete(manifest.relpath)  # applying also prunes an emptied package dir and its __pycache__
    if not force:
        check_no_references(changeset, manifest.registration)
    return results
