"""An installed wheel (not only an editable checkout) finds its templates and reference specs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("peft_scaffold-*.whl")
    return built


def test_wheel_ships_templates_and_reference_specs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (REPO / "templates").rglob("*.j2"):
        assert f"scaffold/templates/{template.relative_to(REPO / 'templates').as_posix()}" in names
    assert "scaffold/reference_methods/lora.yaml" in names
    assert any(name.endswith("entry_points.txt") for name in names)


def test_installed_wheel_generates(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import scaffold, sys; from scaffold.cli import main; "
        "assert scaffold.__file__.startswith(sys.argv[1]), scaffold.__file__; "
        "from scaffold.resources import reference_spec; "
        "sys.argv = ['peft-scaffold', 'new', str(reference_spec('lora')), '--out', sys.argv[2]]; main()"
    )
    out = tmp_path / "out"
    # run from an unrelated directory with only the installed copy on the path
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target), str(out)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "reflora" / "layer.py").is_file()
