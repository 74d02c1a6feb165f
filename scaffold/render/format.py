"""Format generated Python with ruff, using PEFT's own ruff settings (what `make style` does in PEFT)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from scaffold.errors import FAILURE, ScaffoldError


# PEFT's [tool.ruff] settings (pyproject.toml of PEFT 0.21.x), minus `required-version`.
PEFT_RUFF_CONFIG = """\
target-version = "py310"
line-length = 119

[lint]
preview = true
explicit-preview-rules = true
extend-select = ["C", "E", "F", "I", "UP", "W", "PT009", "RUF022", "RUF068"]
ignore = ["C901", "E501", "F841", "UP007", "C420", "UP045", "SIM118", "PLC0206", "RUF012", "B018", "SIM117",
          "BLE001", "SIM102", "PYI041"]

[lint.isort]
lines-after-imports = 2
known-first-party = ["peft"]
"""


def ruff_config(first_party: tuple[str, ...] = ()) -> str:
    """PEFT's settings; `first_party` adds the generated package when it lives outside `peft` (--out)."""
    names = ", ".join(f'"{name}"' for name in ("peft", *first_party))
    return PEFT_RUFF_CONFIG.replace('known-first-party = ["peft"]', f"known-first-party = [{names}]")


def ruff_binary() -> str:
    from ruff.__main__ import find_ruff_bin

    return str(find_ruff_bin())


def format_sources(files: dict[str, str], first_party: tuple[str, ...] = ()) -> dict[str, str]:
    """Sort imports, apply safe fixes and format every `.py` file; other files pass through."""
    python = {name: text for name, text in files.items() if name.endswith(".py")}
    if not python:
        return dict(files)
    tmp_root = tempfile.gettempdir()
    _sweep_stale(tmp_root)
    with tempfile.TemporaryDirectory(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=tmp_root) as tmp:
        root = Path(tmp)
        config = root / "ruff.toml"
        config.write_text(ruff_config(first_party))
        for name, text in python.items():
            path = root / "src" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        ruff = ruff_binary()
        src = str(root / "src")
        # --no-cache: ruff would otherwise leave a .ruff_cache/ in the current directory
        for args in (["check", "--fix", "--quiet", "--exit-zero", "--no-cache"], ["format", "--quiet", "--no-cache"]):
            proc = subprocess.run(
                [ruff, *args, "--config", str(config), src], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise ScaffoldError("ruff", f"could not format generated code: {proc.stderr.strip()}", FAILURE)
        out = dict(files)
        for name in python:
            out[name] = (root / "src" / name).read_text()
        return out


_TMP_PREFIX = "peft-scaffold-fmt-"


def _sweep_stale(tmp_root: str) -> None:
    """Remove the formatting folders of runs that were killed (their process is gone): `<prefix><pid>-<random>`."""
    try:
        names = [name for name in os.listdir(tmp_root) if name.startswith(_TMP_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(tmp_root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True
