"""Where a LoRA variant is registered in a PEFT tree: small libcst transforms, each with its inverse.

    config_field        src/peft/tuners/lora/config.py   `use_<name>: bool = field(..., "is_lora_variant": True)` at
                                                         the end of LoraConfig's fields, and its `Args:` docstring entry
    lora_variants       src/peft/tuners/lora/layer.py    `("use_<name>",): <name>.<Variant>` in the `lora_variants`
                                                         mapping of each supported layer class, and `<name>` in the
                                                         property's `from . import variants`
    test_custom_models  tests/test_custom_models.py      LoraConfig rows with `use_<name>: True` in TEST_CASES, under
                                                         a banner (as PEFT has rows with `use_dora: True`)

Every `apply` leaves the text unchanged when the edit is there already, and `remove(apply(x)) == x` byte for byte.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import libcst as cst

from scaffold.core.sites import Site
from scaffold.errors import ScaffoldError
from scaffold.register import _cst
from scaffold.register import transforms as t
from scaffold.register.locate import Assignment
from scaffold.register.tree import PeftTree


LORA_DIR = "src/peft/tuners/lora"
CONFIG = "src/peft/tuners/lora/config.py"
LAYER = "src/peft/tuners/lora/layer.py"
TEST_CUSTOM_MODELS = "tests/test_custom_models.py"
CONFIG_CLASS = "LoraConfig"


def module_path(name: str, standalone: bool = False) -> str:
    """The variant's module: in PEFT's LoRA package, or top-level (`--out`)."""
    return f"{name}.py" if standalone else f"{LORA_DIR}/{name}.py"


@dataclass(frozen=True)
class VariantRegistration:
    """What the registrar needs to know about a variant; stored in its manifest, so `remove` needs no spec."""

    name: str  # the variant, e.g. "refdora"; its module is src/peft/tuners/lora/<name>.py
    switch: str  # the LoraConfig field, "use_<name>"
    field_code: str  # the field statement, formatted as ruff formats it at class level (no indentation)
    doc_entry: str  # the `Args:` docstring lines, indented as in LoraConfig's docstring
    mapping: tuple[tuple[str, str], ...]  # (LoRA layer class, variant class)
    test_rows: tuple[str, ...]  # TEST_CASES rows, as source (formatted at indent 4)
    test_descriptions: tuple[str, ...]  # their first elements
    banner: tuple[str, ...]  # the comment lines above the rows

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "switch": self.switch,
            "field_code": self.field_code,
            "doc_entry": self.doc_entry,
            "mapping": [list(pair) for pair in self.mapping],
            "test_rows": list(self.test_rows),
            "test_descriptions": list(self.test_descriptions),
            "banner": list(self.banner),
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> VariantRegistration:
        return cls(
            name=data["name"],
            switch=data["switch"],
            field_code=data["field_code"],
            doc_entry=data["doc_entry"],
            mapping=tuple((str(a), str(b)) for a, b in data["mapping"]),
            test_rows=tuple(data["test_rows"]),
            test_descriptions=tuple(data["test_descriptions"]),
            banner=tuple(data["banner"]),
        )


def _fail(relpath: str, expected: str) -> ScaffoldError:
    return ScaffoldError(relpath, f"expected {expected}")


# -- LoraConfig: the field ---------------------------------------------------------------------------------------------


def _config_class(tree: cst.Module, relpath: str) -> tuple[int, cst.ClassDef]:
    found = t.find_class(tree, CONFIG_CLASS)
    if found is None or not isinstance(found[1].body, cst.IndentedBlock):
        raise _fail(relpath, f"a top-level `class {CONFIG_CLASS}(...)`")
    return found


def _field_index(body: Sequence[cst.CSTNode], name: str) -> int | None:
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name) and small.target.value == name:
                return i
    return None


def config_fields(source: str, relpath: str = CONFIG) -> list[str]:
    """The annotated fields of LoraConfig, in order."""
    _, cls = _config_class(_cst.parse(source, relpath), relpath)
    out = []
    for stmt in cls.body.body:
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                out.append(small.target.value)
    return out


class AddConfigField(t.Edit):
    """Add a dataclass field after LoraConfig's last field, and its entry after the last one of the `Args:` list."""

    def __init__(self, context: t.EditContext, name: str, code: str, doc_entry: str) -> None:
        super().__init__(context)
        self.name, self.code, self.doc_entry = name, code, doc_entry

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        index, cls = _config_class(tree, self.context.filename or CONFIG)
        body = list(cls.body.body)
        if _field_index(body, self.name) is None:
            fields = [i for i in range(len(body)) if _field_index(body, _field_name(body[i]) or "") == i]
            if not fields:
                raise self.fail(f"dataclass fields in `class {CONFIG_CLASS}`")
            _cst.insert_statement(body, fields[-1] + 1, cst.parse_statement(self.code))
        doc = _docstring(body)
        if doc is not None and f"\n{_doc_header(self.name)}" not in doc.value:
            lines = doc.value.splitlines(keepends=True)
            last = _last_doc_entry_end(lines)
            if last is not None:
                lines[last:last] = self.doc_entry.splitlines(keepends=True)
                body[0] = _with_docstring(body[0], doc.with_changes(value="".join(lines)))
        new_cls = cls.with_changes(body=cls.body.with_changes(body=body))
        return tree.with_changes(body=[*tree.body[:index], new_cls, *tree.body[index + 1 :]])


class RemoveConfigField(t.Edit):
    def __init__(self, context: t.EditContext, name: str) -> None:
        super().__init__(context)
        self.name = name

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        found = t.find_class(tree, CONFIG_CLASS)
        if found is None or not isinstance(found[1].body, cst.IndentedBlock):
            return tree
        index, cls = found
        body = list(cls.body.body)
        position = _field_index(body, self.name)
        if position is not None:
            _cst.remove_statement(body, position, transfer_leading=False)
        doc = _docstring(body)
        if doc is not None:
            lines = doc.value.splitlines(keepends=True)
            header = _doc_header(self.name)
            starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n").startswith(header)]
            if starts:
                start = end = starts[0]
                indent = len(lines[start]) - len(lines[start].lstrip())
                end += 1
                while end < len(lines) and lines[end].strip() and _indent(lines[end]) > indent:
                    end += 1
                del lines[start:end]
                body[0] = _with_docstring(body[0], doc.with_changes(value="".join(lines)))
        new_cls = cls.with_changes(body=cls.body.with_changes(body=body))
        return tree.with_changes(body=[*tree.body[:index], new_cls, *tree.body[index + 1 :]])


def _field_name(stmt: cst.CSTNode) -> str | None:
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
        small = stmt.body[0]
        if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
            return small.target.value
    return None


def _docstring(body: Sequence[cst.CSTNode]) -> cst.SimpleString | None:
    if body and isinstance(body[0], cst.SimpleStatementLine) and len(body[0].body) == 1:
        expr = body[0].body[0]
        if isinstance(expr, cst.Expr) and isinstance(expr.value, cst.SimpleString):
            return expr.value
    return None


def _with_docstring(stmt: cst.CSTNode, doc: cst.SimpleString) -> cst.CSTNode:
    assert isinstance(stmt, cst.SimpleStatementLine)
    return stmt.with_changes(body=[stmt.body[0].with_changes(value=doc)])


_DOC_INDENT = 8  # `Args:` entries of a class docstring: 8 spaces, their text 12


def _doc_header(name: str) -> str:
    return " " * _DOC_INDENT + f"{name} ("


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _last_doc_entry_end(lines: list[str]) -> int | None:
    """The index after the last line of the last `name (`type`...)` entry of the docstring's `Args:` list."""
    starts = [
        i
        for i, line in enumerate(lines)
        if _indent(line) == _DOC_INDENT and line.strip()[:1].isidentifier() and " (`" in line
    ]
    if not starts:
        return None
    end = starts[-1] + 1
    while end < len(lines) and lines[end].strip() and _indent(lines[end]) > _DOC_INDENT:
        end += 1
    return end


# -- layer.py: the lora_variants mappings --------------------------------------------------------------------------------


def _variants_property(cls: cst.ClassDef) -> tuple[int, cst.FunctionDef] | None:
    body = cls.body.body if isinstance(cls.body, cst.IndentedBlock) else ()
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.FunctionDef) and stmt.name.value == "lora_variants":
            return i, stmt
    return None


def _mapping_return(func: cst.FunctionDef) -> tuple[int, cst.Dict] | None:
    body = func.body.body if isinstance(func.body, cst.IndentedBlock) else ()
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.Return) and isinstance(small.value, cst.Dict):
                return i, small.value
    return None


def _package_import(func: cst.FunctionDef) -> tuple[int, cst.ImportFrom] | None:
    """The property's `from . import variants`."""
    body = func.body.body if isinstance(func.body, cst.IndentedBlock) else ()
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.ImportFrom) and _cst.relative_module(small) == (1, ""):
                return i, small
    return None


def _key_of(el: cst.BaseDictElement) -> str | None:
    if isinstance(el, cst.DictElement):
        return cst.Module([]).code_for_node(el.key)
    return None


def _entry_key(switch: str) -> str:
    return f'("{switch}",)'


def mapping_entries(source: str, layer: str, relpath: str = LAYER) -> dict[str, str] | None:
    """The `lora_variants` mapping of `class <layer>` as {key source: value source}; None without such a mapping."""
    tree = _cst.parse(source, relpath)
    found = t.find_class(tree, layer)
    prop = _variants_property(found[1]) if found else None
    ret = _mapping_return(prop[1]) if prop else None
    if ret is None:
        return None
    out = {}
    for el in ret[1].elements:
        if isinstance(el, cst.DictElement):
            out[cst.Module([]).code_for_node(el.key)] = cst.Module([]).code_for_node(el.value)
    return out


def _edit_property(tree: cst.Module, layer: str, relpath: str, edit: Any, missing_ok: bool) -> cst.Module:
    found = t.find_class(tree, layer)
    prop = _variants_property(found[1]) if found else None
    if found is None or prop is None or _mapping_return(prop[1]) is None or _package_import(prop[1]) is None:
        if missing_ok:
            return tree
        if found is None:
            raise ScaffoldError(relpath, f"has no `class {layer}`: this PEFT tree has no LoRA {layer} layer")
        raise ScaffoldError(
            relpath,
            f"`class {layer}` has no `lora_variants` mapping (a property returning a dict after "
            "`from . import variants`): LoRA variants need PEFT >= 0.20",
        )
    class_index, cls = found
    prop_index, func = prop
    fbody = list(func.body.body)
    fbody = edit(fbody)
    new_func = func.with_changes(body=func.body.with_changes(body=fbody))
    cbody = list(cls.body.body)
    cbody[prop_index] = new_func
    new_cls = cls.with_changes(body=cls.body.with_changes(body=cbody))
    return tree.with_changes(body=[*tree.body[:class_index], new_cls, *tree.body[class_index + 1 :]])


class AddVariantEntry(t.Edit):
    """`("use_<name>",): <module>.<Variant>` at the end of `class <layer>`'s `lora_variants`, `<module>` imported."""

    def __init__(self, context: t.EditContext, layer: str, switch: str, module: str, variant_cls: str) -> None:
        super().__init__(context)
        self.layer, self.switch, self.module_name, self.variant_cls = layer, switch, module, variant_cls

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        def edit(fbody: list[Any]) -> list[Any]:
            import_index, node = _package_import_in(fbody)
            names = _cst.import_names(node)
            if self.module_name not in names:
                at = _cst.insertion_index(names, self.module_name, _cst.import_name_key)
                node = _cst.insert_item(node, at, cst.ImportAlias(name=cst.Name(self.module_name)))
                fbody[import_index] = fbody[import_index].with_changes(body=[node])
            ret_index, mapping = _mapping_return_in(fbody)
            key = _entry_key(self.switch)
            if key not in [_key_of(el) for el in mapping.elements]:
                entry = cst.DictElement(
                    key=cst.parse_expression(key), value=cst.parse_expression(f"{self.module_name}.{self.variant_cls}")
                )
                mapping = _cst.insert_item(mapping, len(mapping.elements), entry)
                stmt = fbody[ret_index]
                fbody[ret_index] = stmt.with_changes(body=[stmt.body[0].with_changes(value=mapping)])
            return fbody

        return _edit_property(tree, self.layer, self.context.filename or LAYER, edit, missing_ok=False)


class RemoveVariantEntry(t.Edit):
    def __init__(self, context: t.EditContext, layer: str, switch: str, module: str) -> None:
        super().__init__(context)
        self.layer, self.switch, self.module_name = layer, switch, module

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        def edit(fbody: list[Any]) -> list[Any]:
            ret_index, mapping = _mapping_return_in(fbody)
            keys = [_key_of(el) for el in mapping.elements]
            key = _entry_key(self.switch)
            if key in keys and len(keys) > 1:
                mapping = _cst.remove_item(mapping, keys.index(key))
                stmt = fbody[ret_index]
                fbody[ret_index] = stmt.with_changes(body=[stmt.body[0].with_changes(value=mapping)])
            import_index, node = _package_import_in(fbody)
            names = _cst.import_names(node)
            if self.module_name in names and len(names) > 1:
                node = _cst.remove_item(node, names.index(self.module_name))
                fbody[import_index] = fbody[import_index].with_changes(body=[node])
            return fbody

        return _edit_property(tree, self.layer, self.context.filename or LAYER, edit, missing_ok=True)


def _package_import_in(fbody: list[Any]) -> tuple[int, cst.ImportFrom]:
    for i, stmt in enumerate(fbody):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.ImportFrom) and _cst.relative_module(small) == (1, ""):
                return i, small
    raise AssertionError("checked by _edit_property")


def _mapping_return_in(fbody: list[Any]) -> tuple[int, cst.Dict]:
    for i, stmt in enumerate(fbody):
        if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
            small = stmt.body[0]
            if isinstance(small, cst.Return) and isinstance(small.value, cst.Dict):
                return i, small.value
    raise AssertionError("checked by _edit_property")


# -- tests/test_custom_models.py: TEST_CASES rows ------------------------------------------------------------------------


class RemoveRowsByDescription(t.Edit):
    """Remove the TEST_CASES-style rows whose first element is one of `descriptions`, and the banner above them."""

    def __init__(self, context: t.EditContext, name: str, descriptions: Sequence[str], banner: Sequence[str]) -> None:
        super().__init__(context)
        self.scope = Assignment(name)
        self.name, self.descriptions, self.banner = name, set(descriptions), list(banner)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        index = _cst.find_assignment(tree.body, self.name)
        value = _cst.assigned_value(tree.body[index]) if index is not None else None
        if index is None or not isinstance(value, (cst.List, cst.Tuple)):
            return tree
        while True:
            hits = [i for i, el in enumerate(value.elements) if _description(el) in self.descriptions]
            if not hits or len(value.elements) < 2:
                break
            above = [line.comment.value if line.comment else None for line in _cst.lines_before(value, hits[0])]
            drop = len(self.banner) if self.banner and above[-len(self.banner) :] == self.banner else 0
            value = _cst.remove_item(value, hits[0], drop_comments=drop)
        body: list[Any] = list(tree.body)
        stmt = body[index]
        body[index] = stmt.with_changes(body=[stmt.body[0].with_changes(value=value)])
        return tree.with_changes(body=body)


def _description(el: cst.BaseElement) -> str | None:
    value = el.value
    if isinstance(value, cst.Tuple) and value.elements and isinstance(value.elements[0].value, cst.SimpleString):
        text = value.elements[0].value.evaluated_value
        return text if isinstance(text, str) else None
    return None


def test_case_descriptions(source: str, relpath: str = TEST_CUSTOM_MODELS) -> list[str]:
    tree = t.parse_statement_of(source, relpath, Assignment("TEST_CASES"))
    index = _cst.find_assignment(tree.body, "TEST_CASES")
    value = _cst.assigned_value(tree.body[index]) if index is not None else None
    if not isinstance(value, (cst.List, cst.Tuple)):
        return []
    return [d for d in (_description(el) for el in value.elements) if d is not None]


# -- the sites -------------------------------------------------------------------------------------------------------------


def apply_config(source: str, reg: VariantRegistration) -> str:
    return t.run(
        source, CONFIG, partial(AddConfigField, name=reg.switch, code=reg.field_code, doc_entry=reg.doc_entry)
    )


def remove_config(source: str, reg: VariantRegistration) -> str:
    return t.run(source, CONFIG, partial(RemoveConfigField, name=reg.switch))


def apply_layer(source: str, reg: VariantRegistration) -> str:
    edits = [
        partial(AddVariantEntry, layer=layer, switch=reg.switch, module=reg.name, variant_cls=cls)
        for layer, cls in reg.mapping
    ]
    return t.run(source, LAYER, *edits)


def remove_layer(source: str, reg: VariantRegistration) -> str:
    edits = [partial(RemoveVariantEntry, layer=layer, switch=reg.switch, module=reg.name) for layer, _ in reg.mapping]
    return t.run(source, LAYER, *edits)


def apply_tests(source: str, reg: VariantRegistration) -> str:
    edit = partial(t.AddRows, name="TEST_CASES", rows=list(reg.test_rows), banner=list(reg.banner))
    return t.run(source, TEST_CUSTOM_MODELS, edit)


def remove_tests(source: str, reg: VariantRegistration) -> str:
    edit = partial(RemoveRowsByDescription, name="TEST_CASES", descriptions=reg.test_descriptions, banner=reg.banner)
    return t.run(source, TEST_CUSTOM_MODELS, edit)


class VariantSite(Site):
    """A site edited by a pair of functions (`apply(source, reg)`, `remove(source, reg)`), both given the text."""

    def __init__(self, name: str, relpath: str, apply: Any, remove: Any, needs_tests: bool = False) -> None:
        self.name, self.relpath, self._apply, self._remove, self.needs_tests = (
            name,
            relpath,
            apply,
            remove,
            needs_tests,
        )

    def skip_reason(self, tree: PeftTree, reg: Any) -> str | None:
        return "tree has no tests/" if self.needs_tests and not tree.has_tests else None

    def apply(self, source: str | None, reg: VariantRegistration) -> str:
        return self._apply(self._require(source, reg.name), reg)

    def remove(self, source: str | None, reg: VariantRegistration) -> str:
        return self._remove(self._require(source, reg.name), reg)


SITES: tuple[VariantSite, ...] = (
    VariantSite("config_field", CONFIG, apply_config, remove_config),
    VariantSite("lora_variants", LAYER, apply_layer, remove_layer),
    VariantSite("test_custom_models", TEST_CUSTOM_MODELS, apply_tests, remove_tests, needs_tests=True),
)


# -- the code inserted -------------------------------------------------------------------------------------------------------


def field_code(switch: str, help_text: str) -> str:
    """The LoraConfig field, as ruff formats it inside the class body (dedented by the class's 4 spaces)."""
    chunks = _string_chunks(help_text, width=_cst.LINE_LENGTH - 16)
    help_lines = "\n".join(" " * 12 + chunk for chunk in chunks)
    return (
        f"{switch}: bool = field(\n"
        "    default=False,\n"
        "    metadata={\n"
        '        "help": (\n'
        f"{help_lines}\n"
        "        ),\n"
        '        "is_lora_variant": True,\n'
        "    },\n"
        ")\n"
    )


def doc_entry(switch: str, help_text: str) -> str:
    body = textwrap.wrap(" ".join(help_text.split()), width=_cst.LINE_LENGTH - _DOC_INDENT - 4)
    lines = [" " * _DOC_INDENT + f"{switch} (`bool`):"] + [" " * (_DOC_INDENT + 4) + line for line in body]
    return "\n".join(lines) + "\n"


def _string_chunks(text: str, width: int) -> list[str]:
    """`text` as implicitly concatenated double-quoted literals, each at most `width` characters long."""
    words = " ".join(text.split()).split(" ")
    chunks: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if len(_quote(candidate + " ")) > width and current:
            chunks.append(current + " ")
            current = word
        else:
            current = candidate
    chunks.append(current)
    return [_quote(chunk) for chunk in chunks]


def _quote(text: str) -> str:
    quoted = repr(text)
    if quoted.startswith("'"):
        quoted = '"' + quoted[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    assert ast.literal_eval(quoted) == text
    return quoted
