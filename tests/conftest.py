"""Shared fixtures: PEFT source trees (copied from the cached sdist, never re-downloaded within a run)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


# Make `scaffold` importable when the project is not installed into the environment.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from scaffold.peft_source import DEFAULT_PEFT_VERSION, copy_peft_tree, ensure_peft_sdist  # noqa: E402


# Versions the registrar supports, newest first (latest patch of each minor).
SUPPORTED_PEFT_VERSIONS = ("0.21.2", "0.20.0", "0.19.1")


@pytest.fixture(scope="session")
def peft_sdist() -> Path:
    """The cached, read-only PEFT sdist of the default version. Never write into it."""
    return ensure_peft_sdist(DEFAULT_PEFT_VERSION)


@pytest.fixture(scope="session")
def peft_sdist_for() -> Callable[[str], Path]:
    """`peft_sdist_for("0.20.0")`: the cached, read-only sdist of another version."""
    return ensure_peft_sdist


@pytest.fixture
def peft_tree(peft_sdist: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the default PEFT sdist."""
    return copy_peft_tree(peft_sdist, tmp_path / "peft")


@pytest.fixture
def make_peft_tree(tmp_path: Path) -> Callable[[str], Path]:
    """`make_peft_tree("0.19.1")`: a fresh, writable copy of that version's sdist."""
    counter = iter(range(1_000_000))

    def make(version: str = DEFAULT_PEFT_VERSION) -> Path:
        return copy_peft_tree(ensure_peft_sdist(version), tmp_path / f"peft-{version}-{next(counter)}")

    return make


def snapshot_tree(root: Path) -> dict[str, tuple[str, int]]:
    """Everything under `root`: files as (sha256, mode), directories as ("dir", mode)."""
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        mode = path.stat().st_mode & 0o7777
        out[rel] = ("dir", mode) if path.is_dir() else (hashlib.sha256(path.read_bytes()).hexdigest(), mode)
    return out


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, tuple[str, int]]]:
    return snapshot_tree
