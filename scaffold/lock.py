"""One writer per tree: an exclusive, non-blocking `flock` on the tree's root directory itself.

Every command that writes into a tree (`new`, `remove`, and `ChangeSet.apply` for any other caller) holds it from
before it reads the tree until its change set is applied, so two runs cannot both plan against the same state and
then overwrite each other's edits. A second run does not wait: it stops at once with a one-line message (exit 1).

Why the directory and not a lock file: a lock file would stay in the tree, and `remove` must leave the pristine
tree byte for byte. The kernel drops a `flock` when its process dies (SIGKILL included), so a lock is never stale.
The lock is re-entrant within a process (the CLI takes it, and `apply` takes it again).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scaffold.errors import FAILURE, ScaffoldError


_held: dict[str, int] = {}  # realpath of a locked directory -> its open descriptor


def lock_target(root: Path) -> Path | None:
    """The directory locked for `root`: `root` itself, or its nearest existing ancestor when it does not exist yet
    (`new --out DIR` creates DIR). None when `root` exists but is not a directory (the caller reports that)."""
    path = Path(os.path.abspath(root))
    if path.exists():
        return path if path.is_dir() else None
    while not path.exists():
        path = path.parent
    return path if path.is_dir() else None


def is_locked_by_us(root: Path) -> bool:
    target = lock_target(root)
    return target is not None and os.path.realpath(target) in _held


@contextmanager
def tree_lock(root: Path) -> Iterator[None]:
    """Hold the exclusive lock on `root` for the block; raise `ScaffoldError` (exit 1) if another process holds it."""
    target = lock_target(root)
    try:
        import fcntl
    except ImportError:  # no flock on this platform (Windows): run unlocked
        yield
        return
    if target is None:
        yield
        return
    key = os.path.realpath(target)
    if key in _held:
        yield
        return
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ScaffoldError(
            str(root),
            "another peft-scaffold run is changing this tree (it holds the lock); try again when it is done",
            FAILURE,
        ) from None
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # closing the last descriptor releases the lock


def held_by_other(root: Path) -> bool:
    """Whether another process holds the lock on `root` right now (for `doctor`; takes and drops it at once)."""
    target = lock_target(root)
    if target is None or is_locked_by_us(root):
        return False
    try:
        import fcntl
    except ImportError:
        return False
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
