"""Get a PEFT source tree (the sdist: `src/peft` and `tests/`) to register methods into and test against.

The sdist is cached once per version, in `$PEFT_SCAFFOLD_CACHE` or `~/.cache/peft-scaffold`:

    <cache>/peft-<version>.tar.gz     downloaded with `pip download --no-binary :all:` only when absent
    <cache>/peft-<version>/           extracted once; treat as read-only, use `copy_peft_tree` for a writable copy
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from scaffold.errors import FAILURE, ScaffoldError


DEFAULT_PEFT_VERSION = "0.21.2"
CACHE_ENV = "PEFT_SCAFFOLD_CACHE"

# Build outputs and caches that must not travel into a fresh copy of a tree.
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".mypy_cache")


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "peft-scaffold"


def ensure_peft_sdist(version: str = DEFAULT_PEFT_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the directory of the extracted PEFT `version` sdist, downloading and extracting it only once."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extracted = cache / f"peft-{version}"
    if _is_peft_sdist(extracted):
        return extracted
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScaffoldError(str(cache), f"cannot create the cache directory ({exc.strerror})", FAILURE) from exc
    tarball = cache / f"peft-{version}.tar.gz"
    # one process at a time fetches a version (pytest-xdist workers start together on a fresh machine)
    with open(cache / f".peft-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_peft_sdist(extracted):
            return extracted
        if not tarball.is_file():
            _download(version, cache)
        _extract(tarball, extracted)
    if not _is_peft_sdist(extracted):
        raise ScaffoldError(str(tarball), "the archive has no src/peft and tests/ directories", FAILURE)
    return extracted


def copy_peft_tree(src: Path, dest: Path) -> Path:
    """Copy a PEFT tree to `dest` (which must not exist) as a fresh writable tree, without caches."""
    src, dest = Path(src), Path(dest)
    if not (src / "src" / "peft").is_dir():
        raise ScaffoldError(str(src), "not a PEFT source tree (no src/peft)")
    if dest.exists():
        raise ScaffoldError(str(dest), "already exists; refusing to copy a PEFT tree over it")
    shutil.copytree(src, dest, ignore=_COPY_IGNORE, copy_function=shutil.copy2)
    # Files in the cache may be read-only; a test copy must be writable.
    for path in [dest, *dest.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200)
    return dest


def _is_peft_sdist(path: Path) -> bool:
    return (path / "src" / "peft" / "__init__.py").is_file() and (path / "tests").is_dir()


def _download(version: str, cache: Path) -> None:
    # The tarball is only ever created by pip here; a half-finished download leaves no tarball behind,
    # so the next call retries.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"peft=={version}", "-d", tmp, "--disable-pip-version-check", "--quiet",
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScaffoldError(f"peft=={version}", f"pip download failed ({exc})", FAILURE) from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ScaffoldError(f"peft=={version}", f"pip download failed: {last}", FAILURE)
        archives = sorted(Path(tmp).glob("peft-*.tar.gz"))
        if not archives:
            raise ScaffoldError(f"peft=={version}", "pip download produced no .tar.gz sdist", FAILURE)
        os.replace(archives[0], cache / f"peft-{version}.tar.gz")


def _extract(tarball: Path, extracted: Path) -> None:
    """Extract into a temporary directory next to the target, then rename, so a crash never leaves half a tree."""
    with tempfile.TemporaryDirectory(dir=extracted.parent, prefix=".extract-") as tmp:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ScaffoldError(str(tarball), f"cannot extract ({exc})", FAILURE) from exc
        roots = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(roots) != 1:
            raise ScaffoldError(str(tarball), "expected a single top-level directory in the sdist", FAILURE)
        if extracted.exists():  # a broken earlier extraction
            shutil.rmtree(extracted)
        os.replace(roots[0], extracted)
