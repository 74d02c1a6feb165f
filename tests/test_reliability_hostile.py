"""Hostile specs and trees: each ends in one line on stderr and exit 2 within seconds, with nothing changed in the
tree and nothing written outside it (the current directory and the temp directory stay empty)."""

from __future__ import annotations

import ast
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.render import Layout
from scaffold.render.format import format_sources
from tests.conftest import snapshot_tree


REPO = Path(__file__).resolve().parent.parent
BASE = (REPO / "tests" / "specs" / "hadamard.yaml").read_text(encoding="utf-8")  # name: hadalow
SPEC = REPO / "reference_methods" / "lora.yaml"
runner = CliRunner()


def billion_laughs() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text + "name: *i\n"


HOSTILE_SPECS = {
    "billion_laughs": (billion_laughs(), "anchors and aliases"),
    "one_alias": (BASE + "extra: &x 1\nmore: *x\n", "anchors and aliases"),
    "too_large": (BASE + "# " + "x" * 300_000 + "\n", "too large"),
    "deep_yaml": (BASE + "extra: " + "[" * 5000 + "]" * 5000 + "\n", "nest"),
    "deep_yaml_mappings": (BASE + "extra:\n" + "".join("  " * i + f"k{i}:\n" for i in range(80)), "nested too deeply"),
    "many_nodes": (BASE + "extra: [" + ",".join(["1"] * 60_000) + "]\n", "too many YAML nodes"),
    "deep_expression": (BASE.replace("(w1a @ w1b) * (w2a @ w2b) * scale", "-" * 50_000 + "w1a"), ""),
    "long_expression": (BASE.replace("(w1a @ w1b) * (w2a @ w2b) * scale", "+".join(["w1a"] * 20_000)), ""),
    "long_name": (BASE.replace("name: hadalow", "name: " + "a" * 300), "too long (300 characters; at most 40)"),
    "python_tag": (BASE + "extra: !!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
}


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory and an empty temp directory, checked by `assert_nothing_outside`."""
    cwd = tmp_path / "cwd"
    tmp = tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path


def assert_nothing_outside(isolated: Path) -> None:
    assert list((isolated / "cwd").iterdir()) == []
    assert list((isolated / "tmp").iterdir()) == []


def assert_one_line_error(result, code: int = 2, contains: str = "") -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(HOSTILE_SPECS))
def test_hostile_spec_is_one_line_exit_2_and_writes_nothing(case: str, peft_tree: Path, isolated: Path) -> None:
    text, message = HOSTILE_SPECS[case]
    spec = isolated / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    before = snapshot_tree(peft_tree)
    for args in (["check", str(spec)], ["new", str(spec), "--peft-root", str(peft_tree), "--force"]):
        started = time.monotonic()
        result = runner.invoke(app, args)
        assert time.monotonic() - started < 20
        assert_one_line_error(result, contains=message)
    assert snapshot_tree(peft_tree) == before
    spec.unlink()
    assert_nothing_outside(isolated)


def test_billion_laughs_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    """In a fresh interpreter limited to 2 GiB of address space (the expanded document would need far more)."""
    spec = tmp_path / "bomb.yaml"
    spec.write_text(billion_laughs(), encoding="utf-8")
    assert spec.stat().st_size < 2048

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "scaffold.cli", "check", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,  # noqa: PLW1509 - no threads here
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "aliases" in proc.stderr and "lol" not in proc.stderr
    assert elapsed < 30  # about the interpreter's start; the expansion would take minutes


def test_spec_file_name_with_a_line_break_is_refused(peft_tree: Path, isolated: Path) -> None:
    spec = isolated / "evil\nimport os\nos.system('echo pwned')\n#.yaml"
    spec.write_text(BASE, encoding="utf-8")
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree)])
    assert_one_line_error(result, contains="control characters")
    assert snapshot_tree(peft_tree) == before
    spec.unlink()
    assert_nothing_outside(isolated)


def test_header_escapes_line_breaks_in_the_spec_file_name(tmp_path: Path) -> None:
    """Defence in depth, for callers that render without `load_spec`: the name cannot end the comment."""
    from scaffold.core.generate import generate
    from scaffold.kinds import kind_of
    from scaffold.spec.load import parse_spec

    spec = parse_spec(BASE)
    spec_path = tmp_path / "x\nimport os\r#.yaml"
    generation = generate(kind_of(spec.kind, "spec"), spec, spec_path, tmp_path / "out", Layout.STANDALONE)
    checked = 0
    for rel, text in generation.files.items():
        if rel.endswith(".py"):
            module = ast.parse(text)
            assert not any(isinstance(node, ast.Import) and node.names[0].name == "os" for node in module.body), rel
            assert "# Generated by peft-scaffold from `x?import os?#.yaml`." in text
            checked += 1
    assert checked >= 4


def test_a_name_whose_files_exist_in_the_tree_is_refused_even_with_force(peft_tree: Path, isolated: Path) -> None:
    spec = isolated / "auto.yaml"
    spec.write_text(BASE.replace("name: hadalow", "name: auto").replace("title: HadaLow", "title: AutoM"), "utf-8")
    assert (peft_tree / "tests" / "test_auto.py").is_file()  # PEFT's own
    before = snapshot_tree(peft_tree)
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["new", str(spec), "--peft-root", str(peft_tree), *extra])
        assert_one_line_error(result, contains="tests/test_auto.py: exists and was not generated by peft-scaffold")
    assert snapshot_tree(peft_tree) == before


def test_force_still_overwrites_files_it_generated(peft_tree: Path, isolated: Path) -> None:
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    layer = peft_tree / "src/peft/tuners/reflora/layer.py"
    generated = layer.read_text()
    layer.write_text(generated + "# edited\n")
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 2
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree), "--force"]).exit_code == 0
    assert layer.read_text() == generated
    assert_nothing_outside(isolated)


# -- hostile trees -----------------------------------------------------------------------------------------------


def test_symlinked_folder_leaving_the_tree_is_refused(peft_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside-tests"
    (peft_tree / "tests").rename(outside)
    (peft_tree / "tests").symlink_to(outside, target_is_directory=True)
    before, before_outside = snapshot_tree(peft_tree), snapshot_tree(outside)
    result = runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)])
    assert_one_line_error(result, contains="leads out of the tree through a symlink")
    assert snapshot_tree(peft_tree) == before and snapshot_tree(outside) == before_outside


def test_symlinked_registry_file_inside_the_tree_stays_a_link(peft_tree: Path) -> None:
    pristine = snapshot_tree(peft_tree)
    types = peft_tree / "src/peft/utils/peft_types.py"
    real = peft_tree / "src/peft/utils/real_peft_types.py"
    types.rename(real)
    types.symlink_to("real_peft_types.py")
    linked = snapshot_tree(peft_tree)
    assert runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)]).exit_code == 0
    assert types.is_symlink() and os.readlink(types) == "real_peft_types.py"
    assert 'REFLORA = "REFLORA"' in real.read_text()
    result = runner.invoke(app, ["remove", "reflora", "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    assert types.is_symlink() and snapshot_tree(peft_tree) == linked
    types.unlink()
    real.rename(types)
    assert snapshot_tree(peft_tree) == pristine


@pytest.mark.parametrize(
    "rel", ["tests/test_custom_models.py", "src/peft/utils/other.py", "src/peft/__init__.py", "tests/test_config.py"]
)
def test_syntax_error_in_a_registry_file_is_refused(rel: str, peft_tree: Path) -> None:
    path = peft_tree / rel
    lines = path.read_text().count("\n")
    path.write_text(path.read_text() + "def broken(:\n")
    before = snapshot_tree(peft_tree)
    result = runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)])
    assert_one_line_error(result, contains=f"{rel}:{lines + 1}: is not valid Python")
    assert snapshot_tree(peft_tree) == before


def test_formatting_leaves_no_cache_and_sweeps_folders_of_killed_runs(isolated: Path) -> None:
    tmp = isolated / "tmp"
    dead = tmp / "peft-scaffold-fmt-999999999-abc"  # no such process
    alive = tmp / f"peft-scaffold-fmt-{os.getpid()}-abc"  # a run in progress (this one)
    dead.mkdir()
    alive.mkdir()
    out = format_sources({"a.py": "import os\nx=1\n"})
    assert out["a.py"] == "x = 1\n"
    assert not dead.exists() and alive.exists()
    alive.rmdir()
    assert_nothing_outside(isolated)  # no .ruff_cache in the current directory
