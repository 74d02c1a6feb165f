"""Files that ship with peft-scaffold: found inside the installed package, or at the root of a source checkout."""

from __future__ import annotations

from pathlib import Path


_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`templates` or `reference_methods`: the wheel puts them in the package, a checkout at the repo root."""
    packaged = _PACKAGE / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def reference_spec(name: str) -> Path:
    path = resource_dir("reference_methods") / f"{name}.yaml"
    if not name.isidentifier() or not path.is_file():
        from scaffold.errors import ScaffoldError

        known = sorted(p.stem for p in resource_dir("reference_methods").glob("*.yaml"))
        raise ScaffoldError(name, f"no reference spec of that name (known: {', '.join(known)})")
    return path
