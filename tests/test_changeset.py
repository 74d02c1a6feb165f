from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

import scaffold.journal as journal_mod
from scaffold.changeset import ChangeSet, FileChange
from scaffold.errors import ScaffoldError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_bytes(b"a = 1\r\nb = 2\r\n")  # CRLF must survive
    (root / "pkg" / "b.py").write_bytes(b"x = 1\n")
    (root / "pkg" / "tool.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "pkg" / "tool.sh").chmod(0o755)
    (root / "gone.txt").write_bytes(b"no trailing newline")
    return root


def full_changeset(root: Path) -> ChangeSet:
    cs = ChangeSet(root)
    cs.write("pkg/a.py", cs.read("pkg/a.py") + "c = 3\r\n")  # type: ignore[operator]
    cs.write("pkg/tool.sh", "#!/bin/sh\necho bye\n")
    cs.write("new/deep/dir/file.py", "created = True\n")
    cs.write("pkg/new.py", "also = 'created'\n")
    cs.delete("gone.txt")
    return cs


def test_read_sees_disk_then_pending(tree: Path) -> None:
    cs = ChangeSet(tree)
    assert cs.read("pkg/a.py") == "a = 1\r\nb = 2\r\n"
    assert cs.read("missing.py") is None
    cs.write("pkg/a.py", "first\n")
    cs.write("pkg/a.py", cs.read("pkg/a.py") + "second\n")  # type: ignore[operator]
    assert cs.read("pkg/a.py") == "first\nsecond\n"
    cs.delete("pkg/b.py")
    assert cs.read("pkg/b.py") is None
    assert not cs.exists("pkg/b.py")


def test_changes_only_lists_real_changes(tree: Path) -> None:
    cs = ChangeSet(tree)
    cs.write("pkg/b.py", "x = 1\n")  # same as disk
    cs.write("tmp.py", "x")
    cs.delete("tmp.py")  # created then deleted: nothing
    cs.delete("never-existed.py")
    assert cs.is_empty()
    assert cs.changes == []
    cs.write("pkg/b.py", "x = 2\n")
    assert cs.changes == [FileChange("pkg/b.py", "x = 1\n", "x = 2\n")]
    assert cs.changes[0].action == "modify"


def test_to_json(tree: Path) -> None:
    assert full_changeset(tree).to_json() == [
        {"path": "gone.txt", "action": "delete"},
        {"path": "new/deep/dir/file.py", "action": "create"},
        {"path": "pkg/a.py", "action": "modify"},
        {"path": "pkg/new.py", "action": "create"},
        {"path": "pkg/tool.sh", "action": "modify"},
    ]


def test_unified_diff(tree: Path) -> None:
    diff = full_changeset(tree).unified_diff()
    assert "--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-no trailing newline\n\\ No newline at end of file\n" in diff
    assert "--- /dev/null\n+++ b/new/deep/dir/file.py\n@@ -0,0 +1 @@\n+created = True\n" in diff
    assert "--- a/pkg/a.py\n+++ b/pkg/a.py\n" in diff
    assert " b = 2\r\n+c = 3\r\n" in diff
    assert "-echo hi\n+echo bye\n" in diff


def test_diff_keeps_form_feeds_inside_lines(tmp_path: Path) -> None:
    cs = ChangeSet(tmp_path)
    cs.write("f.txt", "a\x0cb\n")
    assert cs.unified_diff().endswith("+a\x0cb\n")


def test_render_diff_plain_when_piped(tree: Path) -> None:
    buf = io.StringIO()
    cs = full_changeset(tree)
    cs.render_diff(file=buf)
    assert buf.getvalue() == cs.unified_diff()


def test_render_diff_coloured_on_terminal(tree: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=200)
    full_changeset(tree).render_diff(console)
    out = buf.getvalue()
    assert "\x1b[" in out and "echo bye" in out


def test_apply(tree: Path) -> None:
    cs = full_changeset(tree)
    cs.apply()
    assert (tree / "pkg" / "a.py").read_bytes() == b"a = 1\r\nb = 2\r\nc = 3\r\n"
    assert (tree / "pkg" / "tool.sh").read_bytes() == b"#!/bin/sh\necho bye\n"
    assert (tree / "pkg" / "tool.sh").stat().st_mode & 0o777 == 0o755  # mode kept
    assert (tree / "new" / "deep" / "dir" / "file.py").read_text() == "created = True\n"
    assert (tree / "pkg" / "new.py").stat().st_mode & 0o077 == 0o644 & ~_umask() & 0o077  # not mkstemp's 0600
    assert not (tree / "gone.txt").exists()
    leftovers = [p.name for p in tree.rglob("*peft-scaffold*")]
    assert leftovers == []
    # the change set now describes the new disk state
    assert cs.is_empty()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_apply_deleting_last_file_prunes_empty_dirs(tree: Path) -> None:
    (tree / "method" / "sub").mkdir(parents=True)
    (tree / "method" / "sub" / "x.py").write_text("x\n")
    (tree / "method" / "y.py").write_text("y\n")
    cs = ChangeSet(tree)
    cs.delete("method/sub/x.py")
    cs.delete("method/y.py")
    cs.apply()
    assert not (tree / "method").exists()
    assert tree.exists()


def test_apply_refuses_if_disk_changed_since_planning(tree: Path, snapshot) -> None:
    cs = full_changeset(tree)
    (tree / "pkg" / "tool.sh").write_text("edited meanwhile\n")
    before = snapshot(tree)
    with pytest.raises(ScaffoldError, match="changed on disk"):
        cs.apply()
    assert snapshot(tree) == before


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original = getattr(journal_mod, name)

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(journal_mod, name, counting)
    return calls


def _fail_at(monkeypatch: pytest.MonkeyPatch, name: str, k: int) -> None:
    calls = [0]
    original = getattr(journal_mod, name)

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(journal_mod, name, failing)


@pytest.mark.parametrize("seam", ["_write_file", "_replace"])
def test_apply_rolls_back_byte_identically_on_failure_at_every_step(
    tree: Path, tmp_path: Path, snapshot, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    # Count how often the seam is used by a successful apply, on a copy.
    import shutil

    probe = tmp_path / "probe"
    shutil.copytree(tree, probe)
    with monkeypatch.context() as m:
        calls = _count_calls(m, seam)
        full_changeset(probe).apply()
    assert calls[0] >= 3

    before = snapshot(tree)
    for k in range(1, calls[0] + 1):
        with monkeypatch.context() as m:
            _fail_at(m, seam, k)
            with pytest.raises(ScaffoldError) as excinfo:
                full_changeset(tree).apply()
        assert excinfo.value.exit_code == 1
        assert "rolled back" in str(excinfo.value)
        assert snapshot(tree) == before, f"tree differs after failure at {seam} call {k}"


def test_paths_must_stay_inside_the_tree(tree: Path) -> None:
    cs = ChangeSet(tree)
    for bad in ("../outside.py", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ScaffoldError):
            cs.write(bad, "x")


def test_apply_prunes_bytecode_cache_of_emptied_dirs(tree: Path) -> None:
    (tree / "method" / "__pycache__").mkdir(parents=True)
    (tree / "method" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\x00\xff")
    (tree / "method" / "x.py").write_text("x\n")
    (tree / "keep" / "__pycache__").mkdir(parents=True)
    (tree / "keep" / "__pycache__" / "y.cpython-311.pyc").write_bytes(b"\x00")
    (tree / "keep" / "y.py").write_text("y\n")
    (tree / "keep" / "z.py").write_text("z\n")
    cs = ChangeSet(tree)
    cs.delete("method/x.py")
    cs.delete("keep/y.py")
    cs.apply()
    assert not (tree / "method").exists()
    assert (tree / "keep" / "__pycache__" / "y.cpython-311.pyc").exists()  # keep/ is not empty
