"""Find one top-level statement of a module without parsing the whole module.

Most registry edits change one statement (`__all__`, a `from x import (...)`, a `TEST_CASES` list). libcst needs a
second to parse the 8000 lines of tests/test_custom_models.py, and more to print them again; an edit confined to one
statement only needs that statement's lines. `statement_lines` finds them: a regular expression proposes the first
line; `ast` (C-fast) checks that the lines above it are complete statements, so that a look-alike line inside a
string or a bracket is never taken for it, and finds where the statement ends. Anything unusual (two statements on a
line, a first match that is not the statement) returns None, and the caller parses the whole module instead.
"""

from __future__ import annotations

import ast
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple


class Scope(ABC):
    """A top-level statement an edit is confined to."""

    @abstractmethod
    def first_line(self) -> re.Pattern[str]:
        """Matches the first line of the statement (and possibly of look-alikes, which `ast` then rules out)."""

    @abstractmethod
    def matches(self, node: ast.stmt) -> bool:
        """Whether `node` is the statement (the same test as the edit's own search in the libcst tree)."""


@dataclass(frozen=True)
class Assignment(Scope):
    """`NAME = ...` or `NAME: T = ...`, a single target."""

    name: str

    def first_line(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.name)}\s*(:[^=\n]*)?=(?!=)")

    def matches(self, node: ast.stmt) -> bool:
        targets = assigned_targets(node)
        return len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id == self.name


def assigned_targets(node: ast.stmt) -> list[ast.expr]:
    """The targets of an assignment statement (`a = b = 1`, `a: int = 1`); none for other statements."""
    if isinstance(node, ast.Assign):
        return list(node.targets)
    return [node.target] if isinstance(node, ast.AnnAssign) else []


@dataclass(frozen=True)
class ImportFrom(Scope):
    """`from <level dots><module> import ...`."""

    level: int
    module: str

    def first_line(self) -> re.Pattern[str]:
        return re.compile(rf"from\s+{re.escape('.' * self.level + self.module)}\s+import\b")

    def matches(self, node: ast.stmt) -> bool:
        return isinstance(node, ast.ImportFrom) and node.level == self.level and (node.module or "") == self.module


# A later line that can start a new top-level statement: not indented, not blank, not a comment, not a closing bracket.
_STATEMENT_START = re.compile(r"[^\s#)\]}]")
# Past this many attempts at finding the statement's end, parsing the whole module is as cheap.
_MAX_ATTEMPTS = 20


def surely_absent(source: str, scope: Scope) -> bool:
    """True when no line could start the statement: a top-level statement on a line of its own starts at column 0."""
    pattern = scope.first_line()
    return not any(pattern.match(line) for line in source.splitlines())


class Located(NamedTuple):
    before: str
    text: str  # the statement's lines, from the start of its first line to the end of its last (trailing comment too)
    after: str
    node: ast.stmt  # its `ast`, positions counted from the start of `text`


def statement_lines(source: str, scope: Scope) -> Located | None:
    """The first top-level statement `scope` matches, and the text around it. None when there is no such statement
    or it shares a line with another statement."""
    lines = source.splitlines(keepends=True)
    pattern = scope.first_line()
    start = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    if start is None:
        return None
    try:
        # Everything above is complete statements, so the matched line starts one (it is not inside a string,
        # a bracket or a backslash continuation; at column 0 it is not inside a block either).
        ast.parse("".join(lines[:start]))
    except SyntaxError:
        return None
    # The statement ends before the first later line that can start a statement: the first such cut that parses.
    ends = (i for i in range(start + 1, len(lines) + 1) if i == len(lines) or _STATEMENT_START.match(lines[i]))
    for _, end in zip(range(_MAX_ATTEMPTS), ends):
        try:
            module = ast.parse("".join(lines[start:end]))
        except SyntaxError:
            continue
        if len(module.body) != 1 or not scope.matches(module.body[0]):
            return None  # e.g. `NAME = 1; other()`, or `NAME = a = 1`
        node = module.body[0]
        stop = start + (node.end_lineno or 1)
        return Located("".join(lines[:start]), "".join(lines[start:stop]), "".join(lines[stop:]), node)
    return None
