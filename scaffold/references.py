"""Checks `remove` makes before it undoes a registration, for every kind (unless --force).

- `check_insertions_unedited`: the lines a registration inserted were edited since (or a user's own line sits
  among them): removing the registration and adding it again must give back each file as it is.
- `check_no_references`: the tree still uses one of the method's names (its `PeftType` member, its classes, its
  LoraConfig switch) outside the files being deleted, so removing it would leave the tree broken.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError


def check_insertions_unedited(changeset: ChangeSet, tree: Any, reg: Any, sites: Iterable[Any]) -> None:
    """Refuse (one line naming the file and line) when a site's inserted lines are not exactly as it inserts them."""
    for site in sites:
        rel = site.path(reg.name)
        before = changeset.read(rel)
        if before is None or site.skip_reason(tree, reg) is not None:
            continue
        after = site.remove(before, reg)
        if after == before:
            continue
        # As multisets of lines: re-adding may put the lines elsewhere (after a method registered later).
        again = (site.apply(after, reg) or "").splitlines()
        lines = before.splitlines()
        extra = Counter(lines) - Counter(again)
        if extra or Counter(again) - Counter(lines):
            line = next((n for n, text in enumerate(lines, 1) if text in extra), None)
            raise ScaffoldError(
                f"{rel}:{line or first_difference(before, chr(10).join(again))}",
                f"lines peft-scaffold inserted for {reg.name} were edited since; use --force to remove them anyway",
            )


def reference_names(reg: Any) -> list[str]:
    """The names user code could use of a generated method, whatever its kind."""
    # the PeftType member only as `PeftType.X`: a bare upper-case word (DEFAULT, AUTO...) is common in PEFT's own code
    member = getattr(reg, "peft_type", None)
    names = [f"PeftType.{member}" if member else None]
    names += [getattr(reg, attr, None) for attr in ("config_cls", "model_cls", "switch", "class_name")]
    names += list(getattr(reg, "exported", ()))
    names += [pair[1] for pair in getattr(reg, "mapping", ()) if len(pair) == 2]
    return [n for n in names if isinstance(n, str) and n]


def check_no_references(changeset: ChangeSet, reg: Any) -> None:
    """Refuse (one line naming the file and line) when the tree, as `changeset` leaves it, still uses the method."""
    found = find_references(changeset, reference_names(reg))
    if found is not None:
        rel, line, word = found
        raise ScaffoldError(f"{rel}:{line}", f"still uses {word} (of {reg.name}); use --force to remove it anyway")


def first_difference(a: str, b: str) -> int:
    """The 1-based line of `a` where `a` and `b` first differ."""
    for number, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False), start=1):
        if x != y:
            return number
    return min(len(a.splitlines()), len(b.splitlines())) + 1


_SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", "build", "dist"}


def find_references(changeset: ChangeSet, words: Iterable[str]) -> tuple[str, int, str] | None:
    """The first (relpath, line, word) where a Python file of the tree, as it will be after `changeset`, uses one
    of `words` (whole words); None if none does."""
    wanted = sorted({w for w in words if w}, key=len, reverse=True)
    if not wanted:
        return None
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in wanted) + r")\b")
    root = Path(changeset.root)
    # Pending texts by the file they will be written to (a symlinked registry file is edited through its link).
    pending = {os.path.realpath(root / c.relpath): c.new for c in changeset.changes}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            real = os.path.realpath(root / rel)
            if real in seen:
                continue
            seen.add(real)
            try:
                text = pending[real] if real in pending else changeset.read(rel)
            except Exception:  # unreadable (not UTF-8...): not ours to judge
                continue
            if text is None or not any(w in text for w in wanted):
                continue
            match = pattern.search(text)
            if match is not None:
                return rel, text.count("\n", 0, match.start()) + 1, match.group(0)
    return None
