"""`kind: lora_layer` in a real PEFT 0.21.2 tree: the layer types registered in `dispatch_default` work with the tree's
own peft (a subprocess with PYTHONPATH=TREE/src, never the peft installed here), and `remove` restores the tree.

- the same independent numeric check as the out-of-tree test (`numeric_report` in tests/test_lora_layer.py), now
  with a plain `LoraConfig` (no `_register_custom_module`);
- (slow) the generated tests and examples, run inside the tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.verify.checks import run_pytest, tree_env
from tests.conftest import snapshot_tree
from tests.test_lora_layer import BAG_SPEC, CONVT_SPEC, assert_report


REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
MARKER = "LORA_LAYER_REPORT: "

_SCRIPT = f"""
import json, sys
from pathlib import Path
import peft
tree = Path(sys.argv[1]).resolve()
assert tree / "src" in Path(peft.__file__).resolve().parents, peft.__file__
from peft.tuners.lora import ConvTranspose2d, EmbeddingBag
from tests.test_lora_layer import numeric_report
report = numeric_report({{"ConvTranspose2d": ConvTranspose2d, "EmbeddingBag": EmbeddingBag}}, register=False)
print({MARKER!r} + json.dumps(report))
"""


def _without_bytecode(snapshot: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """Running Python in the tree leaves __pycache__ directories; they are not part of the source tree."""
    return {k: v for k, v in snapshot.items() if "__pycache__" not in k.split("/")}


def _generate(tree: Path) -> None:
    for spec in (CONVT_SPEC, BAG_SPEC):
        result = runner.invoke(app, ["new", str(spec), "--peft-root", str(tree)])
        assert result.exit_code == 0, result.output


@pytest.fixture
def tree(peft_tree: Path) -> Path:
    (peft_tree / "tests" / "__init__.py").touch()  # run_pytest does this too: PEFT's tests import `tests.*`
    return peft_tree


def test_in_tree_layers_match_the_functional_computation_and_remove_restores_the_tree(tree, monkeypatch):
    monkeypatch.setenv("PEFT_SCAFFOLD_SKIP_IMPORT_CHECK", "1")  # tested in test_lora_layer.py
    original = snapshot_tree(tree)
    _generate(tree)

    env = tree_env(tree)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(REPO)])
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tree)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert_report(json.loads(lines[-1][len(MARKER) :]))

    for name in ("embeddingbag", "convtranspose2d"):  # the reverse order of generation this time
        removed = runner.invoke(app, ["remove", name, "--peft-root", str(tree)])
        assert removed.exit_code == 0, removed.output
    assert _without_bytecode(snapshot_tree(tree)) == _without_bytecode(original)


@pytest.mark.slow
def test_generated_tests_and_examples_pass_in_the_tree(tree, monkeypatch):
    monkeypatch.setenv("PEFT_SCAFFOLD_SKIP_IMPORT_CHECK", "1")
    original = snapshot_tree(tree)
    _generate(tree)
    counts = run_pytest(tree, ["tests/test_lora_convtranspose2d.py", "tests/test_lora_embeddingbag.py"], workers=1)
    assert counts.ok and counts.failed == 0 and counts.errors == 0, counts.output_tail
    assert counts.passed == 28, counts.as_dict()
    for example in ("lora_convtranspose2d", "lora_embeddingbag"):
        proc = subprocess.run(
            [sys.executable, f"examples/{example}/{example}_example.py", "--steps", "2"],
            cwd=tree,
            env=tree_env(tree),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "outputs match" in proc.stdout
    for name in ("convtranspose2d", "embeddingbag"):
        assert runner.invoke(app, ["remove", name, "--peft-root", str(tree)]).exit_code == 0
    assert _without_bytecode(snapshot_tree(tree)) == _without_bytecode(original)
