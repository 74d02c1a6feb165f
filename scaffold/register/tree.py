"""Recognise a PEFT source tree before anything is written into it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from scaffold.errors import ScaffoldError


# PEFT minor versions whose registry layout the sites understand (checked against the 0.19.1, 0.20.0 and 0.21.2
# sdists). Other versions are refused: their files may have a different shape.
SUPPORTED_SERIES = ("0.19", "0.20", "0.21")
TOCTREE = "docs/source/_toctree.yml"

# Files every supported tree has; `tests/` and `docs/` are optional (pip-installed sources, sdists).
REQUIRED_FILES = (
    "src/peft/__init__.py",
    "src/peft/tuners/__init__.py",
    "src/peft/utils/peft_types.py",
    "src/peft/utils/constants.py",
    "src/peft/utils/other.py",
    "src/peft/utils/__init__.py",
)

_VERSION_ASSIGN = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:(?:\.?dev|rc|a|b)\d*)*(?:\+[\w.]+)?$")


@dataclass(frozen=True)
class PeftTree:
    root: Path
    version: str  # `__version__` of src/peft/__init__.py, e.g. "0.21.2" or "0.20.1.dev0"
    series: str  # "0.21"
    has_tests: bool  # tests/test_config.py and tests/test_custom_models.py exist
    has_docs: bool  # docs/source/_toctree.yml exists (a git checkout; sdists have no docs)

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    @property
    def tuners_dir(self) -> Path:
        return self.root / "src" / "peft" / "tuners"


def supported_versions_text() -> str:
    return ", ".join(f"{s}.x" for s in SUPPORTED_SERIES)


def detect_peft_tree(peft_root: Path) -> PeftTree:
    """Check that `peft_root` is a PEFT source tree of a supported version; raise `ScaffoldError` otherwise."""
    root = Path(peft_root)
    init = root / "src" / "peft" / "__init__.py"
    if not init.is_file():
        raise ScaffoldError(str(root), "not a PEFT source tree: src/peft/__init__.py not found")
    match = _VERSION_ASSIGN.search(init.read_text(encoding="utf-8"))
    if match is None:
        raise ScaffoldError("src/peft/__init__.py", 'expected `__version__ = "X.Y.Z"`')
    version = match.group(1)
    parsed = _VERSION.match(version)
    series = f"{parsed.group(1)}.{parsed.group(2)}" if parsed else ""
    if series not in SUPPORTED_SERIES:
        raise ScaffoldError(
            str(root), f"PEFT {version} is not supported; supported versions: {supported_versions_text()}"
        )
    for rel in REQUIRED_FILES:
        if not (root / rel).is_file():
            raise ScaffoldError(rel, f"missing; expected in a PEFT {series}.x source tree")
    has_tests = (root / "tests" / "test_config.py").is_file() and (root / "tests" / "test_custom_models.py").is_file()
    has_docs = (root / TOCTREE).is_file()
    return PeftTree(root=root, version=version, series=series, has_tests=has_tests, has_docs=has_docs)
