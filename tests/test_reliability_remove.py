"""`remove` after hand edits: it refuses (exit 2, one line naming the file and line) when lines it inserted were
edited or a user's line sits among them, and when the tree still uses the method's names outside what it
generated; `--force` removes anyway. Nothing is changed when it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from tests.conftest import snapshot_tree


SPEC = Path(__file__).resolve().parent.parent / "reference_methods" / "lora.yaml"  # reflora
runner = CliRunner()


def _edit_line(path: Path, needle: str, new: str) -> int:
    lines = path.read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if needle in line)
    lines[number] = new
    path.write_text("".join(lines))
    return number + 1


def _insert_after(path: Path, needle: str, new: str) -> int:
    lines = path.read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if needle in line)
    lines.insert(number + 1, new)
    path.write_text("".join(lines))
    return number + 2


def _append(path: Path, text: str) -> int:
    before = path.read_text()
    path.write_text(before + text)
    return before.count("\n") + 1


CASES = {
    "edited member": (
        "src/peft/utils/peft_types.py",
        lambda p: _edit_line(p, 'REFLORA = "REFLORA"', '    REFLORA = "REF_LORA"\n'),
        "were edited since",
    ),
    "user row in the test block": (
        "tests/test_custom_models.py",
        lambda p: _insert_after(
            p, '("Vanilla MLP lin0 RefLoRA"', '    ("my row", "MLP", RefLoraConfig, {"target_modules": ["lin1"]}),\n'
        ),
        "were edited since",
    ),
    "user line using the member": (
        "src/peft/mapping.py",
        lambda p: _append(p, "\nMY_TYPE = PeftType.REFLORA\n") + 1,
        "still uses PeftType.REFLORA",
    ),
    "user test importing the config": (
        "tests/test_mine.py",
        lambda p: _append(p, "from peft import RefLoraConfig\n"),
        "still uses RefLoraConfig",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_remove_refuses_after_hand_edits_and_force_removes(case: str, peft_tree: Path) -> None:
    pristine = snapshot_tree(peft_tree)
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    rel, edit, message = CASES[case]
    path = peft_tree / rel
    if not path.exists():
        path.write_text("")
    line = edit(path)
    edited = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["remove", "reflora", "--peft-root", str(peft_tree)])
    assert result.exit_code == 2, result.output
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith(f"error: {rel}:{line}: ") and message in error and "--force" in error, error
    assert snapshot_tree(peft_tree) == edited

    forced = runner.invoke(app, ["remove", "reflora", "--peft-root", str(peft_tree), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (peft_tree / "src/peft/tuners/reflora").exists()
    if case == "user test importing the config":  # the user's file is theirs: kept, everything else pristine
        path.unlink()
        assert snapshot_tree(peft_tree) == pristine


def test_remove_of_an_untouched_method_still_restores_the_pristine_tree(peft_tree: Path) -> None:
    pristine = snapshot_tree(peft_tree)
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    result = runner.invoke(app, ["remove", "reflora", "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    assert snapshot_tree(peft_tree) == pristine


@pytest.mark.parametrize("name", ["../../etc", "a" * 300, "x\ny", ""])
def test_remove_refuses_names_that_are_not_method_names(name: str, peft_tree: Path) -> None:
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["remove", name, "--peft-root", str(peft_tree)])
    assert result.exit_code == 2
    (error,) = result.stderr.strip().splitlines()
    assert error.endswith("is not a method name"), error
    assert snapshot_tree(peft_tree) == before


def test_doctor_reports_missing_generated_files(peft_tree: Path) -> None:
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    ok = runner.invoke(app, ["doctor", "--peft-root", str(peft_tree), "reflora", "--json"])
    assert ok.exit_code == 0 and '"tree_problems": []' in ok.stdout
    (peft_tree / "tests" / "test_reflora.py").unlink()
    result = runner.invoke(app, ["doctor", "--peft-root", str(peft_tree), "reflora"])
    assert result.exit_code == 1
    assert "tests/test_reflora.py: generated file missing (listed in src/peft/tuners/reflora/.peft-scaffold.json)" in (
        " ".join(result.stdout.split())
    )


def test_remove_is_not_fooled_by_the_member_name_as_a_plain_word(peft_tree: Path, tmp_path: Path) -> None:
    """A method named like a word PEFT's own code uses (`DEFAULT` appears in utils/constants.py) is removed: only
    `PeftType.DEFAULT` would be a use of its member."""
    spec = tmp_path / "default.yaml"
    spec.write_text(SPEC.read_text().replace("name: reflora", "name: default"))
    pristine = snapshot_tree(peft_tree)
    assert runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)]).exit_code == 0
    result = runner.invoke(app, ["remove", "default", "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    assert snapshot_tree(peft_tree) == pristine
