"""The registry sites of a PEFT tree: one small transform per site, each with its inverse and a check.

Every site mirrors how PEFT 0.19-0.21 registered `tinylora` and `supertuning` by hand:

    peft_types            src/peft/utils/peft_types.py    `PeftType` member (+ the docstring's member list)
    tuners_init           src/peft/tuners/__init__.py     `from .<name> import <Config>, <Model>` + `__all__`
    peft_init             src/peft/__init__.py            names in `from .tuners import (...)` + `__all__`
    constants             src/peft/utils/constants.py     `TRANSFORMERS_MODELS_TO_<TYPE>_TARGET_MODULES_MAPPING`
    reexport_other        src/peft/utils/other.py         the mapping in `from .constants import (...)` + `__all__`
    reexport_utils        src/peft/utils/__init__.py      the mapping in `from .other import (...)` + `__all__`
    test_config           tests/test_config.py            import + `ALL_CONFIG_CLASSES` row
    test_custom_models    tests/test_custom_models.py     import + a bannered block of `TEST_CASES` rows
    test_custom_models_multi  tests/test_custom_models.py `MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES` rows
    test_merge_skip       tests/testing_common.py         import + a `_skip_if_merging_not_supported` branch
                                                          (methods that cannot merge only, as PEFT lists Lily)
    docs_page             docs/source/package_reference/<name>.md
    docs_toctree          docs/source/_toctree.yml        entries in the method lists (Methods > Adapters, API reference > Tuners)

PEFT's "Add a new PEFT method" checklist (docs/source/developer_guides/contributing.md) and what covers it:
  - new `PeftType` entry                               -> peft_types
  - tuner package under src/peft/tuners/ (config.py, model.py, layer.py, __init__.py with
    `register_peft_method(...)`)                       -> the generator (templates), not the registrar
  - export config/model from tuners/__init__.py and peft/__init__.py -> tuners_init, peft_init
  - default target modules in utils/constants.py     -> constants (+ reexport_other/reexport_utils, as PEFT does)
  - the test matrix in tests/test_custom_models.py   -> test_custom_models, test_custom_models_multi
  - the full test suite (test_config.py, ...)         -> test_config; the transformers-model matrices
    (test_decoder_models.py, test_encoder_decoder_models.py, test_feature_extraction_models.py,
    test_seq_classifier.py) need Hub models and method-specific kwargs and are NOT registered
  - docs page in package_reference/ + _toctree.yml    -> docs_page, docs_toctree (when the tree has docs/)
  - `papers` attribute on the config, style checks, examples/, method_comparison/ benchmark settings,
    quantization support                               -> not the registrar's job

Per-method lists elsewhere in test_custom_models.py (e.g. the `config_cls` parametrisations of
`test_multiple_adapters_mixed_modules_to_save*`, `MIXED_ADAPTER_TEST_CASES`) are opt-in in PEFT: most methods,
tinylora included, are absent, and entries need method-specific kwargs. They are not registered.
"""

from __future__ import annotations

import ast
import datetime
import re
from abc import abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import Any

import libcst as cst

from scaffold.core.sites import EditFactory, EditSite, Site
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.merge_skip import AddSkipBranch, RemoveSkipBranch, has_skip_branch
from scaffold.kinds.tuner.registration import DiscoveredMethod, MethodNames, MethodRegistration
from scaffold.register import _cst
from scaffold.register import transforms as t
from scaffold.register.locate import assigned_targets
from scaffold.register.tree import TOCTREE, PeftTree


class TunerSite(Site):
    """A site of `kind: tuner`, which `doctor` also checks for methods written by hand."""

    @abstractmethod
    def is_registered(self, source: str | None, method: MethodNames) -> bool: ...

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        """Why this site does not apply to an existing method (None: it should be registered here)."""
        return None

    def doctor_is_registered(self, tree: PeftTree, method: DiscoveredMethod) -> bool:
        """`is_registered` for an existing method, reading the tree."""
        path = tree.root / self.path(method.name)
        return self.is_registered(path.read_text(encoding="utf-8") if path.is_file() else None, method)


def _imported_and_exported(source: str | None, relpath: str, module: str, names: Sequence[str]) -> bool:
    """Whether `from .<module> import ...` and `__all__` both list every one of `names`."""
    if source is None:
        return False
    tree = _cst.parse(source, relpath)
    imported = t.imported_names(tree, 1, module)
    return all(name in imported and name in t.dunder_all_names(tree) for name in names)


def _tests_skip(tree: PeftTree) -> str | None:
    return None if tree.has_tests else "tree has no tests/"


def _no_package(method: DiscoveredMethod) -> str | None:
    return None if method.has_package else "no package in src/peft/tuners/"


# -- 1. PeftType -----------------------------------------------------------------------------------------------------


class PeftTypeSite(EditSite, TunerSite):
    name = "peft_types"
    relpath = "src/peft/utils/peft_types.py"

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.AddEnumMember, class_name="PeftType", member=reg.peft_type),
            # PEFT keeps a "Supported PEFT types" list in the docstring (not every method is in it); extend it.
            partial(t.AddDocstringItem, class_name="PeftType", item=reg.peft_type),
        ]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.RemoveDocstringItem, class_name="PeftType", item=reg.peft_type),
            partial(t.RemoveEnumMember, class_name="PeftType", member=reg.peft_type),
        ]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return source is not None and method.peft_type in peft_type_members(source)


def peft_type_members(source: str) -> list[str]:
    """The member names of `class PeftType` (read with `ast`: a check, not an edit)."""
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise ScaffoldError(PeftTypeSite.relpath, f"is not valid Python (line {exc.lineno}: {exc.msg})") from exc
    cls = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == "PeftType"), None)
    if cls is None:
        raise ScaffoldError(PeftTypeSite.relpath, "expected `class PeftType(...)` with string members")
    targets = [assigned_targets(node) for node in cls.body]
    return [found[0].id for found in targets if len(found) == 1 and isinstance(found[0], ast.Name)]


# -- 2. tuners/__init__.py -------------------------------------------------------------------------------------------


class TunersInitSite(EditSite, TunerSite):
    name = "tuners_init"
    relpath = "src/peft/tuners/__init__.py"

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.AddPackageImport, package=reg.name, names=reg.exported),
            partial(t.AddToDunderAll, names=reg.exported),
        ]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.RemoveFromDunderAll, names=reg.exported),
            partial(t.RemovePackageImport, package=reg.name),
        ]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return _imported_and_exported(source, self.relpath, method.name, method.exported)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return _no_package(method)


# -- 3. peft/__init__.py ---------------------------------------------------------------------------------------------


class PeftInitSite(EditSite, TunerSite):
    name = "peft_init"
    relpath = "src/peft/__init__.py"

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.AddImportedNames, level=1, module="tuners", names=reg.exported),
            partial(t.AddToDunderAll, names=reg.exported),
        ]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.RemoveFromDunderAll, names=reg.exported),
            partial(t.RemoveImportedNames, level=1, module="tuners", names=reg.exported),
        ]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return _imported_and_exported(source, self.relpath, "tuners", method.exported)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return _no_package(method)


# -- 4. target-module mapping ----------------------------------------------------------------------------------------

LORA_MAPPING = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"
_MAPPING = re.compile(r"^TRANSFORMERS_MODELS_TO_\w+_TARGET_MODULES_MAPPING$")


def _lora_copy_block_end(body: Sequence[ast.stmt]) -> int | None:
    """The last statement of PEFT's "identical to LORA" block: the run of statements, without blank lines
    between them, that starts at the first `X = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()`."""
    start = next((i for i, node in enumerate(body) if _is_copy_of_lora(node)), None)
    if start is None:
        return None
    end = start
    while end + 1 < len(body) and body[end + 1].lineno == (body[end].end_lineno or 0) + 1:
        end += 1
    return end


def _is_copy_of_lora(node: ast.stmt) -> bool:
    """`X = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()`"""
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Attribute):
        return False
    owner = value.func.value
    return isinstance(owner, ast.Name) and owner.id == LORA_MAPPING and value.func.attr == "copy"


def _last_mapping(body: Sequence[ast.stmt]) -> int | None:
    """The last top-level statement assigning to (or into) a TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING."""
    last = None
    for i, node in enumerate(body):
        for target in assigned_targets(node):
            if isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Name) and _MAPPING.match(target.id):
                last = i
    return last


class ConstantsSite(EditSite, TunerSite):
    name = "constants"
    relpath = "src/peft/utils/constants.py"

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        const = reg.constant_name
        if reg.target_modules is None:
            # Same targets as LoRA: one line at the end of the "identical to LORA" block, like tinylora.
            code = f"{const} = {LORA_MAPPING}.copy()\n"
            if len(code) - 1 > _cst.LINE_LENGTH:
                code = f"{const} = (\n    {LORA_MAPPING}.copy()\n)\n"
            edit = partial(
                t.AddAssignment,
                name=const,
                code=code,
                anchor=_lora_copy_block_end,
                anchor_description=f"a block of `X = {LORA_MAPPING}.copy()` lines",
                blank_line_before=False,
            )
        else:
            # Own mapping: a dict after the last mapping, separated by a blank line, like WAVEFT/OSF.
            mapping = {k: list(v) if not isinstance(v, str) else v for k, v in reg.target_modules.items()}
            code = f"{const} = " + _cst.format_literal(mapping, 0, explode=True) + "\n"
            edit = partial(
                t.AddAssignment,
                name=const,
                code=code,
                anchor=_last_mapping,
                anchor_description="`TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING` assignments",
                blank_line_before=True,
            )
        return [edit]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [partial(t.RemoveAssignment, name=reg.constant_name)]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        if source is None:
            return False
        body = _cst.parse(source, self.relpath).body
        return all(_cst.find_assignment(body, c) is not None for c in method.constant_names)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return None if method.constant_names else "uses no target-module mapping"


# -- 5. re-exports of the mapping ------------------------------------------------------------------------------------


class ReexportSite(EditSite, TunerSite):
    """The mapping re-exported through `from .<module> import (...)` and `__all__` (PEFT does it for all but a few
    methods, e.g. hira and osf, so `doctor` treats it as optional)."""

    required = False

    def __init__(self, name: str, relpath: str, module: str) -> None:
        self.name, self.relpath, self.module = name, relpath, module

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        names = reg.constant_names
        return [
            partial(t.AddImportedNames, level=1, module=self.module, names=names),
            partial(t.AddToDunderAll, names=names),
        ]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        names = reg.constant_names
        return [
            partial(t.RemoveFromDunderAll, names=names),
            partial(t.RemoveImportedNames, level=1, module=self.module, names=names),
        ]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return _imported_and_exported(source, self.relpath, self.module, method.constant_names)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return None if method.constant_names else "uses no target-module mapping"


# -- tests -----------------------------------------------------------------------------------------------------------


class _RemoveUnusedImport(t.Edit):
    """Drop `names` from `from peft import (...)` when nothing else in the module uses them."""

    def __init__(self, context: t.EditContext, names: Sequence[str]) -> None:
        super().__init__(context)
        self.names = names

    def _removal(self, code: str) -> t.RemoveImportedNames:
        # counting in the text is much faster than matching every Name node of a big module
        unused = [n for n in self.names if len(re.findall(rf"\b{re.escape(n)}\b", code)) <= 1]
        return t.RemoveImportedNames(self.context, 0, "peft", unused)

    def transform_source(self, source: str, relpath: str) -> str | None:
        return self._removal(source).transform_source(source, relpath)

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        return self._removal(tree.code).transform_module_impl(tree)


class _RowsSite(EditSite, TunerSite):
    """Rows of a test-matrix list that name the method's config class (element `position` of each row); removing
    them drops the config's import too when nothing else uses it."""

    list_name: str
    position: int

    def _removal_banner(self, reg: MethodRegistration) -> dict[str, Any]:
        return {}

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        rows = partial(t.RemoveRows, name=self.list_name, position=self.position, cls=reg.config_cls)
        return [
            partial(rows, **self._removal_banner(reg)),
            partial(_RemoveUnusedImport, names=[reg.config_cls]),
        ]

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return source is not None and t.has_row(source, self.relpath, self.list_name, self.position, method.config_cls)


class TestConfigSite(_RowsSite):
    name = "test_config"
    relpath = "tests/test_config.py"
    list_name, position = "ALL_CONFIG_CLASSES", 0

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _tests_skip(tree)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return _tests_skip(tree) or _no_package(method)

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        row = t.literal_row((_cst.Code(reg.config_cls), dict(reg.config_mandatory_kwargs)))
        return [
            partial(t.AddImportedNames, level=0, module="peft", names=[reg.config_cls]),
            # PEFT's ALL_CONFIG_CLASSES is not sorted (then the row is appended), but keep it sorted if it ever is
            partial(t.AddRows, name="ALL_CONFIG_CLASSES", rows=[row], sorted_by_first=True),
        ]


# Methods with a target-module mapping that PEFT deliberately leaves out of the custom-model TEST_CASES.
NOT_CUSTOM_MODEL_TESTABLE = {
    "poly": "needs task ids in forward; tested in tests/test_poly.py",
}


class TestCustomModelsSite(_RowsSite):
    """A bannered block of TEST_CASES rows (desc, model id, Config, kwargs), appended at the end like PEFT does."""

    name = "test_custom_models"
    relpath = "tests/test_custom_models.py"
    list_name, position = "TEST_CASES", 2

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _tests_skip(tree) or (None if reg.test_cases else "no test cases given")

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        # PEFT's custom-model matrix covers methods injected by `target_modules` into arbitrary nn.Modules, i.e.
        # the ones with a target-module mapping; prompt learning, X-LoRA, Shadow etc. are tested elsewhere.
        if reason := _tests_skip(tree) or _no_package(method):
            return reason
        if not method.constant_names:
            return "not a target_modules tuner; not in the custom-model matrix"
        return NOT_CUSTOM_MODEL_TESTABLE.get(method.name)

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        rows = [
            t.literal_row((desc, model_id, _cst.Code(reg.config_cls), kwargs))
            for desc, model_id, kwargs in reg.test_cases
        ]
        return [
            partial(t.AddImportedNames, level=0, module="peft", names=[reg.config_cls]),
            partial(t.AddRows, name="TEST_CASES", rows=rows, banner=t.banner(reg.title)),
        ]

    def _removal_banner(self, reg: MethodRegistration) -> dict[str, Any]:
        return {"banner": t.banner(reg.title)}


class TestMultipleAdaptersSite(_RowsSite):
    """MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES rows: (desc, method name, Config, kwargs1, kwargs2). Optional in PEFT
    (methods without multi-adapter support, e.g. ln_tuning and osf, have none)."""

    name = "test_custom_models_multi"
    relpath = "tests/test_custom_models.py"
    list_name, position = "MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES", 2
    required = False

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _tests_skip(tree) or (None if reg.multiple_active_adapters_cases else "no multi-adapter cases given")

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return TestCustomModelsSite().doctor_skip_reason(tree, method)

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        rows = [
            t.literal_row((desc, reg.name, _cst.Code(reg.config_cls), k1, k2))
            for desc, k1, k2 in reg.multiple_active_adapters_cases
        ]
        return [
            partial(t.AddImportedNames, level=0, module="peft", names=[reg.config_cls]),
            partial(t.AddRows, name="MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES", rows=rows),
        ]


class MergeSkipSite(EditSite, TunerSite):
    """tests/testing_common.py: the config import and a `pytest.skip` branch in `_skip_if_merging_not_supported`, for
    methods that cannot be merged (PEFT lists Lily and ShadowPEFT there); see `merge_skip`."""

    name = "test_merge_skip"
    relpath = "tests/testing_common.py"
    required = False  # only methods that cannot merge are listed

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _tests_skip(tree) or (None if not reg.mergeable else "the method can be merged")

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        if reason := _tests_skip(tree) or _no_package(method):
            return reason
        return None if self.doctor_is_registered(tree, method) else "only methods that cannot be merged are listed"

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return source is not None and bool(method.config_cls) and has_skip_branch(source, method.config_cls)

    def edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(t.AddImportedNames, level=0, module="peft", names=[reg.config_cls]),
            partial(AddSkipBranch, config_cls=reg.config_cls, title=reg.title),
        ]

    def inverse_edits(self, reg: MethodRegistration) -> list[EditFactory]:
        return [
            partial(RemoveSkipBranch, config_cls=reg.config_cls, title=reg.title),
            partial(_RemoveUnusedImport, names=[reg.config_cls]),
        ]


# -- 8. docs ---------------------------------------------------------------------------------------------------------

DOCS_DIR = "docs/source/package_reference"

_LICENSE = """<!--Copyright {year} The HuggingFace Team. All rights reserved.

Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
the License. You may obtain a copy of the License at

http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed on
an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for the
specific language governing permissions and limitations under the License.

⚠️ Note that this file is in Markdown but contain specific syntax for our doc-builder (similar to MDX) that may not be
rendered properly in your Markdown viewer.

-->
"""


def _docs_skip(tree: PeftTree) -> str | None:
    return None if tree.has_docs else "tree has no docs/"


def docs_page(reg: MethodRegistration, year: int | None = None) -> str:
    """The package_reference page, in the layout of PEFT's method pages (tinylora.md, supertuning.md): the one the
    generator rendered, else a minimal one."""
    if reg.docs_page:
        return reg.docs_page
    parts = [_LICENSE.format(year=year or datetime.date.today().year), f"# {reg.title}\n"]
    if reg.docs_summary.strip():
        parts.append(reg.docs_summary.strip() + "\n")
    for cls, module in ((reg.config_cls, "config"), (reg.model_cls, "model")):
        parts.append(f"## {cls}\n\n[[autodoc]] tuners.{reg.name}.{module}.{cls}\n")
    return "\n".join(parts)


class DocsPageSite(TunerSite):
    name = "docs_page"
    relpath = DOCS_DIR + "/{name}.md"

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _docs_skip(tree)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return _docs_skip(tree) or _no_package(method)

    def apply(self, source: str | None, reg: MethodRegistration) -> str:
        return source if source is not None else docs_page(reg)  # an existing page is the author's

    def remove(self, source: str | None, reg: MethodRegistration) -> None:
        return None

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        return source is not None and f"[[autodoc]] tuners.{method.name}." in source

    def doctor_is_registered(self, tree: PeftTree, method: DiscoveredMethod) -> bool:
        return find_docs_page(tree, method.name) is not None


def find_docs_page(tree: PeftTree, method_name: str) -> str | None:
    """The page documenting a method: PEFT names some pages differently (ln_tuning -> layernorm_tuning.md)."""
    directory = tree.root / DOCS_DIR
    own = directory / f"{method_name}.md"
    marker = f"[[autodoc]] tuners.{method_name}."
    if own.is_file() and marker in own.read_text(encoding="utf-8"):
        return f"{DOCS_DIR}/{method_name}.md"
    for page in sorted(directory.glob("*.md")):
        if marker in page.read_text(encoding="utf-8"):
            return f"{DOCS_DIR}/{page.name}"
    return None


class DocsToctreeSite(TunerSite):
    """Entries in the toctree's method lists (see `toctree`, which edits the YAML as lines)."""

    name = "docs_toctree"
    relpath = TOCTREE

    def skip_reason(self, tree: PeftTree, reg: MethodRegistration) -> str | None:
        return _docs_skip(tree)

    def doctor_skip_reason(self, tree: PeftTree, method: DiscoveredMethod) -> str | None:
        return _docs_skip(tree) or _no_package(method)

    def apply(self, source: str | None, reg: MethodRegistration) -> str:
        from scaffold.register import toctree  # ruamel.yaml is imported only for trees that have docs

        return toctree.add_entry(self._require(source, reg.name), f"package_reference/{reg.name}", reg.title)

    def remove(self, source: str | None, reg: MethodRegistration) -> str:
        from scaffold.register import toctree

        return toctree.remove_entry(self._require(source, reg.name), f"package_reference/{reg.name}")

    def is_registered(self, source: str | None, method: MethodNames) -> bool:
        from scaffold.register import toctree

        return source is not None and f"package_reference/{method.name}" in toctree.listed_pages(source)

    def doctor_is_registered(self, tree: PeftTree, method: DiscoveredMethod) -> bool:
        from scaffold.register import toctree

        page = find_docs_page(tree, method.name)
        toc = tree.root / self.relpath
        if page is None or not toc.is_file():
            return False
        local = page.removeprefix("docs/source/").removesuffix(".md")
        return local in toctree.listed_pages(toc.read_text(encoding="utf-8"))


# -- the list ----------------------------------------------------------------------------------------------------------

SITES: list[TunerSite] = [
    PeftTypeSite(),
    TunersInitSite(),
    PeftInitSite(),
    ConstantsSite(),
    ReexportSite("reexport_other", "src/peft/utils/other.py", "constants"),
    ReexportSite("reexport_utils", "src/peft/utils/__init__.py", "other"),
    TestConfigSite(),
    TestCustomModelsSite(),
    TestMultipleAdaptersSite(),
    MergeSkipSite(),
    DocsPageSite(),
    DocsToctreeSite(),
]
