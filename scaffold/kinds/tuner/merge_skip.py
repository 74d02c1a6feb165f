"""The edits of the `test_merge_skip` site (`sites.MergeSkipSite`): PEFT's merge tests skip methods that cannot merge.

PEFT's test-suite asks `_skip_if_merging_not_supported(model_id, config_cls, config_kwargs)` (tests/testing_common.py)
at the top of every test that merges (test_merge_layers*, test_safe_merge, test_forward_float16 and the other
dtype tests, test_disable_adapters_with_merging, the multi-adapter merge tests...); its non-mergeable methods (Lily,
ShadowPEFT) are listed there as one branch each:

    if issubclass(config_cls, LilyConfig):
        pytest.skip("Lily does not support merging adapters, skipping this test.")

A generated method with `mergeable: false` gets the same branch (and the site adds the config import), so that PEFT's
matrix runs every other test on its rows and skips only the merge tests.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

import libcst as cst

from scaffold.register import transforms as t
from scaffold.register.locate import Scope


SKIP_FUNCTION = "_skip_if_merging_not_supported"
CONFIG_PARAMETER = "config_cls"


@dataclass(frozen=True)
class FunctionDef(Scope):
    """`def NAME(...)` at the top level (undecorated)."""

    name: str

    def first_line(self) -> re.Pattern[str]:
        return re.compile(rf"def\s+{re.escape(self.name)}\s*\(")

    def matches(self, node: ast.stmt) -> bool:
        return isinstance(node, ast.FunctionDef) and node.name == self.name


def _is_branch_for(stmt: cst.CSTNode, config_cls: str) -> bool:
    """`if issubclass(config_cls, <config_cls>): ...`"""
    if not isinstance(stmt, cst.If) or not isinstance(stmt.test, cst.Call):
        return False
    call = stmt.test
    if not (isinstance(call.func, cst.Name) and call.func.value == "issubclass" and len(call.args) == 2):
        return False
    first, second = (arg.value for arg in call.args)
    return (
        isinstance(first, cst.Name)
        and first.value == CONFIG_PARAMETER
        and isinstance(second, cst.Name)
        and second.value == config_cls
    )


class _SkipBranchEdit(t.Edit):
    scope = FunctionDef(SKIP_FUNCTION)

    def __init__(self, context: t.EditContext, config_cls: str, title: str) -> None:
        super().__init__(context)
        self.config_cls, self.title = config_cls, title

    def _function(self, tree: cst.Module) -> tuple[int, cst.FunctionDef]:
        for index, stmt in enumerate(tree.body):
            if isinstance(stmt, cst.FunctionDef) and stmt.name.value == SKIP_FUNCTION:
                params = [p.name.value for p in stmt.params.params]
                if CONFIG_PARAMETER in params and isinstance(stmt.body, cst.IndentedBlock):
                    return index, stmt
        raise self.fail(f"`def {SKIP_FUNCTION}(model_id, {CONFIG_PARAMETER}, config_kwargs)`")

    def _with_body(self, tree: cst.Module, index: int, func: cst.FunctionDef, body: list[Any]) -> cst.Module:
        block = func.body.with_changes(body=body)
        statements = list(tree.body)
        statements[index] = func.with_changes(body=block)
        return tree.with_changes(body=statements)


class AddSkipBranch(_SkipBranchEdit):
    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        index, func = self._function(tree)
        body = list(func.body.body)
        if any(_is_branch_for(stmt, self.config_cls) for stmt in body):
            return tree
        message = f"{self.title} does not support merging adapters, skipping this test."
        branch = cst.parse_statement(
            f'if issubclass({CONFIG_PARAMETER}, {self.config_cls}):\n    pytest.skip("{message}")\n'
        )
        return self._with_body(tree, index, func, [*body, branch])


class RemoveSkipBranch(_SkipBranchEdit):
    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        index, func = self._function(tree)
        body = [stmt for stmt in func.body.body if not _is_branch_for(stmt, self.config_cls)]
        if len(body) == len(func.body.body):
            return tree
        return self._with_body(tree, index, func, body)


def has_skip_branch(source: str, config_cls: str) -> bool:
    try:
        module = ast.parse(source)
    except SyntaxError:
        return False
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == SKIP_FUNCTION:
            return any(
                isinstance(stmt, ast.If)
                and isinstance(stmt.test, ast.Call)
                and ast.unparse(stmt.test) == f"issubclass({CONFIG_PARAMETER}, {config_cls})"
                for stmt in node.body
            )
    return False
