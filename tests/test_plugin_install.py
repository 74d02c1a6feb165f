"""The reference LoRA as a plugin, installed with pip into a fresh virtual environment next to stock PEFT from PyPI:
its README's commands as written (install, usage, the plugin's own tests, ruff, mypy), save -> reload -> equal
outputs with a non-trivial adapter effect, and each PEFT minor release the plugin declares (and one it refuses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plugin import PEFT_TESTED, PEFT_TOO_OLD


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # always pinned, and installed first: an unpinned torch pulls GBs of CUDA wheels
PEFT = "0.21.2"

# Trains, saves and reloads an adapter on a tiny Llama; prints the numbers the test checks.
ROUND_TRIP = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
import peft_reflora
from peft import PeftModel, get_peft_model

def base():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=100)).eval()

ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    reference = base()(input_ids=ids).logits
model = get_peft_model(base(), peft_reflora.RefLoraConfig(target_modules=["q_proj", "v_proj"], r=4))
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
for _ in range(3):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    trained = model(input_ids=ids).logits
    model.save_pretrained(sys.argv[1])
    loaded = PeftModel.from_pretrained(base(), sys.argv[1]).eval()
    reloaded = loaded(input_ids=ids).logits
print(json.dumps({
    "effect": (trained - reference).abs().max().item(),
    "reload_diff": (reloaded - trained).abs().max().item(),
    "peft_type": json.load(open(sys.argv[1] + "/adapter_config.json"))["peft_type"],
    "loaded_config": type(loaded.peft_config["default"]).__name__,
}))
"""


def _run(cmd: list[str] | str, *, env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        executable="/bin/bash" if isinstance(cmd, str) else None,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict[str, str]:
    """A fresh virtual environment with torch (CPU, pinned) and PEFT from PyPI; the environment to run in it."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{root / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(root), PIP_DISABLE_PIP_VERSION_CHECK="1"
    )
    # pip compiles every module it installs to bytecode by default: half of installing torch's CPU time, and most of
    # it for modules these tests never import (Python compiles what they do import, once, on first import)
    env["PIP_NO_COMPILE"] = "1"
    _run(["pip", "install", "-q", TORCH], env=env, cwd=root)
    _run(["pip", "install", "-q", f"peft=={PEFT}"], env=env, cwd=root)
    _PEFT_IN[env["VIRTUAL_ENV"]] = PEFT
    return env


# The PEFT release installed in each environment (only `_use_peft` swaps it): a test asks for the release it needs
# rather than restoring the default after itself, so a run of these tests swaps PEFT once per release, not twice.
_PEFT_IN: dict[str, str] = {}


def _use_peft(env: dict[str, str], version: str, cwd: Path) -> None:
    if _PEFT_IN[env["VIRTUAL_ENV"]] != version:
        # peft's own requirements are the same across these releases: swap the package alone
        _PEFT_IN[env["VIRTUAL_ENV"]] = "?"  # unknown until pip is done
        _run(["pip", "install", "-q", "--no-deps", f"peft=={version}"], env=env, cwd=cwd)
        _PEFT_IN[env["VIRTUAL_ENV"]] = version


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin")
    result = CliRunner().invoke(app, ["new", str(REPO / "reference_methods" / "lora.yaml"), "--plugin", str(out)])
    assert result.exit_code == 0, result.output
    return out / "peft-reflora"


def _readme_blocks(readme: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def installed(venv, plugin) -> dict[str, str]:
    """The plugin installed by its README's install commands, as written (`pip install .` and an import)."""
    install = _readme_blocks((plugin / "README.md").read_text(), "bash")[0]
    assert "pip install ." in install
    assert "PeftType.REFLORA" in _run(install, env=venv, cwd=plugin)
    installed = _run(["python", "-c", "import peft; print(peft.__version__)"], env=venv, cwd=plugin)
    assert installed.strip() == PEFT  # `pip install .` kept the PEFT from PyPI
    return venv


def _round_trip(venv: dict[str, str], tmp: Path) -> dict:
    return json.loads(_run(["python", "-c", ROUND_TRIP, str(tmp / "adapter")], env=venv, cwd=tmp).splitlines()[-1])


def test_readme_commands_and_round_trip_with_peft_from_pypi(installed, plugin, tmp_path):
    venv = installed
    _use_peft(venv, PEFT, tmp_path)
    readme = (plugin / "README.md").read_text()
    _, development = _readme_blocks(readme, "bash")
    (usage,) = _readme_blocks(readme, "python")

    (tmp_path / "usage").mkdir()
    _run(["python", "-c", usage], env=venv, cwd=tmp_path / "usage")
    assert json.loads((tmp_path / "usage" / "reflora-adapter" / "adapter_config.json").read_text())["peft_type"] == (
        "REFLORA"
    )

    output = _run(development, env=venv, cwd=plugin)  # pip install -e ".[dev]", pytest, ruff, mypy
    counts = re.search(r"(\d+) passed", output)
    assert counts and int(counts.group(1)) >= 70 and " failed" not in output, output[-2000:]
    assert "Success: no issues found" in output

    result = _round_trip(venv, tmp_path)
    assert result["peft_type"] == "REFLORA" and result["loaded_config"] == "RefLoraConfig"
    assert result["effect"] > 1e-2  # the trained adapter changes the logits
    assert result["reload_diff"] == 0.0  # and the reloaded one gives exactly the same


@pytest.mark.parametrize("version", [v for v in PEFT_TESTED if v != PEFT])
def test_other_declared_peft_versions(installed, plugin, tmp_path, version):
    venv = installed
    _use_peft(venv, version, tmp_path)
    installed = _run(["python", "-c", "import peft; print(peft.__version__)"], env=venv, cwd=tmp_path)
    assert installed.strip() == version
    output = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env=venv, cwd=plugin)
    assert " failed" not in output and re.search(r"\d+ passed", output), output[-2000:]
    result = _round_trip(venv, tmp_path)
    assert result["effect"] > 1e-2 and result["reload_diff"] == 0.0


def test_a_peft_outside_the_declared_range_is_refused_on_import(installed, tmp_path):
    venv = installed
    _use_peft(venv, PEFT_TOO_OLD, tmp_path)
    proc = subprocess.run(
        ["python", "-c", "import peft_reflora"],
        env=venv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: peft-reflora supports peft>=0.19,<0.22, but peft {PEFT_TOO_OLD} is installed: "
        "pip install 'peft>=0.19,<0.22'"
    )
