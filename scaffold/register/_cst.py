"""libcst building blocks shared by the site transforms.

The edits are made on the concrete syntax tree, so everything not touched keeps its exact bytes. Comments and
blank lines in libcst live in the whitespace *between* elements (a comma's `whitespace_after`, a bracket's
whitespace, a statement's `leading_lines`); inserting an element splits such a gap so that the previous line keeps
its trailing comment and the comment lines stay above the element they were above. Removing an element merges the
two gaps around it again, which makes `remove(apply(x)) == x` byte for byte.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import libcst as cst

from scaffold.errors import ScaffoldError


LINE_LENGTH = 119  # PEFT's ruff line-length

# ---------------------------------------------------------------------------------------------------------------
# parsing


@lru_cache(maxsize=16)
def parse(source: str, relpath: str) -> cst.Module:
    """Parse a module. Cached: libcst trees are immutable, and a site is checked, applied and re-checked on the
    same text (test_custom_models.py takes a second to parse)."""
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise ScaffoldError(relpath, f"is not valid Python (line {exc.raw_line}: {exc.message})") from exc


# ---------------------------------------------------------------------------------------------------------------
# sort orders PEFT's linters enforce


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _member_type(name: str) -> int:
    """ruff's isort `order-by-type`: CONSTANTS, then Classes, then everything else."""
    if len(name) > 1 and name.isupper():
        return 0
    return 1 if name[:1].isupper() else 2


def import_name_key(name: str) -> tuple[Any, ...]:
    """Order of names inside `from x import (...)` (ruff isort: by type, then case-insensitive natural)."""
    return (_member_type(name), _natural(name.lower()))


def module_key(name: str) -> tuple[Any, ...]:
    """Order of `from .<module> import ...` statements (ruff isort: case-insensitive natural)."""
    return _natural(name.lower())


def dunder_all_key(name: str) -> tuple[Any, ...]:
    """Order of `__all__` entries (ruff RUF022, isort-style: by type, then case-sensitive natural)."""
    return (_member_type(name), _natural(name))


def plain_key(name: str) -> tuple[Any, ...]:
    return _natural(name.lower())


def insertion_index(existing: Sequence[str], new: str, key: Callable[[str], Any]) -> int:
    """Where `new` goes: its sorted place when the list is sorted by `key`, else the end (PEFT appends there)."""
    keys = [key(item) for item in existing]
    if all(a <= b for a, b in zip(keys, keys[1:])):
        return bisect_right(keys, key(new))
    return len(existing)


# ---------------------------------------------------------------------------------------------------------------
# bracketed sequences: lists, tuples, dicts, `from x import (a, b)`

Container = cst.List | cst.Tuple | cst.Dict | cst.ImportFrom
ContainerT = TypeVar("ContainerT", bound=cst.List | cst.Tuple | cst.Dict | cst.ImportFrom)


def _items(node: Container) -> list[Any]:
    if isinstance(node, cst.ImportFrom):
        if isinstance(node.names, cst.ImportStar):
            raise ValueError("star import")
        return list(node.names)
    return list(node.elements)


def _outer_ws(node: Container) -> tuple[Any, Any]:
    """(whitespace after the opening bracket, whitespace before the closing one); None when there are none."""
    if isinstance(node, cst.List):
        return node.lbracket.whitespace_after, node.rbracket.whitespace_before
    if isinstance(node, cst.Dict):
        return node.lbrace.whitespace_after, node.rbrace.whitespace_before
    if isinstance(node, cst.Tuple):
        if not node.lpar:
            return None, None
        return node.lpar[0].whitespace_after, node.rpar[-1].whitespace_before
    if node.lpar is None or node.rpar is None:
        return None, None
    return node.lpar.whitespace_after, node.rpar.whitespace_before


def _rebuild(node: ContainerT, items: list[Any], open_ws: Any, close_ws: Any) -> ContainerT:
    if isinstance(node, cst.List):
        return node.with_changes(  # type: ignore[return-value]
            elements=items,
            lbracket=node.lbracket.with_changes(whitespace_after=open_ws),
            rbracket=node.rbracket.with_changes(whitespace_before=close_ws),
        )
    if isinstance(node, cst.Dict):
        return node.with_changes(  # type: ignore[return-value]
            elements=items,
            lbrace=node.lbrace.with_changes(whitespace_after=open_ws),
            rbrace=node.rbrace.with_changes(whitespace_before=close_ws),
        )
    if isinstance(node, cst.Tuple):
        if not node.lpar:
            return node.with_changes(elements=items)  # type: ignore[return-value]
        lpar = [node.lpar[0].with_changes(whitespace_after=open_ws), *node.lpar[1:]]
        rpar = [*node.rpar[:-1], node.rpar[-1].with_changes(whitespace_before=close_ws)]
        return node.with_changes(elements=items, lpar=lpar, rpar=rpar)  # type: ignore[return-value]
    if node.lpar is None or node.rpar is None:
        return node.with_changes(names=items)  # type: ignore[return-value]
    return node.with_changes(  # type: ignore[return-value]
        names=items,
        lpar=node.lpar.with_changes(whitespace_after=open_ws),
        rpar=node.rpar.with_changes(whitespace_before=close_ws),
    )


def _is_multiline(ws: Any) -> bool:
    return isinstance(ws, cst.ParenthesizedWhitespace)


def _split_gap(
    gap: cst.ParenthesizedWhitespace, indent: cst.SimpleWhitespace, comments: Sequence[cst.EmptyLine] = ()
) -> tuple[cst.ParenthesizedWhitespace, cst.ParenthesizedWhitespace]:
    """Split the line break before an element into (before the new element, after it).

    The first part keeps the previous line's trailing comment and gets `comments` (a banner for the new element);
    the second keeps the comment lines, which describe the element that follows.
    """
    before = cst.ParenthesizedWhitespace(
        first_line=gap.first_line, empty_lines=list(comments), indent=gap.indent, last_line=indent
    )
    after = cst.ParenthesizedWhitespace(
        first_line=cst.TrailingWhitespace(), empty_lines=gap.empty_lines, indent=gap.indent, last_line=gap.last_line
    )
    return before, after


def _merge_gaps(
    before: cst.ParenthesizedWhitespace, after: cst.ParenthesizedWhitespace, drop_comments: int
) -> cst.ParenthesizedWhitespace:
    kept = list(before.empty_lines)[: len(before.empty_lines) - drop_comments]
    return cst.ParenthesizedWhitespace(
        first_line=before.first_line,
        empty_lines=[*kept, *after.empty_lines],
        indent=after.indent,
        last_line=after.last_line,
    )


def _comma_gap(item: Any) -> cst.ParenthesizedWhitespace | None:
    comma = item.comma
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        return comma.whitespace_after
    return None


def element_indent(node: Container) -> str:
    open_ws, _ = _outer_ws(node)
    return open_ws.last_line.value if _is_multiline(open_ws) else ""


def comment_lines(node: Container, texts: Sequence[str]) -> list[cst.EmptyLine]:
    """Own-line comments indented like the elements of `node`."""
    indent = cst.SimpleWhitespace(element_indent(node))
    return [cst.EmptyLine(indent=True, whitespace=indent, comment=cst.Comment(t)) for t in texts]


def lines_before(node: Container, index: int) -> list[cst.EmptyLine]:
    """The own-line comments and blank lines directly above element `index`."""
    items = _items(node)
    if index == 0:
        gap, _ = _outer_ws(node)
    else:
        gap = _comma_gap(items[index - 1])
    return list(gap.empty_lines) if _is_multiline(gap) else []


def insert_item(node: ContainerT, index: int, item: Any, comments: Sequence[cst.EmptyLine] = ()) -> ContainerT:
    """Insert `item` (an Element or ImportAlias without comma) at `index`, in the layout of its neighbours."""
    items = _items(node)
    open_ws, close_ws = _outer_ws(node)
    if not items:
        return _rebuild(node, [item], open_ws, close_ws)
    space = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    if not _is_multiline(open_ws):  # one line: `a, b`
        if index == len(items):
            item = item.with_changes(comma=items[-1].comma)
            items[-1] = items[-1].with_changes(comma=space)
        else:
            item = item.with_changes(comma=space)
        items.insert(index, item)
        return _rebuild(node, items, open_ws, close_ws)

    indent = open_ws.last_line
    if index == 0:
        open_ws, after = _split_gap(open_ws, indent, comments)
        item = item.with_changes(comma=cst.Comma(whitespace_after=after))
    else:
        prev = items[index - 1]
        gap = _comma_gap(prev)
        if gap is not None:  # the line break is in prev's comma
            before, after = _split_gap(gap, indent, comments)
            items[index - 1] = prev.with_changes(comma=prev.comma.with_changes(whitespace_after=before))
            item = item.with_changes(comma=cst.Comma(whitespace_after=after))
        elif index == len(items) and _is_multiline(close_ws):  # last element; the break is before `]`
            before, close_ws = _split_gap(close_ws, indent, comments)
            old_comma = prev.comma
            new_comma = old_comma.with_changes(whitespace_after=before) if isinstance(old_comma, cst.Comma) else None
            items[index - 1] = prev.with_changes(comma=new_comma or cst.Comma(whitespace_after=before))
            item = item.with_changes(comma=old_comma)
        else:  # several elements on one line inside a multi-line container
            item = item.with_changes(comma=space)
    items.insert(index, item)
    return _rebuild(node, items, open_ws, close_ws)


def remove_item(node: ContainerT, index: int, drop_comments: int = 0) -> ContainerT:
    """Remove element `index`, and the last `drop_comments` comment lines above it (its banner)."""
    items = _items(node)
    if len(items) < 2:
        raise ValueError("refusing to empty a sequence")
    open_ws, close_ws = _outer_ws(node)
    target = items[index]
    last = index == len(items) - 1
    if not _is_multiline(open_ws):
        if last:
            items[index - 1] = items[index - 1].with_changes(comma=target.comma)
        del items[index]
        return _rebuild(node, items, open_ws, close_ws)

    gap_before = open_ws if index == 0 else _comma_gap(items[index - 1])
    gap_after = _comma_gap(target)
    if gap_after is None and last and _is_multiline(close_ws):
        # the break is before `]`: prev takes over the removed element's (trailing) comma
        assert gap_before is not None
        close_ws = _merge_gaps(gap_before, close_ws, drop_comments)
        items[index - 1] = items[index - 1].with_changes(comma=target.comma)
    elif gap_before is not None and gap_after is not None:
        merged = _merge_gaps(gap_before, gap_after, drop_comments)
        if index == 0:
            open_ws = merged
        else:
            prev = items[index - 1]
            items[index - 1] = prev.with_changes(comma=prev.comma.with_changes(whitespace_after=merged))
    elif last:
        items[index - 1] = items[index - 1].with_changes(comma=target.comma)
    del items[index]
    return _rebuild(node, items, open_ws, close_ws)


# ---------------------------------------------------------------------------------------------------------------
# module-level statements


def assigned_name(stmt: cst.CSTNode) -> str | None:
    """`NAME` for a top-level `NAME = ...` / `NAME: T = ...` statement, else None."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    small = stmt.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name):
        return small.targets[0].target.value
    if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
        return small.target.value
    return None


def assigned_value(stmt: cst.CSTNode) -> cst.BaseExpression | None:
    if assigned_name(stmt) is None:
        return None
    small = stmt.body[0]  # type: ignore[attr-defined]
    return small.value  # type: ignore[no-any-return]


def find_assignment(body: Sequence[cst.CSTNode], name: str) -> int | None:
    for i, stmt in enumerate(body):
        if assigned_name(stmt) == name:
            return i
    return None


def insert_statement(body: list[Any], index: int, stmt: cst.CSTNode, displace: bool = False) -> None:
    """Insert `stmt` at `index`. With `displace` (inserting above the first statement of a group), the new
    statement takes over the comment lines above the statement it pushes down, which stay the group's heading."""
    if displace and index < len(body):
        nxt = body[index]
        stmt = stmt.with_changes(leading_lines=nxt.leading_lines)  # type: ignore[attr-defined]
        body[index] = nxt.with_changes(leading_lines=[])
    body.insert(index, stmt)


def remove_statement(body: list[Any], index: int, transfer_leading: bool) -> None:
    """Remove `body[index]`. With `transfer_leading` (the inverse of `insert_statement(displace=True)`), the lines
    above it move to the statement that follows; otherwise they go with it."""
    stmt = body.pop(index)
    lines = list(getattr(stmt, "leading_lines", ()))
    if transfer_leading and lines and index < len(body):
        nxt = body[index]
        body[index] = nxt.with_changes(leading_lines=[*lines, *nxt.leading_lines])  # type: ignore[attr-defined]


def blank_line() -> cst.EmptyLine:
    return cst.EmptyLine()


# ---------------------------------------------------------------------------------------------------------------
# imports


def relative_module(node: cst.ImportFrom) -> tuple[int, str]:
    """(number of leading dots, dotted module name) of a `from ... import` statement."""
    module = ""
    if node.module is not None:
        module = cst.Module([]).code_for_node(node.module)
    return len(node.relative), module


def import_names(node: cst.ImportFrom) -> list[str]:
    if isinstance(node.names, cst.ImportStar):
        return []
    return [alias.evaluated_alias or alias.evaluated_name for alias in node.names]


def find_import_from(body: Sequence[cst.CSTNode], level: int, module: str) -> tuple[int, cst.ImportFrom] | None:
    """The first top-level `from <level dots><module> import ...` statement."""
    for i, stmt in enumerate(body):
        node = single_import_from(stmt)
        if node is not None and relative_module(node) == (level, module):
            return i, node
    return None


def single_import_from(stmt: cst.CSTNode) -> cst.ImportFrom | None:
    """The `from x import ...` of a statement line that holds only that."""
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.ImportFrom):
        return stmt.body[0]
    return None


def import_from_line(level: int, module: str, names: Sequence[str]) -> cst.SimpleStatementLine:
    """`from .module import A, B`, parenthesised one name per line when too long (as ruff formats it)."""
    head = f"from {'.' * level}{module} import "
    flat = head + ", ".join(names)
    if len(flat) <= LINE_LENGTH:
        code = flat + "\n"
    else:
        code = head + "(\n" + "".join(f"    {n},\n" for n in names) + ")\n"
    return cst.parse_statement(code)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# python literals, formatted the way ruff formats them


@dataclass(frozen=True)
class Code:
    """Source text inserted verbatim into a literal (a class name, say)."""

    text: str


def _string(value: str) -> str:
    text = repr(value)
    if text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1].replace("\\'", "'") + '"'
    return text


def flat_literal(value: Any) -> str:
    if isinstance(value, Code):
        return value.text
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{flat_literal(k)}: {flat_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flat_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(flat_literal(v) for v in value)
        return "(" + inner + ("," if len(value) == 1 else "") + ")"
    raise TypeError(f"cannot write {type(value).__name__} values into PEFT source: {value!r}")


def format_literal(
    value: Any, indent: int, trailer: str = "", explode: bool = False, column: int | None = None
) -> str:
    """`value` as source, wrapped like ruff: it starts at `column` (default: `indent`) of a line indented by
    `indent`, and is followed by `trailer` (e.g. ",").

    A collection that does not fit on its line is split one element per line with a trailing comma, recursively.
    `explode` forces that split for the outermost collection (ruff keeps it thanks to the trailing comma).
    """
    flat = flat_literal(value)
    start = indent if column is None else column
    if not _is_collection(value) or not value or (not explode and start + len(flat) + len(trailer) <= LINE_LENGTH):
        return flat + trailer
    inner = indent + 4
    pad = " " * inner
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            key = flat_literal(k) + ": "
            rows.append(pad + key + format_literal(v, inner, ",", column=inner + len(key)))
        opening, closing = "{", "}"
    else:
        rows = [pad + format_literal(v, inner, ",") for v in value]
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
    return opening + "\n" + "\n".join(rows) + "\n" + " " * indent + closing + trailer


def _is_collection(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple))


def element(code: str) -> cst.Element:
    """A list/tuple element parsed from source text (multi-line text keeps its indentation)."""
    return cst.Element(value=cst.parse_expression(code))


def string_values(node: cst.BaseExpression) -> list[str]:
    """The string elements of a list/tuple literal of strings (other elements are skipped)."""
    out = []
    if isinstance(node, (cst.List, cst.Tuple)):
        for el in node.elements:
            if isinstance(el.value, cst.SimpleString):
                value = el.value.evaluated_value
                if isinstance(value, str):
                    out.append(value)
    return out
