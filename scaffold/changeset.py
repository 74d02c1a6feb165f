"""All edits to a tree, computed in memory first, then shown (diff / JSON) or applied atomically.

Files are read and written as UTF-8 text with `newline=""`, so line endings and every other byte survive a
round trip. Edits stack: `read` returns the pending content of a path, so several transforms can edit one file.

`apply` is all-or-nothing and crash-safe, under the tree lock (`scaffold.lock`) and a write-ahead journal
(`scaffold.journal`): new contents go to temporary files next to their targets first, each existing target is
moved aside to a backup before its replacement is renamed in, and on any failure (Ctrl-C included) every target
is put back (the original inode itself, so bytes and mode are identical), created files and the directories
created for them are removed, and a `ScaffoldError` is raised. A run killed half-way is rolled back (or, past
its commit point, finished) by the next one. After a successful apply, directories emptied by deletions are
removed (with a leftover `__pycache__` of .pyc files, which would otherwise keep them alive).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from scaffold.errors import ScaffoldError


Action = Literal["create", "modify", "delete"]


@dataclass(frozen=True)
class FileChange:
    relpath: str
    old: str | None  # None: the file does not exist before
    new: str | None  # None: the file is deleted

    @property
    def action(self) -> Action:
        if self.old is None:
            return "create"
        if self.new is None:
            return "delete"
        return "modify"


def read_text(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def read_view(root: Path | ChangeSet, relpath: str) -> str | None:
    """A file's text as a change set would see it (pending edits included), or as it is on disk under `root`."""
    if isinstance(root, ChangeSet):
        return root.read(relpath)
    path = Path(root) / relpath
    return read_text(path) if path.is_file() else None


class ChangeSet:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._pending: dict[str, str | None] = {}
        self._original: dict[str, str | None] = {}  # disk content when a path was first touched

    # -- building -------------------------------------------------------------------------------------------

    def write(self, relpath: str, content: str) -> None:
        """Create or replace `relpath` with `content` (the full new text)."""
        key = self._key(relpath)
        self._remember(key)
        self._pending[key] = content

    def delete(self, relpath: str) -> None:
        key = self._key(relpath)
        self._remember(key)
        self._pending[key] = None

    def read(self, relpath: str) -> str | None:
        """The current view of `relpath`: pending content if changed, else what is on disk, else None."""
        key = self._key(relpath)
        if key in self._pending:
            return self._pending[key]
        return self._read_disk(key)

    def exists(self, relpath: str) -> bool:
        return self.read(relpath) is not None

    # -- inspecting -----------------------------------------------------------------------------------------

    @property
    def changes(self) -> list[FileChange]:
        """Only real changes (new != old), sorted by path."""
        out = []
        for key in sorted(self._pending):
            old, new = self._original[key], self._pending[key]
            if old != new:
                out.append(FileChange(key, old, new))
        return out

    def is_empty(self) -> bool:
        return not self.changes

    def unified_diff(self, context: int = 3) -> str:
        """A plain unified diff (`a/` and `b/` paths, `/dev/null` for created or deleted files)."""
        return "".join(_file_diff(change, context) for change in self.changes)

    def render_diff(self, console: Any = None, file: IO[str] | None = None) -> None:
        """Print the diff: coloured with rich on a terminal, plain text when piped."""
        text = self.unified_diff()
        if console is None:
            from rich.console import Console

            console = Console(file=file or sys.stdout, highlight=False)
        if not console.is_terminal:
            console.file.write(text)
            return
        from rich.text import Text

        styles = {"+": "green", "-": "red", "@": "cyan"}
        for line in text.splitlines():
            bold = line.startswith(("+++", "---", "diff "))
            style = "bold" if bold else styles.get(line[:1], "")
            console.print(Text(line, style=style), soft_wrap=True)

    def to_json(self) -> list[dict[str, str]]:
        return [{"path": c.relpath, "action": c.action} for c in self.changes]

    # -- applying -------------------------------------------------------------------------------------------

    def apply(self) -> None:
        """Write every change, all or nothing, crash-safe (see `scaffold.journal`). Takes the tree lock (if the
        caller does not hold it already) and first recovers an apply that an earlier run left interrupted. Raises
        `ScaffoldError` (exit code 1) after a full rollback; KeyboardInterrupt too is re-raised after one."""
        from scaffold import journal
        from scaffold.lock import tree_lock

        with tree_lock(self.root):
            journal.recover(self.root)
            changes = self.changes
            for change in changes:  # refuse to clobber edits made since the plan was computed
                if self._read_disk(change.relpath) != change.old:
                    raise ScaffoldError(change.relpath, "changed on disk since the change set was computed; re-run")
            journal.apply_changes(self.root, changes)
        # Later edits are planned against the new disk state.
        for change in changes:
            self._original[change.relpath] = change.new

    # -- helpers --------------------------------------------------------------------------------------------

    def _key(self, relpath: str) -> str:
        pure = PurePosixPath(str(relpath).replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or str(pure) == ".":
            raise ScaffoldError(str(relpath), "change-set paths must be relative and stay inside the tree")
        return str(pure)

    def _remember(self, key: str) -> None:
        if key not in self._original:
            self._original[key] = self._read_disk(key)

    def _read_disk(self, key: str) -> str | None:
        path = self.root / key
        if not path.is_file():
            return None
        try:
            return read_text(path)
        except UnicodeDecodeError as exc:
            raise ScaffoldError(key, "is not UTF-8 text") from exc


def _lines(text: str) -> list[str]:
    # Like splitlines(keepends=True), but splitting only at \n, \r\n and \r (not at form feeds and such).
    return re.findall(r".*?(?:\r\n|\r|\n)|.+\Z", text, flags=re.S)


def _file_diff(change: FileChange, context: int) -> str:
    old_lines = _lines(change.old or "")
    new_lines = _lines(change.new or "")
    fromfile = "/dev/null" if change.old is None else f"a/{change.relpath}"
    tofile = "/dev/null" if change.new is None else f"b/{change.relpath}"
    out = []
    for line in difflib.unified_diff(old_lines, new_lines, fromfile, tofile, n=context):
        if line.endswith(("\n", "\r")):
            out.append(line)
        else:  # last line of a file without a trailing newline
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)
