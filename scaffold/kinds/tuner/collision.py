"""`kind: tuner`'s collision checks: a new method must not take a name, member, prefix or export of another."""

from __future__ import annotations

import re

from scaffold.core.manifest import Manifest
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.registration import MethodRegistration
from scaffold.kinds.tuner.sites import peft_type_members
from scaffold.register import _cst
from scaffold.register.locate import Assignment
from scaffold.register.transforms import dunder_all_names, parse_statement_of
from scaffold.register.tree import PeftTree


_PREFIX_ATTR = re.compile(r"""^\s*prefix\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)
_PREFIX_ARG = re.compile(r"""register_peft_method\([^)]*\bprefix\s*=\s*["']([^"']+)["']""", re.DOTALL)


def _used_prefixes(tree: PeftTree) -> dict[str, str]:
    """prefix -> method package, from `prefix = "..."` class attributes and `register_peft_method(prefix=...)`."""
    out: dict[str, str] = {}
    for package in sorted(p for p in tree.tuners_dir.iterdir() if p.is_dir()):
        for py in sorted(package.rglob("*.py")):
            text = py.read_text(encoding="utf-8")
            if "prefix" not in text:
                continue
            for found in (*_PREFIX_ATTR.findall(text), *_PREFIX_ARG.findall(text)):
                out.setdefault(found, package.name)
        if (package / "__init__.py").is_file():
            out.setdefault(f"{package.name}_", package.name)  # register_peft_method's default
    return out


def check_collision(tree: PeftTree, reg: MethodRegistration, manifest: Manifest | None = None) -> None:
    """Refuse a method whose name, PeftType member, prefix, package, classes or mapping another method uses.

    Re-generating a method generated earlier (`manifest`, its manifest) is not a collision, as long as its names
    are unchanged.
    """
    reg.validate()
    if manifest is not None:
        _check_regeneration(manifest, reg)
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
        module = parse_statement_of((tree.root / rel).read_text(encoding="utf-8"), rel, Assignment("__all__"))
        taken = set(dunder_all_names(module)).intersection(reg.exported)
        if taken:
            raise ScaffoldError(rel, f"already exports {sorted(taken)[0]!r}")
    constants_rel = "src/peft/utils/constants.py"
    constants = (tree.root / constants_rel).read_text(encoding="utf-8")
    body = parse_statement_of(constants, constants_rel, Assignment(reg.constant_name)).body
    if _cst.find_assignment(body, reg.constant_name) is not None:
        raise ScaffoldError(constants_rel, f"{reg.constant_name} is already defined")
    page = f"docs/source/package_reference/{reg.name}.md"
    if (tree.root / page).exists():
        raise ScaffoldError(page, "already exists")


def _check_regeneration(manifest: Manifest, reg: MethodRegistration) -> None:
    old = manifest.registration
    for field in ("peft_type", "config_cls", "model_cls", "exported", "constant_name"):
        if getattr(old, field) != getattr(reg, field):
            raise ScaffoldError(
                field,
                f"{reg.name!r} was generated with {field} {getattr(old, field)!r}; "
                f"run `remove {reg.name}` before generating it as {getattr(reg, field)!r}",
            )
