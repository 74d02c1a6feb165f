"""Small libcst transforms, each one edit of one kind, each with its inverse. The sites compose them.

Every edit leaves the module unchanged when its edit is already there (adding) or already gone (removing),
so running a site twice changes nothing.

The edits have the shape of libcst codemods (a context in, `transform_module(tree) -> tree` out) but do not use the
codemod framework: importing `libcst.codemod` pulls in `libcst.matchers`, 450 generated dataclasses that take longer
to import (0.35 s) than all of `new`'s registration work, and these edits need neither metadata nor matcher
decorators. An edit confined to one top-level statement says so (`scope`), and `run` then parses only that
statement (see `locate`).
"""

from __future__ import annotations

import ast
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import libcst as cst

from scaffold.errors import ScaffoldError
from scaffold.register import _cst
from scaffold.register.locate import Assignment, ImportFrom, Located, Scope, statement_lines, surely_absent


@dataclass(frozen=True)
class EditContext:
    """The part of libcst's `CodemodContext` these edits use: the file they edit, for error messages."""

    filename: str


class Edit(ABC):
    """One edit of a module. Subclasses implement `transform_module_impl`; those that read only part of the module
    set `scope` (one statement) or override `transform_source`."""

    # The top-level statement the edit reads and changes, when it is confined to one (None: the whole module).
    scope: Scope | None = None

    def __init__(self, context: EditContext) -> None:
        self.context = context

    def transform_module(self, tree: cst.Module) -> cst.Module:
        return self.transform_module_impl(tree)

    def transform_statement(self, found: Located, relpath: str) -> str:
        """The edit applied to the source of its statement (`scope`) alone."""
        return self.transform_module(_cst.parse(found.text, relpath)).code

    def transform_source(self, source: str, relpath: str) -> str | None:
        """The edit applied to the text, parsing only the part of it the edit reads; None when that part cannot be
        found cheaply (`run` then hands the edit the whole module)."""
        if self.scope is None:
            return None
        found = statement_lines(source, self.scope)
        if found is None:
            return None
        return found.before + self.transform_statement(found, relpath) + found.after

    @property
    def reads_part(self) -> bool:
        """Whether `transform_source` may avoid parsing the whole module."""
        return self.scope is not None or type(self).transform_source is not Edit.transform_source

    @abstractmethod
    def transform_module_impl(self, tree: cst.Module) -> cst.Module: ...

    def fail(self, expected: str) -> ScaffoldError:
        return ScaffoldError(self.context.filename, f"expected {expected}")


def run(source: str, relpath: str, *edits: Callable[[EditContext], Edit]) -> str:
    """Apply the edits in order to `source`, return the new code (identical text if nothing changed).

    An edit that reads only part of the module gets the text; a run of edits that need the whole module shares one
    libcst parse of it.
    """
    made = [make(EditContext(filename=relpath)) for make in edits]
    text, i = source, 0
    while i < len(made):
        if made[i].reads_part and (new := made[i].transform_source(text, relpath)) is not None:
            text, i = new, i + 1
            continue
        tree = _cst.parse(text, relpath)
        tree, i = made[i].transform_module(tree), i + 1
        while i < len(made) and not made[i].reads_part:
            tree, i = made[i].transform_module(tree), i + 1
        text = tree.code
    return text


def parse_statement_of(source: str, relpath: str, scope: Scope) -> cst.Module:
    """A module of just the statement `scope` matches (the whole module if it cannot be found cheaply), for reading
    that statement with the same helpers the edits use (an empty module when it is surely not there)."""
    if surely_absent(source, scope):
        return cst.Module(body=[])
    found = statement_lines(source, scope)
    return _cst.parse(found.text if found else source, relpath)


# -- __all__ -----------------------------------------------------------------------------------------------------


def _dunder_all(body: Sequence[cst.CSTNode]) -> tuple[int, cst.List | cst.Tuple] | None:
    index = _cst.find_assignment(body, "__all__")
    if index is None:
        return None
    value = _cst.assigned_value(body[index])
    if not isinstance(value, (cst.List, cst.Tuple)):
        return None
    return index, value


def _replace_value(stmt: cst.CSTNode, value: cst.BaseExpression) -> cst.CSTNode:
    small = stmt.body[0]  # type: ignore[attr-defined]
    return stmt.with_changes(body=[small.with_changes(value=value)])


class AddToDunderAll(Edit):
    """Add names to the top-level `__all__` list, in its order (ruff RUF022) or at the end if it is unsorted."""

    def __init__(self, context: EditContext, names: Sequence[str]) -> None:
        super().__init__(context)
        self.scope = Assignment("__all__")
        self.names = names

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _dunder_all(tree.body)
        if found is None:
            raise self.fail("a top-level `__all__ = [...]` list of strings")
        index, value = found
        for name in self.names:
            existing = _cst.string_values(value)
            if name in existing:
                continue
            at = _cst.insertion_index(existing, name, _cst.dunder_all_key)
            value = _cst.insert_item(value, at, _cst.element(f'"{name}"'))
        body: list[Any] = list(tree.body)
        body[index] = _replace_value(body[index], value)
        return tree.with_changes(body=body)


class RemoveFromDunderAll(Edit):
    def __init__(self, context: EditContext, names: Sequence[str]) -> None:
        super().__init__(context)
        self.scope = Assignment("__all__")
        self.names = names

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _dunder_all(tree.body)
        if found is None:
            return tree
        index, value = found
        for name in self.names:
            existing = _cst.string_values(value)
            positions = [i for i, el in enumerate(value.elements) if _string_of(el) == name]
            if positions and len(existing) > 1:
                value = _cst.remove_item(value, positions[0])
        body: list[Any] = list(tree.body)
        body[index] = _replace_value(body[index], value)
        return tree.with_changes(body=body)


def _string_of(el: cst.BaseElement) -> str | None:
    if isinstance(el.value, cst.SimpleString):
        value = el.value.evaluated_value
        return value if isinstance(value, str) else None
    return None


def dunder_all_names(tree: cst.Module) -> list[str]:
    found = _dunder_all(tree.body)
    return _cst.string_values(found[1]) if found else []


# -- names in an existing `from X import (...)` ------------------------------------------------------------------


class AddImportedNames(Edit):
    """Add names to an existing `from <module> import (...)` statement, in ruff's isort order."""

    def __init__(self, context: EditContext, level: int, module: str, names: Sequence[str]) -> None:
        super().__init__(context)
        self.scope = ImportFrom(level, module)
        self.level, self.module_name, self.names = level, module, names

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _cst.find_import_from(tree.body, self.level, self.module_name)
        if found is None or isinstance(found[1].names, cst.ImportStar):
            raise self.fail(f"a top-level `from {'.' * self.level}{self.module_name} import (...)`")
        index, node = found
        for name in self.names:
            existing = _cst.import_names(node)
            if name in existing:
                continue
            at = _cst.insertion_index(existing, name, _cst.import_name_key)
            node = _cst.insert_item(node, at, cst.ImportAlias(name=cst.Name(name)))
        body: list[Any] = list(tree.body)
        body[index] = body[index].with_changes(body=[node])  # type: ignore[attr-defined]
        return tree.with_changes(body=body)


class RemoveImportedNames(Edit):
    def __init__(self, context: EditContext, level: int, module: str, names: Sequence[str]) -> None:
        super().__init__(context)
        self.scope = ImportFrom(level, module)
        self.level, self.module_name, self.names = level, module, names

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _cst.find_import_from(tree.body, self.level, self.module_name)
        if found is None:
            return tree
        index, node = found
        for name in self.names:
            existing = _cst.import_names(node)
            if name in existing and len(existing) > 1:
                node = _cst.remove_item(node, existing.index(name))
        body: list[Any] = list(tree.body)
        body[index] = body[index].with_changes(body=[node])  # type: ignore[attr-defined]
        return tree.with_changes(body=body)


def imported_names(tree: cst.Module, level: int, module: str) -> list[str]:
    found = _cst.find_import_from(tree.body, level, module)
    return _cst.import_names(found[1]) if found else []


# -- a whole `from .<package> import A, B` statement ---------------------------------------------------------------


def _sibling_imports(body: Sequence[cst.CSTNode]) -> list[tuple[int, str]]:
    """(index, module) of the top-level `from .<single name> import ...` statements."""
    out = []
    for i, stmt in enumerate(body):
        if (node := _cst.single_import_from(stmt)) is not None:
            level, module = _cst.relative_module(node)
            if level == 1 and module and "." not in module:
                out.append((i, module))
    return out


class AddPackageImport(Edit):
    """Add `from .<package> import A, B` among the other `from .<x> import` lines, sorted by module like isort."""

    def __init__(self, context: EditContext, package: str, names: Sequence[str]) -> None:
        super().__init__(context)
        self.package = package
        self.names = sorted(names, key=_cst.import_name_key)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        if _cst.find_import_from(tree.body, 1, self.package) is not None:
            return AddImportedNames(self.context, 1, self.package, self.names).transform_module_impl(tree)
        siblings = _sibling_imports(tree.body)
        if not siblings:
            raise self.fail("`from .<package> import ...` lines for the tuner packages")
        modules = [mod for _, mod in siblings]
        at = _cst.insertion_index(modules, self.package, _cst.module_key)
        body: list[Any] = list(tree.body)
        stmt = _cst.import_from_line(1, self.package, self.names)
        if at == 0:
            _cst.insert_statement(body, siblings[0][0], stmt, displace=True)
        else:
            _cst.insert_statement(body, siblings[at - 1][0] + 1, stmt)
        return tree.with_changes(body=body)


class RemovePackageImport(Edit):
    def __init__(self, context: EditContext, package: str) -> None:
        super().__init__(context)
        self.package = package

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _cst.find_import_from(tree.body, 1, self.package)
        if found is None:
            return tree
        index = found[0]
        siblings = [i for i, _ in _sibling_imports(tree.body)]
        body: list[Any] = list(tree.body)
        # The first import of the group was inserted with `displace`: give its heading back.
        _cst.remove_statement(body, index, transfer_leading=index == siblings[0])
        return tree.with_changes(body=body)


# -- enum members ----------------------------------------------------------------------------------------------------


def find_class(tree: cst.Module, name: str) -> tuple[int, cst.ClassDef] | None:
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, cst.ClassDef) and stmt.name.value == name:
            return i, stmt
    return None


def enum_members(cls: cst.ClassDef) -> list[tuple[int, str, str | None]]:
    """(body index, member name, string value) of `NAME = "value"` statements in a class body."""
    out = []
    body = cls.body.body if isinstance(cls.body, cst.IndentedBlock) else ()
    for i, stmt in enumerate(body):
        name = _cst.assigned_name(stmt)
        value = _cst.assigned_value(stmt)
        if name is not None:
            text = value.evaluated_value if isinstance(value, cst.SimpleString) else None
            out.append((i, name, text if isinstance(text, str) else None))
    return out


class AddEnumMember(Edit):
    """Add `MEMBER = "MEMBER"` to a `class X(str, enum.Enum)` (at the end: PEFT's enums are in insertion order)."""

    def __init__(self, context: EditContext, class_name: str, member: str) -> None:
        super().__init__(context)
        self.class_name, self.member = class_name, member

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = find_class(tree, self.class_name)
        members = enum_members(found[1]) if found else []
        if found is None or not members or any(v is None for _, _, v in members):
            raise self.fail(f"`class {self.class_name}(...)` with string members")
        index, cls = found
        if any(name == self.member for _, name, _ in members):
            return tree
        body = list(cls.body.body)
        names = [name for _, name, _ in members]
        at = _cst.insertion_index(names, self.member, _cst.plain_key)
        position = members[at][0] if at < len(members) else members[-1][0] + 1
        _cst.insert_statement(body, position, cst.parse_statement(f'{self.member} = "{self.member}"\n'))
        new_cls = cls.with_changes(body=cls.body.with_changes(body=body))
        return tree.with_changes(body=[*tree.body[:index], new_cls, *tree.body[index + 1 :]])


class RemoveEnumMember(Edit):
    def __init__(self, context: EditContext, class_name: str, member: str) -> None:
        super().__init__(context)
        self.class_name, self.member = class_name, member

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = find_class(tree, self.class_name)
        if found is None:
            return tree
        index, cls = found
        positions = [i for i, name, _ in enum_members(cls) if name == self.member]
        if not positions:
            return tree
        body = list(cls.body.body)
        _cst.remove_statement(body, positions[0], transfer_leading=True)
        new_cls = cls.with_changes(body=cls.body.with_changes(body=body))
        return tree.with_changes(body=[*tree.body[:index], new_cls, *tree.body[index + 1 :]])


# -- a "- ITEM" line in a class docstring ---------------------------------------------------------------------------


def _docstring(cls: cst.ClassDef) -> tuple[int, cst.SimpleString] | None:
    body = cls.body.body if isinstance(cls.body, cst.IndentedBlock) else ()
    first = body[0] if body else None
    if isinstance(first, cst.SimpleStatementLine) and len(first.body) == 1 and isinstance(first.body[0], cst.Expr):
        value = first.body[0].value
        if isinstance(value, cst.SimpleString):
            return 0, value
    return None


def _with_docstring(tree: cst.Module, index: int, cls: cst.ClassDef, doc: cst.SimpleString) -> cst.Module:
    body = list(cls.body.body)
    first = body[0]
    body[0] = first.with_changes(body=[first.body[0].with_changes(value=doc)])  # type: ignore[attr-defined]
    new_cls = cls.with_changes(body=cls.body.with_changes(body=body))
    return tree.with_changes(body=[*tree.body[:index], new_cls, *tree.body[index + 1 :]])


def docstring_items(cls: cst.ClassDef) -> list[str]:
    found = _docstring(cls)
    if found is None:
        return []
    return [line.strip()[2:].strip() for line in found[1].value.splitlines() if line.strip().startswith("- ")]


class AddDocstringItem(Edit):
    """Append `- ITEM` after the last `- X` line of the class docstring (PEFT's list of PeftType members)."""

    def __init__(self, context: EditContext, class_name: str, item: str) -> None:
        super().__init__(context)
        self.class_name, self.item = class_name, item

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = find_class(tree, self.class_name)
        doc = _docstring(found[1]) if found else None
        if found is None or doc is None or self.item in docstring_items(found[1]):
            return tree  # a docstring list is optional
        lines = doc[1].value.splitlines(keepends=True)
        last = max((i for i, line in enumerate(lines) if line.strip().startswith("- ")), default=None)
        if last is None:
            return tree
        bullet = lines[last]
        indent = bullet[: len(bullet) - len(bullet.lstrip())]
        ending = bullet[len(bullet.rstrip("\r\n")) :]
        lines.insert(last + 1, f"{indent}- {self.item}{ending}")
        return _with_docstring(tree, found[0], found[1], doc[1].with_changes(value="".join(lines)))


class RemoveDocstringItem(Edit):
    def __init__(self, context: EditContext, class_name: str, item: str) -> None:
        super().__init__(context)
        self.class_name, self.item = class_name, item

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = find_class(tree, self.class_name)
        doc = _docstring(found[1]) if found else None
        if found is None or doc is None:
            return tree
        lines = doc[1].value.splitlines(keepends=True)
        kept = [line for line in lines if line.strip() != f"- {self.item}"]
        if len(kept) == len(lines):
            return tree
        return _with_docstring(tree, found[0], found[1], doc[1].with_changes(value="".join(kept)))


# -- module-level assignments ----------------------------------------------------------------------------------------


class AddAssignment(Edit):
    """Insert a top-level statement after the statement `anchor(body)` picks (an index into the `ast` body).

    `ast` finds the anchor and whether the statement is there already; only the anchor statement is handed to
    libcst (`transform_module` gets it alone, and the new statement goes after it), so a long module is not parsed
    twice over.
    """

    def __init__(
        self,
        context: EditContext,
        name: str,
        code: str,
        anchor: Callable[[Sequence[ast.stmt]], int | None],
        anchor_description: str,
        blank_line_before: bool,
    ) -> None:
        super().__init__(context)
        self.name, self.code, self.anchor = name, code, anchor
        self.anchor_description, self.blank_line_before = anchor_description, blank_line_before

    def transform_source(self, source: str, relpath: str) -> str:
        try:
            body = ast.parse(source).body
        except SyntaxError as exc:
            raise ScaffoldError(relpath, f"is not valid Python (line {exc.lineno}: {exc.msg})") from exc
        if any(Assignment(self.name).matches(node) for node in body):
            return source
        after = self.anchor(body)
        if after is None:
            raise self.fail(self.anchor_description)
        node, first, last = body[after], body[after].lineno, body[after].end_lineno or body[after].lineno
        if (after > 0 and (body[after - 1].end_lineno or 0) >= first) or (
            after + 1 < len(body) and body[after + 1].lineno <= last
        ):
            raise self.fail(f"{self.anchor_description} on lines of their own")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.decorator_list:
            first = node.decorator_list[0].lineno
        lines = source.splitlines(keepends=True)
        anchor = _cst.parse("".join(lines[first - 1 : last]), relpath)
        return "".join(lines[: first - 1]) + self.transform_module(anchor).code + "".join(lines[last:])

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        """`tree` is the anchor statement alone (see `transform_source`)."""
        stmt = cst.parse_statement(self.code)
        if self.blank_line_before:
            stmt = stmt.with_changes(leading_lines=[_cst.blank_line()])
        return tree.with_changes(body=[*tree.body, stmt])


class RemoveAssignment(Edit):
    def __init__(self, context: EditContext, name: str) -> None:
        super().__init__(context)
        self.name = name

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        index = _cst.find_assignment(tree.body, self.name)
        if index is None:
            return tree
        body: list[Any] = list(tree.body)
        lines = getattr(body[index], "leading_lines", ())
        # Comments above it head a group of statements: keep them for the next one.
        _cst.remove_statement(body, index, transfer_leading=any(line.comment for line in lines))
        return tree.with_changes(body=body)


# -- rows of a top-level list/tuple of tuples (test matrices) --------------------------------------------------------


def _rows(tree: cst.Module, name: str) -> tuple[int, cst.List | cst.Tuple] | None:
    index = _cst.find_assignment(tree.body, name)
    if index is None:
        return None
    value = _cst.assigned_value(tree.body[index])
    if not isinstance(value, (cst.List, cst.Tuple)):
        return None
    return index, value


def row_mentions(el: cst.BaseElement, position: int, name: str) -> bool:
    """Whether element `position` of a tuple row is the bare name `name` (a config class, say)."""
    value = el.value
    if not isinstance(value, cst.Tuple) or len(value.elements) <= position:
        return False
    cell = value.elements[position].value
    return isinstance(cell, cst.Name) and cell.value == name


def has_row(source: str, relpath: str, name: str, position: int, cls: str) -> bool:
    """Whether the top-level list `name` has a row whose element `position` is the name `cls` (only that
    statement is parsed)."""
    found = _rows(parse_statement_of(source, relpath, Assignment(name)), name)
    return found is not None and any(row_mentions(el, position, cls) for el in found[1].elements)


class AddRows(Edit):
    """Add tuple rows to a top-level list/tuple such as TEST_CASES, optionally under a comment banner.

    Rows go at the end, or, with `sorted_by_first`, at their place when the existing rows are sorted by their first
    element (e.g. a config class). Rows already present (same first element) are not added again.
    """

    def __init__(
        self,
        context: EditContext,
        name: str,
        rows: Sequence[str],
        banner: Sequence[str] = (),
        sorted_by_first: bool = False,
    ) -> None:
        super().__init__(context)
        self.scope = Assignment(name)
        self.name, self.rows, self.banner, self.sorted_by_first = name, rows, banner, sorted_by_first

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _rows(tree, self.name)
        if found is None:
            raise self.fail(f"a top-level `{self.name} = [...]` of tuples")
        return self._add(tree, {_first_code(el) for el in found[1].elements})

    def _add(self, tree: cst.Module, present: set[str | None]) -> cst.Module:
        found = _rows(tree, self.name)
        assert found is not None
        index, value = found
        todo = [row for row in self.rows if _first_code(_cst.element(row)) not in present]
        for i, row in enumerate(todo):
            banner = _cst.comment_lines(value, self.banner) if i == 0 and len(todo) == len(self.rows) else []
            at = len(value.elements)
            if self.sorted_by_first and not banner:
                firsts = [_first_code(el) or "" for el in value.elements]
                at = _cst.insertion_index(firsts, _first_code(_cst.element(row)) or "", _cst.plain_key)
            value = _cst.insert_item(value, at, _cst.element(row), banner)
        body: list[Any] = list(tree.body)
        body[index] = _replace_value(body[index], value)
        return tree.with_changes(body=body)

    def transform_statement(self, found: Located, relpath: str) -> str:
        """Rows appended at the end change only the last row and what follows it. A list of a thousand rows
        (TEST_CASES) is therefore edited as a window of its first and last rows, which keep the list's layout
        (the first row's indentation, the last row's comma and the closing bracket); which rows are present is
        read from all of them with `ast`."""
        window = None if self.sorted_by_first else _list_window(found.text, found.node)
        if window is None:
            return super().transform_statement(found, relpath)
        head, middle, tail, present = window
        new = self._add(_cst.parse(head + tail, relpath), present).code
        if not new.startswith(head):  # the edit reached into the first row: not a pure append after all
            return super().transform_statement(found, relpath)
        return head + middle + new[len(head) :]


def _list_window(statement: str, node: ast.stmt) -> tuple[str, str, str, set[str | None]] | None:
    """(head, middle, tail, first elements) of an assignment (`node`, parsed from `statement`) of a list/tuple of at
    least three rows, each ending its line with its comma: head runs to the end of the first row, tail from the line
    after the next-to-last row. None when the statement is not laid out so (the caller then parses it whole)."""
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    if not isinstance(value, (ast.List, ast.Tuple)) or len(value.elts) < 3:
        return None
    lines = statement.splitlines(keepends=True)
    encoded = [line.encode() for line in lines]  # ast's column offsets count UTF-8 bytes
    for row in (value.elts[0], value.elts[-2]):
        end = row.end_lineno or row.lineno
        after = encoded[end - 1][row.end_col_offset :].decode().strip()
        if not after.startswith(",") or after[1:].strip()[:1] not in ("", "#"):
            return None
    firsts = [row.elts[0] for row in value.elts if isinstance(row, ast.Tuple) and row.elts]
    if any(first.end_lineno != first.lineno for first in firsts):
        return None
    present = {_ast_first_code(row, encoded) for row in value.elts}
    first_end, cut = value.elts[0].end_lineno or 0, value.elts[-2].end_lineno or 0
    return "".join(lines[:first_end]), "".join(lines[first_end:cut]), "".join(lines[cut:]), present


def _ast_first_code(row: ast.expr, encoded: list[bytes]) -> str | None:
    """What `_first_code` reads from the libcst node, read from the `ast` one (a one-line first element)."""
    if not isinstance(row, ast.Tuple) or not row.elts:
        return None
    first = row.elts[0]
    return encoded[first.lineno - 1][first.col_offset : first.end_col_offset].decode()


def _first_code(el: cst.BaseElement) -> str | None:
    """The source of a row's first element (a description string, mostly: its token, without printing the node)."""
    value = el.value
    if not isinstance(value, cst.Tuple) or not value.elements:
        return None
    first = value.elements[0].value
    if isinstance(first, (cst.SimpleString, cst.Name)) and not first.lpar:
        return first.value
    return cst.Module([]).code_for_node(first)


class RemoveRows(Edit):
    """Remove the rows whose element `position` is the name `cls`, and the banner above the first of them."""

    def __init__(self, context: EditContext, name: str, position: int, cls: str, banner: Sequence[str] = ()) -> None:
        super().__init__(context)
        self.scope = Assignment(name)
        self.name, self.position, self.cls, self.banner = name, position, cls, banner

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = _rows(tree, self.name)
        if found is None:
            return tree
        index, value = found
        while True:
            hits = [i for i, el in enumerate(value.elements) if row_mentions(el, self.position, self.cls)]
            if not hits or len(value.elements) < 2:
                break
            above = [line.comment.value if line.comment else None for line in _cst.lines_before(value, hits[0])]
            drop = len(self.banner) if self.banner and above[-len(self.banner) :] == list(self.banner) else 0
            value = _cst.remove_item(value, hits[0], drop_comments=drop)
        body: list[Any] = list(tree.body)
        body[index] = _replace_value(body[index], value)
        return tree.with_changes(body=body)


def banner(title: str) -> list[str]:
    """PEFT's section banner in test matrices: `# Title #` framed by lines of `#`."""
    middle = f"# {title} #"
    return ["#" * len(middle), middle, "#" * len(middle)]


def literal_row(values: Sequence[Any], indent: int = 4) -> str:
    return _cst.format_literal(tuple(values), indent)
