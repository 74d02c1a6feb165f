"""The PEFT sdist cache (no network: downloads are simulated)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

import scaffold.peft_source as peft_source
from scaffold.errors import ScaffoldError
from scaffold.peft_source import copy_peft_tree, default_cache_dir, ensure_peft_sdist


def make_sdist(path: Path, version: str, with_tests: bool = True) -> None:
    members = {f"peft-{version}/src/peft/__init__.py": f'__version__ = "{version}"\n'}
    if with_tests:
        members[f"peft-{version}/tests/test_x.py"] = "def test_x():\n    pass\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def fake_pip(monkeypatch: pytest.MonkeyPatch, version: str, returncode: int = 0) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if returncode == 0:
            make_sdist(Path(cmd[cmd.index("-d") + 1]) / f"peft-{version}.tar.gz", version)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found for peft")

    monkeypatch.setattr(peft_source.subprocess, "run", run)
    return calls


def test_downloads_once_then_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = fake_pip(monkeypatch, "0.21.2")
    root = ensure_peft_sdist("0.21.2", cache_dir=tmp_path)
    assert root == tmp_path / "peft-0.21.2"
    assert (root / "src" / "peft" / "__init__.py").read_text() == '__version__ = "0.21.2"\n'
    assert calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "--no-binary"]
    assert "peft==0.21.2" in calls[0]
    assert ensure_peft_sdist("0.21.2", cache_dir=tmp_path) == root
    assert len(calls) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []  # no temporary download/extract directories


def test_cached_tarball_is_extracted_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = fake_pip(monkeypatch, "0.20.0")
    make_sdist(tmp_path / "peft-0.20.0.tar.gz", "0.20.0")
    assert ensure_peft_sdist("0.20.0", cache_dir=tmp_path).name == "peft-0.20.0"
    assert calls == []


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PEFT_SCAFFOLD_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PEFT_SCAFFOLD_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "peft-scaffold"


def test_download_failure_is_a_scaffold_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake_pip(monkeypatch, "9.9.9", returncode=1)
    with pytest.raises(ScaffoldError) as excinfo:
        ensure_peft_sdist("9.9.9", cache_dir=tmp_path)
    assert str(excinfo.value) == "peft==9.9.9: pip download failed: ERROR: No matching distribution found for peft"
    assert excinfo.value.exit_code == 1
    assert not (tmp_path / "peft-9.9.9.tar.gz").exists()


def test_broken_archives_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake_pip(monkeypatch, "0.1.0")
    (tmp_path / "peft-0.1.0.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ScaffoldError, match="cannot extract"):
        ensure_peft_sdist("0.1.0", cache_dir=tmp_path)
    make_sdist(tmp_path / "peft-0.2.0.tar.gz", "0.2.0", with_tests=False)
    with pytest.raises(ScaffoldError, match="has no src/peft and tests/"):
        ensure_peft_sdist("0.2.0", cache_dir=tmp_path)


def test_copy_is_fresh_and_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake_pip(monkeypatch, "0.21.2")
    root = ensure_peft_sdist("0.21.2", cache_dir=tmp_path / "cache")
    (root / "src" / "peft" / "__pycache__").mkdir()
    (root / "src" / "peft" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / "src" / "peft" / "__init__.py").chmod(0o444)
    copy = copy_peft_tree(root, tmp_path / "copy")
    assert (copy / "src" / "peft" / "__init__.py").stat().st_mode & 0o200
    assert not (copy / "src" / "peft" / "__pycache__").exists()
    with pytest.raises(ScaffoldError, match="already exists"):
        copy_peft_tree(root, tmp_path / "copy")
    with pytest.raises(ScaffoldError, match="not a PEFT source tree"):
        copy_peft_tree(tmp_path / "cache", tmp_path / "other")
