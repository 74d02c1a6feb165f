"""Crash-safe apply: a write-ahead journal in the tree, and recovery of an interrupted apply.

`apply_changes` writes a change set into a tree as one transaction:

1. Resolve every target (a symlink inside the tree is written through, so it stays a link; one that leaves the
   tree is refused) and write the journal, `<root>/.peft-scaffold-journal.json`, fsynced: each file's path, the
   hash of its old and new text, and the names of its temporary and backup files; the directories to create.
2. Stage: create the directories, write each new text to `.<name>.peft-scaffold-tmp` beside its target, fsynced.
3. Commit: move each existing target aside to `.<name>.peft-scaffold-bak` (the original inode, so bytes and mode
   survive), rename the temporary file in; fsync the directories; rewrite the journal with state "committed".
4. Finish: delete the backups, prune directories emptied by deletions, delete the journal.

Recovery (`recover`, run by every command that writes, under the tree lock, before it reads the tree) ROLLS BACK
an apply that did not reach "committed" (backups renamed back, created files and directories removed) and ROLLS
FORWARD one that did (only step 4 is left). Either way no temporary or backup file remains, and the tree is exactly
as a run that never started, or as a clean run, left it. Rolling back is the choice because the original of every
file is on disk (the backup, or the untouched target) until "committed", while the new texts may be half-written.
An exception in the process, KeyboardInterrupt included, rolls back at once by the same code, with SIGINT held off
until it is done; a SIGKILL or a power cut leaves the journal for the next run.

Fault injection for tests: with PEFT_SCAFFOLD_FAULT_AT=N the process sends itself SIGKILL (or the signal named by
PEFT_SCAFFOLD_FAULT_SIGNAL, e.g. INT) just before its Nth file-system step; PEFT_SCAFFOLD_FAULT_LOG=FILE appends
one line per step to FILE (to count the steps of a run).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scaffold.errors import FAILURE, ScaffoldError


JOURNAL_NAME = ".peft-scaffold-journal.json"
TMP_SUFFIX = ".peft-scaffold-tmp"
BAK_SUFFIX = ".peft-scaffold-bak"
FORMAT = 1


# -- fault injection -------------------------------------------------------------------------------------------------

_steps = 0


def step(what: str) -> None:
    """Called just before every file-system change of an apply or a recovery."""
    global _steps
    _steps += 1
    log = os.environ.get("PEFT_SCAFFOLD_FAULT_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_steps} {what}\n")
    at = os.environ.get("PEFT_SCAFFOLD_FAULT_AT")
    if at and int(at) == _steps:
        name = os.environ.get("PEFT_SCAFFOLD_FAULT_SIGNAL", "KILL")
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


# -- the plan of one apply -------------------------------------------------------------------------------------------


@dataclass
class Entry:
    path: str  # as the change set names it
    real: str  # the file written, relative to the real root (symlinks inside the tree resolved)
    old: str | None  # sha256 of the old text; None: created
    new: str | None  # sha256 of the new text; None: deleted
    mode: int = 0o644  # of the staged file

    @property
    def tmp(self) -> str:
        return _sibling(self.real, TMP_SUFFIX)

    @property
    def bak(self) -> str:
        return _sibling(self.real, BAK_SUFFIX)


@dataclass
class Journal:
    root_dirs: list[str] = field(default_factory=list)  # absolute: ancestors of the root created for it (--out)
    dirs: list[str] = field(default_factory=list)  # relative: created for new files, in creation order
    entries: list[Entry] = field(default_factory=list)
    state: str = "applying"  # or "committed"

    def to_json(self) -> str:
        data = {"format": FORMAT, "tool": "peft-scaffold", "pid": os.getpid(), **asdict(self)}
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Journal:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown journal format {data.get('format')!r}")
        return cls(
            root_dirs=list(data["root_dirs"]),
            dirs=list(data["dirs"]),
            entries=[Entry(**entry) for entry in data["entries"]],
            state=data["state"],
        )


def _sibling(rel: str, suffix: str) -> str:
    head, _, name = rel.rpartition("/")
    return f"{head}/.{name}{suffix}" if head else f".{name}{suffix}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def real_root(root: Path) -> Path:
    return Path(os.path.realpath(root))


def resolve_inside(root: Path, rel: str, *, follow_last: bool = True) -> str:
    """`rel` with the symlinks on its way resolved, relative to the real root; a `ScaffoldError` (exit 2) when it
    leads out of the tree. `follow_last=False` keeps the last component (deleting a link deletes the link)."""
    base = real_root(root)
    head, _, name = rel.rpartition("/")
    if follow_last:
        real = Path(os.path.realpath(base / rel))
    else:
        real = Path(os.path.realpath(base / head)) / name if head else base / name
    if real != base and base not in real.parents:
        raise ScaffoldError(rel, f"leads out of the tree through a symlink (to {real}); refusing to write through it")
    return real.relative_to(base).as_posix()


# -- applying --------------------------------------------------------------------------------------------------------


def plan_journal(root: Path, changes: Sequence[Any]) -> Journal:
    """The journal for `changes` (FileChange objects), checked before anything is written."""
    base = real_root(root)
    journal = Journal()
    probe = Path(os.path.abspath(root))
    missing_root = []
    while not probe.exists():
        missing_root.append(str(probe))
        probe = probe.parent
    journal.root_dirs = list(reversed(missing_root))
    seen: dict[str, str] = {}
    umask = _umask()
    for change in changes:
        real = resolve_inside(root, change.relpath, follow_last=change.new is not None)
        if real in seen:
            raise ScaffoldError(
                change.relpath, f"is the same file as {seen[real]} (a symlink); refusing to write both"
            )
        seen[real] = change.relpath
        target = base / real
        mode = 0o666 & ~umask
        if change.new is not None and change.old is not None:
            mode = os.stat(target).st_mode & 0o7777
        journal.entries.append(
            Entry(
                path=change.relpath,
                real=real,
                old=None if change.old is None else sha256_text(change.old),
                new=None if change.new is None else sha256_text(change.new),
                mode=mode,
            )
        )
        if change.new is not None:
            missing = []
            parent = target.parent
            while not parent.exists() and parent != base:
                missing.append(parent.relative_to(base).as_posix())
                parent = parent.parent
            for d in reversed(missing):
                if d not in journal.dirs:
                    journal.dirs.append(d)
    return journal


def apply_changes(root: Path, changes: Sequence[Any]) -> None:
    """Apply `changes` (FileChange objects; the caller checked that their `old` matches the disk) as one
    transaction. Raises `ScaffoldError` (exit 1) after a full rollback when a step fails; re-raises
    KeyboardInterrupt after a full rollback."""
    journal = plan_journal(root, changes)
    new_texts = {entry.real: change.new for entry, change in zip(journal.entries, changes, strict=True)}
    base = real_root(root)
    current = ""
    try:
        for d in journal.root_dirs:
            step(f"mkdir {d}")
            os.mkdir(d)
        _write_journal(base, journal)
        for d in journal.dirs:
            current = d
            step(f"mkdir {d}")
            os.mkdir(base / d)
        for entry in journal.entries:
            current = entry.path
            text = new_texts[entry.real]
            if text is not None:
                step(f"write {entry.tmp}")
                _write_file(base / entry.tmp, text, entry.mode)
        # (no directory fsync here: a temporary file's name never needs to survive a crash; its inode does, and
        # it is fsynced, then made durable under the target's name by the commit's directory fsync)
        for entry in journal.entries:
            current = entry.path
            if entry.old is not None:
                step(f"rename {entry.real} -> {entry.bak}")
                _replace(base / entry.real, base / entry.bak)
            if entry.new is not None:
                step(f"rename {entry.tmp} -> {entry.real}")
                _replace(base / entry.tmp, base / entry.real)
        _fsync_dirs(base, [entry.real for entry in journal.entries] + journal.dirs)  # and the new dirs' parents
        journal.state = "committed"
        _write_journal(base, journal)
    except BaseException as exc:
        with _sigint_held():
            _roll_back(base, journal)
        if not isinstance(exc, Exception):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ScaffoldError(current, f"could not write ({reason}); all changes were rolled back", FAILURE) from exc
    try:
        with _sigint_held():
            _roll_forward(base, journal)
    except OSError as exc:  # every change is in place; only backups or the journal are left
        raise ScaffoldError(
            JOURNAL_NAME,
            f"changes applied, but the clean-up failed ({exc.strerror}); the next run finishes it",
            FAILURE,
        ) from exc


def _write_journal(base: Path, journal: Journal) -> None:
    path = base / JOURNAL_NAME
    tmp = base / (JOURNAL_NAME + TMP_SUFFIX)
    step(f"write {tmp.name} ({journal.state})")
    _write_file(tmp, journal.to_json(), 0o644)
    step(f"rename {tmp.name} -> {path.name}")
    os.replace(tmp, path)
    _fsync_dir(base)


def _write_file(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fchmod(fh.fileno(), mode)
        os.fsync(fh.fileno())


def _replace(src: Path, dst: Path) -> None:
    # A module-level seam so tests can inject failures at the k-th rename.
    os.replace(src, dst)


# -- recovery --------------------------------------------------------------------------------------------------------


def pending(root: Path) -> Journal | None:
    """The journal an interrupted apply left in `root`, if any."""
    path = real_root(root) / JOURNAL_NAME
    if not path.parent.is_dir():  # no tree yet (`new --out DIR` creates it), or not a directory (reported later)
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ScaffoldError(JOURNAL_NAME, f"cannot read the journal of an interrupted run ({exc.strerror})") from None
    try:
        return Journal.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ScaffoldError(
            JOURNAL_NAME, f"unreadable journal of an interrupted run ({exc}); restore the tree by hand, then delete it"
        ) from None


def recover(root: Path) -> str | None:
    """Finish (committed) or roll back (anything earlier) an apply interrupted in `root`; return what was done, in
    one line, or None when there was nothing to do. The caller holds the tree lock."""
    base = real_root(root)
    if not base.is_dir():
        return None
    leftover = base / (JOURNAL_NAME + TMP_SUFFIX)
    journal = pending(root)
    if journal is None:
        if leftover.exists():  # killed while writing the first journal: nothing else was written yet
            step(f"unlink {leftover.name}")
            leftover.unlink()
            return "removed the journal of a run interrupted before it wrote anything"
        return None
    files = len(journal.entries)
    with _sigint_held():
        if journal.state == "committed":
            _roll_forward(base, journal)
            return f"finished an interrupted run that had written all its {files} file changes"
        _roll_back(base, journal)
    return f"rolled back an interrupted run ({files} file changes undone)"


def _roll_back(base: Path, journal: Journal) -> None:
    for entry in reversed(journal.entries):
        real, bak, tmp = base / entry.real, base / entry.bak, base / entry.tmp
        if os.path.lexists(bak):
            step(f"rename {entry.bak} -> {entry.real}")
            os.replace(bak, real)  # the original inode: byte-identical, same mode
        elif entry.old is None and os.path.lexists(real) and _sha256_file(real) == entry.new:
            step(f"unlink {entry.real}")
            real.unlink()  # created by the interrupted run
        if os.path.lexists(tmp):
            step(f"unlink {entry.tmp}")
            tmp.unlink()
    for d in reversed(journal.dirs):
        _rmdir_if_empty(base / d)
    _fsync_dirs(base, [entry.real for entry in journal.entries] + journal.dirs)
    _drop_journal(base)
    for d in reversed(journal.root_dirs):
        _rmdir_if_empty(Path(d))


def _roll_forward(base: Path, journal: Journal) -> None:
    for entry in journal.entries:
        for rel in (entry.bak, entry.tmp):
            if os.path.lexists(base / rel):
                step(f"unlink {rel}")
                (base / rel).unlink()
    # Directories emptied by deletions (a removed method package) go too, up to the tree root; bytecode caches
    # left in them by test runs do not keep them alive.
    for entry in journal.entries:
        if entry.new is not None:
            continue
        parent = (base / entry.real).parent
        while parent != base and base in parent.parents:
            if os.path.lexists(parent):  # (gone already when an earlier clean-up was killed half-way)
                _drop_bytecode_cache(parent)
                if not _rmdir_if_empty(parent):
                    break
            parent = parent.parent
    _fsync_dirs(base, [entry.real for entry in journal.entries])
    _drop_journal(base)


def _drop_journal(base: Path) -> None:
    for name in (JOURNAL_NAME + TMP_SUFFIX, JOURNAL_NAME):
        if os.path.lexists(base / name):
            step(f"unlink {name}")
            (base / name).unlink()
    _fsync_dir(base)


def _rmdir_if_empty(directory: Path) -> bool:
    try:
        if not directory.is_dir() or directory.is_symlink() or any(directory.iterdir()):
            return False
        step(f"rmdir {directory}")
        directory.rmdir()
        return True
    except OSError:
        return False


def _drop_bytecode_cache(directory: Path) -> None:
    """Remove `directory/__pycache__` if it is all that is left in `directory` and holds only .pyc files."""
    cache = directory / "__pycache__"
    try:
        if [p.name for p in directory.iterdir()] != ["__pycache__"]:
            return
        pycs = list(cache.iterdir())
        if all(p.is_file() and p.suffix == ".pyc" for p in pycs):
            for p in pycs:
                step(f"unlink {p}")
                p.unlink()
            step(f"rmdir {cache}")
            cache.rmdir()
    except OSError:
        pass


# -- helpers ---------------------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _fsync_dirs(base: Path, rels: Sequence[str]) -> None:
    parents = {(base / rel).parent for rel in rels}
    for directory in sorted(parents):
        _fsync_dir(directory)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold off SIGINT (a second Ctrl-C) while a rollback or cleanup runs; it is delivered afterwards."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask, or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- for doctor ------------------------------------------------------------------------------------------------------

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def leftover_files(root: Path) -> list[str]:
    """Temporary and backup files of this tool in the tree (relative paths, sorted)."""
    base = real_root(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            if name.endswith((TMP_SUFFIX, BAK_SUFFIX)):
                out.append((Path(dirpath) / name).relative_to(base).as_posix())
    return sorted(out)


def tree_problems(root: Path) -> list[str]:
    """What `doctor` reports about the tree as a whole: an interrupted (or running) apply, leftover temporary or
    backup files, and files that a peft-scaffold manifest lists as generated but that are missing. One line each."""
    from scaffold.lock import held_by_other

    problems = []
    try:
        journal = pending(root)
    except ScaffoldError as exc:
        problems.append(str(exc))
        journal = None
    if journal is not None:
        if held_by_other(root):
            problems.append(f"a peft-scaffold run is changing this tree right now ({JOURNAL_NAME})")
        else:
            outcome = "finishes" if journal.state == "committed" else "rolls back"
            problems.append(
                f"interrupted peft-scaffold run: {len(journal.entries)} file changes pending in {JOURNAL_NAME}; "
                f"the next `new` or `remove` on this tree {outcome} it"
            )
    problems += [f"{rel}: leftover temporary file of an interrupted run" for rel in leftover_files(root)]
    base = real_root(root)
    for manifest in sorted(base.glob("src/peft/tuners/*/.peft-scaffold*.json")):
        try:
            files = json.loads(manifest.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            continue  # unreadable manifests are reported by the method checks
        rel_manifest = manifest.relative_to(base).as_posix()
        for rel in sorted(files):
            if isinstance(rel, str) and not (base / rel).is_file():
                problems.append(f"{rel}: generated file missing (listed in {rel_manifest})")
    return problems
