"""Registering a generated LoRA layer type in a PEFT tree, and undoing it, with libcst.

Two sites, each an edit with its exact inverse (`remove(apply(x)) == x`, byte for byte):

- `dispatch_default` in src/peft/tuners/lora/layer.py gets one more branch at the end of its
  `isinstance(target_base_layer, ...)` chain, so that every type PEFT handles keeps its own branch::

      elif isinstance(target_base_layer, torch.nn.ConvTranspose2d):
          from .convtranspose2d import ConvTranspose2d

          new_module = ConvTranspose2d(target, adapter_name, config=config, **kwargs)

  The import is local to the branch: the generated module imports `LoraLayer` from layer.py, so a top-level
  import in layer.py would be circular (PEFT imports its optional LoRA backends inside functions the same way).
- src/peft/tuners/lora/__init__.py imports and exports the class (`from .convtranspose2d import ...` among the
  other `from .<module>` lines, in isort order, and an `__all__` entry in RUF022 order).

A manifest (`src/peft/tuners/lora/.peft-scaffold-lora_layer-<name>.json`) records what was generated, for `remove`
(see `scaffold.core.manifest`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libcst as cst

from scaffold.core.manifest import Manifest
from scaffold.core.sites import EditFactory, EditSite, Site
from scaffold.errors import ScaffoldError
from scaffold.register import _cst
from scaffold.register.transforms import (
    AddPackageImport,
    AddToDunderAll,
    Edit,
    EditContext,
    RemoveFromDunderAll,
    RemovePackageImport,
    dunder_all_names,
)


LAYER_PY = "src/peft/tuners/lora/layer.py"
LORA_INIT = "src/peft/tuners/lora/__init__.py"


def module_path(name: str) -> str:
    return f"src/peft/tuners/lora/{name}.py"


@dataclass(frozen=True)
class LayerRegistration:
    """What registering one LoRA layer type edits."""

    name: str  # module name: src/peft/tuners/lora/<name>.py
    class_name: str
    base_path: str  # the isinstance target, e.g. torch.nn.ConvTranspose2d

    def to_data(self) -> dict[str, str]:
        return {"name": self.name, "class_name": self.class_name, "base_layer": self.base_path}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> LayerRegistration:
        return cls(name=data["name"], class_name=data["class_name"], base_path=data["base_layer"])


# -- dispatch_default -------------------------------------------------------------------------------------------


def _find_function(tree: cst.Module, name: str) -> tuple[int, cst.FunctionDef] | None:
    for index, stmt in enumerate(tree.body):
        if isinstance(stmt, cst.FunctionDef) and stmt.name.value == name:
            return index, stmt
    return None


def _isinstance_target(test: cst.BaseExpression) -> tuple[str, str] | None:
    """(variable, class code) of a test `isinstance(<variable>, <class>)`."""
    if not isinstance(test, cst.Call) or not isinstance(test.func, cst.Name) or test.func.value != "isinstance":
        return None
    if len(test.args) != 2 or not isinstance(test.args[0].value, cst.Name):
        return None
    return test.args[0].value.value, cst.Module([]).code_for_node(test.args[1].value)


def _assigns_new_module(node: cst.If) -> bool:
    """Whether a branch assigns `new_module` (the dispatch chain, not e.g. the unwrapping of the target)."""
    body = node.body.body if isinstance(node.body, cst.IndentedBlock) else ()
    return any(_cst.assigned_name(stmt) == "new_module" for stmt in body)


def _chain(node: cst.If) -> list[cst.If]:
    out = [node]
    while isinstance(out[-1].orelse, cst.If):
        out.append(out[-1].orelse)
    return out


@dataclass
class _Dispatch:
    index: int  # of the function in the module body
    function: cst.FunctionDef
    stmt_index: int  # of the if/elif chain in the function body
    chain: list[cst.If]
    variable: str  # the base layer variable the chain tests, `target_base_layer`
    config_param: str  # `config`

    def branch_of(self, base_path: str) -> int | None:
        for position, node in enumerate(self.chain):
            target = _isinstance_target(node.test)
            if target is not None and target[1] == base_path:
                return position
        return None


def find_dispatch(tree: cst.Module, relpath: str = LAYER_PY) -> _Dispatch:
    """The `dispatch_default` function and its isinstance chain; a `ScaffoldError` naming the cause otherwise."""
    found = _find_function(tree, "dispatch_default")
    if found is None:
        raise ScaffoldError(
            relpath,
            "has no top-level `dispatch_default` function, so a LoRA layer type cannot be registered in this tree "
            "(use `new SPEC --out DIR` and `LoraConfig._register_custom_module` instead)",
        )
    index, function = found
    params = [p.name.value for p in function.params.params]
    config_param = next((p for p in ("config", "lora_config") if p in params), None)
    body = function.body.body if isinstance(function.body, cst.IndentedBlock) else ()
    for stmt_index, stmt in enumerate(body):
        if not isinstance(stmt, cst.If):
            continue
        chain = _chain(stmt)
        targets = [t for node in chain if (t := _isinstance_target(node.test)) is not None]
        if targets and config_param is not None and any(_assigns_new_module(node) for node in chain):
            return _Dispatch(index, function, stmt_index, chain, targets[-1][0], config_param)
    raise ScaffoldError(
        relpath,
        "`dispatch_default` has no `if/elif isinstance(target_base_layer, ...): new_module = ...` chain (with a "
        "`config` parameter); this tree's LoRA dispatch is not one peft-scaffold understands",
    )


def _branch_code(reg: LayerRegistration, variable: str, config_param: str) -> cst.If:
    code = (
        "if _:\n"
        "    pass\n"
        f"elif isinstance({variable}, {reg.base_path}):\n"
        f"    from .{reg.name} import {reg.class_name}\n"
        "\n"
        f"    new_module = {reg.class_name}(target, adapter_name, {config_param}={config_param}, **kwargs)\n"
    )
    stmt = cst.parse_statement(code)
    assert isinstance(stmt, cst.If) and isinstance(stmt.orelse, cst.If)
    return stmt.orelse


def _rebuild(chain: list[cst.If], edit: Callable[[list[cst.If]], list[cst.If]]) -> cst.If:
    """Apply `edit` to the list of branches, then relink them (each branch's `orelse` is the next one)."""
    nodes = edit(list(chain))
    tail = chain[-1].orelse  # a final `else:` stays last
    for node in reversed(nodes):
        node = node.with_changes(orelse=tail)
        tail = node
    assert isinstance(tail, cst.If)
    return tail


def _replace_chain(tree: cst.Module, dispatch: _Dispatch, root: cst.If) -> cst.Module:
    function = dispatch.function
    assert isinstance(function.body, cst.IndentedBlock)
    body = list(function.body.body)
    body[dispatch.stmt_index] = root
    function = function.with_changes(body=function.body.with_changes(body=body))
    return tree.with_changes(body=[*tree.body[: dispatch.index], function, *tree.body[dispatch.index + 1 :]])


class AddDispatchBranch(Edit):
    """Append `elif isinstance(target_base_layer, <base>): ... new_module = <Class>(...)` to `dispatch_default`."""

    def __init__(self, context: EditContext, reg: LayerRegistration) -> None:
        super().__init__(context)
        self.reg = reg

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        dispatch = find_dispatch(tree, self.context.filename)
        branch = _branch_code(self.reg, dispatch.variable, dispatch.config_param)
        position = dispatch.branch_of(self.reg.base_path)
        if position is not None:
            if dispatch.chain[position].body.deep_equals(branch.body):
                return tree  # already registered
            raise ScaffoldError(
                self.context.filename,
                f"`dispatch_default` already has a branch for {self.reg.base_path} (not generated here)",
            )
        root = _rebuild(dispatch.chain, lambda nodes: [*nodes, branch])
        return _replace_chain(tree, dispatch, root)


class RemoveDispatchBranch(Edit):
    def __init__(self, context: EditContext, reg: LayerRegistration) -> None:
        super().__init__(context)
        self.reg = reg

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        try:
            dispatch = find_dispatch(tree, self.context.filename)
        except ScaffoldError:
            return tree  # nothing of ours can be there
        position = dispatch.branch_of(self.reg.base_path)
        if position is None or position == 0:
            return tree
        branch = _branch_code(self.reg, dispatch.variable, dispatch.config_param)
        if not dispatch.chain[position].body.deep_equals(branch.body):
            return tree  # someone else's branch for that type: not ours to remove
        root = _rebuild(dispatch.chain, lambda nodes: nodes[:position] + nodes[position + 1 :])
        return _replace_chain(tree, dispatch, root)


def dispatched_types(source: str) -> list[str]:
    """The class expressions `dispatch_default` tests, in order (for collision checks and `check`)."""
    dispatch = find_dispatch(_cst.parse(source, LAYER_PY))
    return [t[1] for node in dispatch.chain if (t := _isinstance_target(node.test)) is not None]


# -- the sites -------------------------------------------------------------------------------------------------


class DispatchSite(EditSite):
    """The branch of `dispatch_default` in layer.py."""

    name = "dispatch_default"
    relpath = LAYER_PY

    def edits(self, reg: LayerRegistration) -> list[EditFactory]:
        return [lambda ctx: AddDispatchBranch(ctx, reg)]

    def inverse_edits(self, reg: LayerRegistration) -> list[EditFactory]:
        return [lambda ctx: RemoveDispatchBranch(ctx, reg)]


class ExportSite(EditSite):
    """`from .<name> import <Class>` and the `__all__` entry in LoRA's __init__.py."""

    name = "lora exports"
    relpath = LORA_INIT

    def edits(self, reg: LayerRegistration) -> list[EditFactory]:
        return [
            lambda ctx: AddPackageImport(ctx, reg.name, [reg.class_name]),
            lambda ctx: AddToDunderAll(ctx, [reg.class_name]),
        ]

    def inverse_edits(self, reg: LayerRegistration) -> list[EditFactory]:
        return [
            lambda ctx: RemoveFromDunderAll(ctx, [reg.class_name]),
            lambda ctx: RemovePackageImport(ctx, reg.name),
        ]


SITES: tuple[Site, ...] = (DispatchSite(), ExportSite())


def check_collision(root: Path, reg: LayerRegistration, manifest: Manifest | None) -> None:
    """Refuse names and types the tree already uses (unless our own manifest says we generated them)."""
    layer_source = (root / LAYER_PY).read_text(encoding="utf-8") if (root / LAYER_PY).is_file() else None
    if layer_source is None:
        raise ScaffoldError(LAYER_PY, "missing: this tree has no LoRA layer module to register a layer type in")
    layer_tree = _cst.parse(layer_source, LAYER_PY)
    types = dispatched_types(layer_source)  # raises when there is no dispatch_default
    if manifest is not None:
        old = manifest.registration
        if (old.class_name, old.base_path) != (reg.class_name, reg.base_path):
            raise ScaffoldError(
                manifest.relpath,
                f"{reg.name!r} was generated as {old.class_name} for {old.base_path}; run `remove {reg.name}` before "
                f"generating it as {reg.class_name} for {reg.base_path}",
            )
        return
    rel = module_path(reg.name)
    if (root / rel).exists():
        raise ScaffoldError(rel, f"already exists; the module name {reg.name!r} is taken")
    if reg.base_path in types:
        raise ScaffoldError(LAYER_PY, f"`dispatch_default` already handles {reg.base_path}")
    if _find_function(layer_tree, reg.class_name) is not None or any(
        isinstance(s, cst.ClassDef) and s.name.value == reg.class_name for s in layer_tree.body
    ):
        raise ScaffoldError(LAYER_PY, f"already defines {reg.class_name!r}; choose another `class_name`")
    init_source = (root / LORA_INIT).read_text(encoding="utf-8")
    if reg.class_name in dunder_all_names(_cst.parse(init_source, LORA_INIT)):
        raise ScaffoldError(LORA_INIT, f"already exports {reg.class_name!r}; choose another `class_name`")
