"""docs/tutorial.md stays true: the specs and outputs it shows are the real ones, and its method works.

Fast: the blank starter spec it shows is what `init --like blank` writes, the finished spec it shows is
docs/examples/customlora.yaml, the error it shows is what `check` says. Slow: the spec generated into a PEFT
0.21.2 tree, its generated tests pass, and the method's update is LoRA's scaled by (1 + custom_param).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.verify import run_pytest


REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "tutorial.md"
SPEC = REPO / "docs" / "examples" / "customlora.yaml"
runner = CliRunner()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TUTORIAL.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_starter_spec_shown_is_what_init_writes():
    result = runner.invoke(app, ["init", "customlora", "--like", "blank"])
    assert result.exit_code == 0, result.output
    assert _blocks("yaml")[0] == result.stdout


def test_the_finished_spec_shown_is_docs_examples_customlora_yaml():
    assert _blocks("yaml")[1] == SPEC.read_text()


def test_the_error_shown_is_what_check_says(tmp_path):
    (shown,) = [b for b in _blocks("console") if "lora_C" in b]
    command, expected = shown.splitlines()[:2]
    assert command.startswith("$ peft-scaffold check customlora.yaml")
    spec = tmp_path / "customlora.yaml"
    spec.write_text(SPEC.read_text().replace("delta_weight: lora_B @ lora_A", "delta_weight: lora_B @ lora_C"))
    result = runner.invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == " ".join(expected.replace("customlora.yaml", str(spec)).split())


def test_the_spec_generates_with_a_docs_page_that_says_when_to_use_it(tmp_path):
    result = runner.invoke(app, ["new", str(SPEC), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "docs" / "customlora.md").read_text()
    assert "## When to use CustomLoRA instead of LoRA" in page
    assert "custom_param = 0 it is LoRA" in " ".join(page.split())


_SCALED_LIKE_LORA = textwrap.dedent(
    """
    import torch
    from torch import nn

    from peft import CustomLoraConfig, LoraConfig, get_peft_model

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))

    x = torch.randn(5, 10)
    custom = get_peft_model(
        mlp(), CustomLoraConfig(target_modules=["0"], r=4, lora_alpha=8.0, custom_param=0.5, init_weights=False)
    )
    lora = get_peft_model(mlp(), LoraConfig(target_modules=["0"], r=4, lora_alpha=8.0, init_lora_weights=False))
    layer, lora_layer = custom.base_model.model[0], lora.base_model.model[0]
    with torch.no_grad():
        lora_layer.lora_A["default"].weight.copy_(layer.customlora_lora_A["default"])
        lora_layer.lora_B["default"].weight.copy_(layer.customlora_lora_B["default"])
    with torch.no_grad():  # the adapted layers themselves: the MLP's ReLU would not keep the ratio
        custom_delta, lora_delta = layer(x) - layer.base_layer(x), lora_layer(x) - lora_layer.base_layer(x)
    assert lora_delta.abs().max() > 1e-3  # a non-trivial adapter
    torch.testing.assert_close(custom_delta, 1.5 * lora_delta, rtol=1e-5, atol=1e-6)
    print("scaled by 1 + custom_param")
    """
)


@pytest.mark.slow
def test_the_tutorial_method_in_a_peft_tree(peft_tree):
    result = runner.invoke(app, ["new", str(SPEC), "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    # the tutorial's `verify` step (its numeric probe; the test suites are run below and in test_in_tree.py)
    result = runner.invoke(app, ["verify", str(SPEC), "--peft-root", str(peft_tree), "--fast"])
    assert result.exit_code == 0, result.output
    counts = run_pytest(peft_tree, ["tests/test_customlora.py"])
    assert counts.failed == 0 and counts.errors == 0, counts.output_tail
    assert counts.passed >= 10

    env = {**os.environ, "PYTHONPATH": str(peft_tree / "src"), "HF_HUB_OFFLINE": "1"}
    check = subprocess.run(
        [sys.executable, "-c", _SCALED_LIKE_LORA], env=env, capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "scaled by 1 + custom_param" in check.stdout
