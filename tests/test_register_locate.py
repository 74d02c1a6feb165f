"""Edits that read only part of a module (one statement, a window of a long list, an anchor statement) must give
exactly what the same edit gives on the whole parsed module."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from scaffold.changeset import read_text
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.sites import LORA_MAPPING, ConstantsSite, _RemoveUnusedImport
from scaffold.register import _cst
from scaffold.register import transforms as t
from scaffold.register.locate import Assignment, ImportFrom, statement_lines, surely_absent
from tests.conftest import fake_registration


REPO = Path(__file__).resolve().parent.parent


def whole_module(source: str, relpath: str, *edits: partial[t.Edit]) -> str:
    """The reference: every edit on the whole libcst module, as before any narrowing."""
    tree = _cst.parse(source, relpath)
    for make in edits:
        tree = make(t.EditContext(relpath)).transform_module(tree)
    return tree.code


# -- locate ----------------------------------------------------------------------------------------------------------


def test_statement_lines_splits_exactly_at_the_statement():
    source = 'import os\n\n# the exports\n__all__ = [\n    "a",  # first\n    "b",\n]  # done\n\nx = 1\n'
    found = statement_lines(source, Assignment("__all__"))
    assert found is not None
    assert found.text == '__all__ = [\n    "a",  # first\n    "b",\n]  # done\n'
    assert found.before == "import os\n\n# the exports\n" and found.after == "\nx = 1\n"
    assert found.node.lineno == 1 and found.node.end_lineno == 4  # positions count from the statement's start


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ('DOC = """\n__all__ = ["fake"]\n"""\n', "the only match is inside a string"),
        ('x = (\n1)\n__all__ = ["a"]; y = 2\n', "shares its line with another statement"),
        ('__all__ = names = ["a"]\n', "two targets: not what the edits look for"),
        ("if True:\n    __all__ = ['a']\n", "not at the top level"),
        ("__all__ = [\n", "not valid Python"),
    ],
)
def test_statement_lines_refuses_look_alikes(source, why):
    assert statement_lines(source, Assignment("__all__")) is None, why


def test_a_look_alike_in_a_string_above_the_real_statement_is_not_taken():
    source = 'DOC = """\n__all__ = ["fake"]\n"""\n__all__ = ["real"]\n'
    # The first match is inside the string: the caller falls back to the whole module, which finds the real one.
    assert statement_lines(source, Assignment("__all__")) is None
    assert t.run(source, "m.py", partial(t.AddToDunderAll, names=["b"])).endswith('__all__ = ["b", "real"]\n')
    assert '"fake"' in t.run(source, "m.py", partial(t.AddToDunderAll, names=["b"]))


def test_scopes_match_what_the_edits_look_for():
    source = "from .tuners.lora import A\nfrom .tuners import (\n    B,\n)\nX: dict = {}\n"
    assert statement_lines(source, ImportFrom(1, "tuners"))[1] == "from .tuners import (\n    B,\n)\n"  # type: ignore[index]
    assert statement_lines(source, Assignment("X"))[1] == "X: dict = {}\n"  # type: ignore[index]
    assert surely_absent(source, ImportFrom(0, "peft")) and not surely_absent(source, Assignment("X"))


# -- narrowed edits equal whole-module edits on PEFT's own files ------------------------------------------------------

PEFT_FILES = {
    "src/peft/__init__.py": [
        partial(t.AddImportedNames, level=1, module="tuners", names=["ZzzConfig", "AaaModel"]),
        partial(t.AddToDunderAll, names=["ZzzConfig", "AaaModel"]),
    ],
    "src/peft/utils/other.py": [
        partial(t.AddImportedNames, level=1, module="constants", names=["TRANSFORMERS_MODELS_TO_AAA_MAPPING"]),
        partial(t.AddToDunderAll, names=["TRANSFORMERS_MODELS_TO_AAA_MAPPING"]),
    ],
    "tests/test_config.py": [
        partial(t.AddImportedNames, level=0, module="peft", names=["AaaConfig"]),
        partial(t.AddRows, name="ALL_CONFIG_CLASSES", rows=["(AaaConfig, {})"], sorted_by_first=True),
    ],
    "tests/test_custom_models.py": [
        partial(t.AddImportedNames, level=0, module="peft", names=["AaaConfig"]),
        partial(
            t.AddRows,
            name="TEST_CASES",
            rows=['("Aaa 1", "MLP", AaaConfig, {"target_modules": ["lin0"]})', '("Aaa 2", "MLP", AaaConfig, {})'],
            banner=t.banner("Aaa"),
        ),
        partial(
            t.AddRows,
            name="MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES",
            rows=['("Aaa same", "aaa", AaaConfig, {}, {})'],
        ),
    ],
}


@pytest.mark.parametrize("relpath", sorted(PEFT_FILES))
def test_narrowed_edits_equal_whole_module_edits(peft_sdist, relpath):
    source = read_text(peft_sdist / relpath)
    edits = PEFT_FILES[relpath]
    narrowed = t.run(source, relpath, *edits)
    assert narrowed != source
    assert narrowed == whole_module(source, relpath, *edits)
    assert t.run(narrowed, relpath, *edits) == narrowed  # idempotent, through the narrow path too


def test_rows_window_skips_rows_present_anywhere_in_the_list(peft_sdist):
    """The window shows only the first and last rows; rows already present in the middle must not be added."""
    relpath = "tests/test_custom_models.py"
    source = read_text(peft_sdist / relpath)
    middle_row = '("Vanilla MLP 1 LoRA", "MLP", LoraConfig, {"target_modules": ["lin0"]})'
    assert '"Vanilla MLP 1 LoRA"' in source
    edit = partial(t.AddRows, name="TEST_CASES", rows=[middle_row, '("New row", "MLP", LoraConfig, {})'])
    narrowed = t.run(source, relpath, edit)
    assert narrowed.count('"Vanilla MLP 1 LoRA"') == source.count('"Vanilla MLP 1 LoRA"')
    assert narrowed.count('"New row"') == 1
    assert narrowed == whole_module(source, relpath, edit)


@pytest.mark.parametrize("rows_before", [1, 2, 3, 6])
def test_rows_window_matches_whole_module_on_short_lists(rows_before):
    rows = "".join(f'    ("row {i}", {i}),  # row {i}\n    # about the next one\n' for i in range(rows_before))
    source = f"import os\n\nROWS = [\n{rows}]\n\nx = 1\n"
    edit = partial(t.AddRows, name="ROWS", rows=['("new", 9)'], banner=["# New #"])
    narrowed = t.run(source, "m.py", edit)
    assert narrowed == whole_module(source, "m.py", edit)
    assert '    # New #\n    ("new", 9),\n' in narrowed


# -- the constants edit: ast anchor, libcst on the anchor statement ---------------------------------------------------


def test_constants_edit_goes_after_the_lora_copy_block(peft_sdist):
    relpath = ConstantsSite.relpath
    source = read_text(peft_sdist / relpath)
    reg = fake_registration()
    new = ConstantsSite().apply(source, reg)
    added = f"{reg.constant_name} = {LORA_MAPPING}.copy()\n"
    assert new.count(added) == 1 and new.replace(added, "", 1) == source
    lines = new.splitlines()
    at = lines.index(added.rstrip("\n"))
    assert lines[at - 1].endswith(f"{LORA_MAPPING}.copy()") and lines[at + 1] == ""  # end of the block
    assert ConstantsSite().apply(new, reg) == new


def test_constants_edit_refuses_an_anchor_sharing_its_line():
    source = f"{LORA_MAPPING} = {{}}\nA = {LORA_MAPPING}.copy(); B = 1\n"
    edit = partial(
        t.AddAssignment,
        name="C",
        code=f"C = {LORA_MAPPING}.copy()\n",
        anchor=lambda body: 1,
        anchor_description="the anchor",
        blank_line_before=False,
    )
    with pytest.raises(ScaffoldError, match="the anchor on lines of their own"):
        t.run(source, "constants.py", edit)


def test_new_imports_no_codemod_framework_and_no_yaml_for_trees_without_docs(peft_tree):
    """What keeps `new --peft-root` fast (see benchmarks/bench_generate.py): neither libcst.matchers nor
    libcst.codemod (0.35 s of import), and ruamel.yaml only when the tree has docs."""
    code = f"""
import sys
from scaffold.cli import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, ["new", {str(REPO / "reference_methods/lora.yaml")!r}, "--peft-root", {str(peft_tree)!r}])
assert result.exit_code == 0, result.output
print(sorted(m for m in ("libcst.matchers", "libcst.codemod", "ruamel.yaml") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"


def test_removal_edits_narrow_too(peft_sdist):
    """`remove` reads only the statements it edits, and still equals the whole-module edit."""
    relpath = "tests/test_custom_models.py"
    source = read_text(peft_sdist / relpath)
    add = PEFT_FILES[relpath]
    added = t.run(source, relpath, *add)
    remove = [
        partial(t.RemoveRows, name="TEST_CASES", position=2, cls="AaaConfig", banner=t.banner("Aaa")),
        partial(t.RemoveRows, name="MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES", position=2, cls="AaaConfig"),
        partial(_RemoveUnusedImport, names=["AaaConfig"]),
    ]
    made = [make(t.EditContext(relpath)) for make in remove]
    assert all(edit.reads_part for edit in made)
    assert t.run(added, relpath, *remove) == whole_module(added, relpath, *remove) == source
