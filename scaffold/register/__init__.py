"""Register a method in a PEFT source tree (and undo it), as libcst edits stacked into a `ChangeSet`.

    tree = detect_peft_tree(root)              # refuses unsupported / unrecognised trees
    check_collision(tree, reg)                 # refuses names another method already uses
    cs = ChangeSet(root)
    ...the generator writes the package files into cs...
    results = plan_registration(cs, tree, reg) # every site, in order; nothing is written yet
    write_manifest(cs, reg, spec_hash, files)
    cs.apply()                                 # atomic

`plan_unregistration(cs, tree, "mylora")` is the inverse, driven by the manifest. See `sites` for the list of
sites and which items of PEFT's contributor checklist they cover, `doctor` for checking a tree.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.register import _cst
from scaffold.register.doctor import DoctorRow, discover_methods, doctor
from scaffold.register.manifest import (
    MANIFEST_NAME,
    Manifest,
    edited_files,
    manifest_path,
    read_manifest,
    write_manifest,
)
from scaffold.register.method import DiscoveredMethod, MethodRegistration
from scaffold.register.sites import MINIMAL_SITES, SITES, Site, peft_type_members
from scaffold.register.transforms import dunder_all_names
from scaffold.register.tree import SUPPORTED_SERIES, PeftTree, detect_peft_tree


__all__ = [
    "MANIFEST_NAME",
    "MINIMAL_SITES",
    "NEW_SITES",
    "SITES",
    "SUPPORTED_SERIES",
    "DiscoveredMethod",
    "DoctorRow",
    "Manifest",
    "MethodRegistration",
    "PeftTree",
    "Site",
    "SiteResult",
    "check_collision",
    "detect_peft_tree",
    "discover_methods",
    "doctor",
    "edited_files",
    "manifest_path",
    "plan_registration",
    "plan_unregistration",
    "read_manifest",
    "registers_constants",
    "write_manifest",
]

Status = Literal["changed", "already registered", "skipped", "removed", "not registered"]


@dataclass(frozen=True)
class SiteResult:
    site: str
    relpath: str
    status: Status
    detail: str = ""  # for "skipped": why

    def __str__(self) -> str:
        return f"{self.site} ({self.relpath}): {self.status}" + (f": {self.detail}" if self.detail else "")


def plan_registration(
    changeset: ChangeSet, tree: PeftTree, reg: MethodRegistration, sites: list[Site] = SITES
) -> list[SiteResult]:
    """Stack the registration edits of every site into `changeset` (on top of what it already holds)."""
    reg.validate()
    results = []
    for site in sites:
        rel = site.path(reg.name)
        reason = site.skip_reason(tree, reg)
        if reason is not None:
            results.append(SiteResult(site.name, rel, "skipped", reason))
            continue
        before = changeset.read(rel)
        head, tail = split_head(before, site.head_names)
        after = site.apply(head, reg)
        if after is not None:
            after += tail
        if after == before:
            results.append(SiteResult(site.name, rel, "already registered"))
            continue
        _stage(changeset, rel, after)
        results.append(SiteResult(site.name, rel, "changed"))
    return results


def split_head(source: str | None, names: tuple[str, ...]) -> tuple[str | None, str]:
    """Split `source` after the last top-level statement assigning one of `names`.

    Sites that only touch imports and a few module-level lists of a very large file (tests/test_custom_models.py:
    8000+ lines, a second per libcst parse and another per code generation) edit just this head; the tail is
    kept verbatim. `ast` finds the boundary in a tenth of the time. Without such a statement, nothing is split
    (the site then reports the missing list itself).
    """
    if source is None or not names:
        return source, ""
    try:
        module = ast.parse(source)
    except SyntaxError:
        return source, ""  # the site's own parse reports it, naming the file
    ends = [
        node.end_lineno
        for node in module.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(isinstance(t, ast.Name) and t.id in names for t in _assign_targets(node))
        and node.end_lineno is not None
    ]
    if not ends:
        return source, ""
    lines = source.splitlines(keepends=True)
    cut = max(ends)
    return "".join(lines[:cut]), "".join(lines[cut:])


def _assign_targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


def plan_unregistration(
    changeset: ChangeSet,
    tree: PeftTree,
    reg_or_name: MethodRegistration | str,
    sites: list[Site] = SITES,
    force: bool = False,
) -> list[SiteResult]:
    """Stack the inverse edits, and the deletion of the generated files listed in the manifest.

    Given a name, the registration is read from the manifest; a method without one (hand-written) is refused.
    Generated files edited since generation are refused too, unless `force`.
    """
    name = reg_or_name if isinstance(reg_or_name, str) else reg_or_name.name
    manifest = read_manifest(changeset, name)
    if isinstance(reg_or_name, str):
        if manifest is None:
            raise ScaffoldError(
                f"src/peft/tuners/{name}",
                f"no {MANIFEST_NAME}: {name!r} was not generated by peft-scaffold; refusing to remove it",
            )
        reg = manifest.registration
    else:
        reg = reg_or_name
    if manifest is not None:
        edited = edited_files(changeset, manifest)
        if edited and not force:
            raise ScaffoldError(edited[0], "edited since it was generated; use --force to remove it anyway")

    results = []
    for site in reversed(sites):
        rel = site.path(reg.name)
        before = changeset.read(rel)
        if before is None and site.skip_reason(tree, reg) is not None:
            results.append(SiteResult(site.name, rel, "skipped", site.skip_reason(tree, reg) or ""))
            continue
        if before is None:
            results.append(SiteResult(site.name, rel, "not registered"))
            continue
        after = site.remove(before, reg)
        if after == before:
            results.append(SiteResult(site.name, rel, "not registered"))
            continue
        _stage(changeset, rel, after)
        results.append(SiteResult(site.name, rel, "removed"))
    if manifest is not None:
        for rel in sorted(manifest.files):
            changeset.delete(rel)
        changeset.delete(manifest.relpath)  # applying also prunes the emptied package dir and its __pycache__
    results.reverse()
    return results


def _stage(changeset: ChangeSet, rel: str, content: str | None) -> None:
    if content is None:
        changeset.delete(rel)
    else:
        changeset.write(rel, content)


_PREFIX_ATTR = re.compile(r"""^\s*prefix\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)
_PREFIX_ARG = re.compile(r"""register_peft_method\([^)]*\bprefix\s*=\s*["']([^"']+)["']""", re.DOTALL)


def _used_prefixes(tree: PeftTree) -> dict[str, str]:
    """prefix -> method package, from `prefix = "..."` class attributes and `register_peft_method(prefix=...)`."""
    out: dict[str, str] = {}
    for package in sorted(p for p in tree.tuners_dir.iterdir() if p.is_dir()):
        for py in sorted(package.rglob("*.py")):
            text = py.read_text(encoding="utf-8")
            for found in (*_PREFIX_ATTR.findall(text), *_PREFIX_ARG.findall(text)):
                out.setdefault(found, package.name)
        if (package / "__init__.py").is_file():
            out.setdefault(f"{package.name}_", package.name)  # register_peft_method's default
    return out


def check_collision(
    tree: PeftTree, reg: MethodRegistration, *, spec_hash: str | None = None, force: bool = False
) -> None:
    """Refuse a method whose name, PeftType member, prefix, package, classes or mapping another method uses.

    Re-generating a method generated earlier (its manifest names it) is not a collision, as long as its names are
    unchanged and, unless `force`, none of its generated files was edited since. `spec_hash` is the new spec's
    hash; a changed spec is a normal re-generation.
    """
    reg.validate()
    manifest = read_manifest(tree.root, reg.name)
    if manifest is not None:
        _check_regeneration(tree, manifest, reg, force)
        return
    package = f"src/peft/tuners/{reg.name}"
    if (tree.root / package).exists() or (tree.root / f"{package}.py").exists():
        raise ScaffoldError(package, f"already exists; the name {reg.name!r} is taken by a method not generated here")
    types_rel = "src/peft/utils/peft_types.py"
    if reg.peft_type in peft_type_members((tree.root / types_rel).read_text(encoding="utf-8")):
        raise ScaffoldError(types_rel, f"PeftType.{reg.peft_type} already exists")
    owner = _used_prefixes(tree).get(reg.prefix)
    if owner is not None:
        raise ScaffoldError(package, f"the parameter prefix {reg.prefix!r} is already used by {owner!r}")
    for rel in ("src/peft/tuners/__init__.py", "src/peft/__init__.py"):
        module = _cst.parse((tree.root / rel).read_text(encoding="utf-8"), rel)
        taken = set(dunder_all_names(module)).intersection(reg.exported)
        if taken:
            raise ScaffoldError(rel, f"already exports {sorted(taken)[0]!r}")
    constants_rel = "src/peft/utils/constants.py"
    body = _cst.parse((tree.root / constants_rel).read_text(encoding="utf-8"), constants_rel).body
    if _cst.find_assignment(body, reg.constant_name) is not None:
        raise ScaffoldError(constants_rel, f"{reg.constant_name} is already defined")
    page = f"docs/source/package_reference/{reg.name}.md"
    if (tree.root / page).exists():
        raise ScaffoldError(page, "already exists")


def _check_regeneration(tree: PeftTree, manifest: Manifest, reg: MethodRegistration, force: bool) -> None:
    old = manifest.registration
    for field in ("peft_type", "config_cls", "model_cls", "exported", "constant_name"):
        if getattr(old, field) != getattr(reg, field):
            raise ScaffoldError(
                field,
                f"{reg.name!r} was generated with {field} {getattr(old, field)!r}; "
                f"run `remove {reg.name}` before generating it as {getattr(reg, field)!r}",
            )
    edited = edited_files(tree.root, manifest)
    if edited and not force:
        raise ScaffoldError(edited[0], "edited since it was generated; use --force to overwrite it")


def registers_constants(sites: list[Site]) -> bool:
    """Whether `sites` define the method's own target-module mapping in utils/constants.py (the full registrar
    does; MINIMAL_SITES do not, and the generated model must then not import it)."""
    return any(site.name == "constants" for site in sites)


# The sites `new --peft-root` registers in.
NEW_SITES: list[Site] = SITES
