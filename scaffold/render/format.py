"""Format generated Python with ruff, using PEFT's own ruff settings (what `make style` does in PEFT)."""

from __future__ import annotations

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
    with tempfile.TemporaryDirectory(prefix="peft-scaffold-fmt-") as tmp:
        root = Path(tmp)
        config = root / "ruff.toml"
        config.write_text(ruff_config(first_party))
        for name, text in python.items():
            path = root / "src" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        ruff = ruff_binary()
        src = str(root / "src")
        for args in (["check", "--fix", "--quiet", "--exit-zero"], ["format", "--quiet"]):
            proc = subprocess.run(
                [ruff, *args, "--config", str(config), src], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise ScaffoldError("ruff", f"could not format generated code: {proc.stderr.strip()}", FAILURE)
        out = dict(files)
        for name in python:
            out[name] = (root / "src" / name).read_text()
        return out
