"""docs/research-tutorial.md stays true: the spec, outputs and Python it shows are the real ones.

The spec shown is docs/examples/gatelora.yaml; `check` and `new --plugin` print what the page shows and write the
package layout it lists; the page's train.py and load.py run against the generated package on this environment's
stock peft (its `src/` on PYTHONPATH, no install); the spec edit of step 7 regenerates with `--force` as described.
Slow: the plugin's own tests pass, as many as the page says.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app


REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "research-tutorial.md"
SPEC = REPO / "docs" / "examples" / "gatelora.yaml"
runner = CliRunner()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TUTORIAL.read_text(), flags=re.MULTILINE | re.DOTALL)


def _console(command: str) -> list[str]:
    """The output lines the page shows under `$ <command>`."""
    (block,) = [b for b in _blocks("console") if b.startswith(f"$ {command}\n")]
    return block.splitlines()[1:]


def _invoke_in(cwd: Path, args: list[str]):
    """Run the CLI with relative paths, as the page does."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args)
    finally:
        os.chdir(old)


def _files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[str, Path]:
    """`new gatelora.yaml --plugin plugins` in a fresh directory: its output and the package directory."""
    work = tmp_path_factory.mktemp("research")
    shutil.copy(SPEC, work / "gatelora.yaml")
    result = _invoke_in(work, ["new", "gatelora.yaml", "--plugin", "plugins"])
    assert result.exit_code == 0, result.output
    return result.output, work / "plugins" / "peft-gatelora"


def _env(plugin: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(plugin / "src"), "HF_HUB_OFFLINE": "1"}


def test_the_spec_shown_is_docs_examples_gatelora_yaml():
    assert _blocks("yaml")[0] == SPEC.read_text()


def test_check_prints_what_the_tutorial_shows(tmp_path):
    shutil.copy(SPEC, tmp_path / "gatelora.yaml")
    result = _invoke_in(tmp_path, ["check", "gatelora.yaml"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    shown = [line for line in _console("peft-scaffold check gatelora.yaml") if line.strip() != "..."]
    assert len(shown) >= 5
    positions = [lines.index(line) for line in shown]  # each shown line is a real one ...
    assert positions == sorted(positions)  # ... in the real order
    assert lines[0] == shown[0]


def test_new_plugin_prints_and_writes_the_layout_shown(generated):
    output, plugin = generated
    assert output.splitlines() == _console("peft-scaffold new gatelora.yaml --plugin plugins")
    created = [line.split()[1] for line in output.splitlines() if line.strip().startswith("create")]
    assert [f"peft-gatelora/{f}" for f in _files(plugin)] == created


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = cwd / "script.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )


def test_the_usage_scripts_run_on_stock_peft_with_the_generated_package(generated, tmp_path):
    _, plugin = generated
    env = _env(plugin)
    train, load = _blocks("python")
    trained = _run(train, tmp_path, env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines, shown = trained.stdout.splitlines(), _console("python train.py")
    assert lines[0] == shown[0]  # the parameter count is exact; loss and gate values depend on the machine
    assert re.fullmatch(r"loss after 20 steps: \d+\.\d{3}", lines[1]), lines[1]
    assert [line.split(" [")[0] for line in lines[2:]] == [line.split(" [")[0] for line in shown[2:]]
    for line in lines[2:]:
        gates = [float(g) for g in line.split(" [")[1].rstrip("]").split(", ")]
        assert len(gates) == 4 and gates != [1.0] * 4  # r gates, trained away from their init
    config = (tmp_path / "gatelora-adapter" / "adapter_config.json").read_text()
    assert '"peft_type": "GATELORA"' in config

    loaded = _run(load, tmp_path, env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.splitlines() == _console("python load.py")

    # what the page says happens without the import
    without = load.replace("import peft_gatelora  # noqa: F401", "# import peft_gatelora")
    assert without != load
    failed = _run(without, tmp_path, env)
    assert failed.returncode != 0 and "KeyError: 'GATELORA'" in failed.stderr, failed.stderr[-3000:]


def test_the_spec_edit_regenerates_as_described(tmp_path):
    (edited_line,) = _blocks("yaml")[1].splitlines()
    text = SPEC.read_text()
    (old_line,) = [line for line in text.splitlines() if line.startswith("delta_weight:")]
    spec = tmp_path / "gatelora.yaml"
    spec.write_text(SPEC.read_text())
    assert _invoke_in(tmp_path, ["new", "gatelora.yaml", "--plugin", "plugins"]).exit_code == 0
    package = tmp_path / "plugins" / "peft-gatelora"
    (package / "NOTES.md").write_text("results\n")
    (package / "tests" / "test_gates.py").write_text("def test_mine():\n    pass\n")
    (package / "src" / "peft_gatelora" / "extra.py").write_text("X = 1\n")
    spec.write_text(text.replace(old_line, edited_line))

    check = _invoke_in(tmp_path, ["check", "gatelora.yaml"])
    assert check.exit_code == 0, check.output
    (forwards,) = [line for line in check.output.splitlines() if line.strip().startswith("forwards:")]
    assert forwards.count("factored") == 2 and "dense" not in forwards  # still factored, as the page says

    layer = package / "src" / "peft_gatelora" / "layer.py"
    before = layer.read_text()
    dry = _invoke_in(tmp_path, ["new", "gatelora.yaml", "--plugin", "plugins", "--force", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "+++ b/peft-gatelora/src/peft_gatelora/layer.py" in dry.output and "torch.sigmoid" in dry.output
    assert layer.read_text() == before and (package / "src" / "peft_gatelora" / "extra.py").exists()

    result = _invoke_in(tmp_path, ["new", "gatelora.yaml", "--plugin", "plugins", "--force"])
    assert result.exit_code == 0, result.output
    assert "modify  peft-gatelora/src/peft_gatelora/layer.py" in result.output
    assert "delete  peft-gatelora/src/peft_gatelora/extra.py" in result.output
    assert "torch.sigmoid" in layer.read_text() and "torch.sigmoid" not in before
    assert not (package / "src" / "peft_gatelora" / "extra.py").exists()
    assert (package / "NOTES.md").read_text() == "results\n" and (package / "tests" / "test_gates.py").exists()


@pytest.mark.slow
def test_the_plugin_s_own_tests_pass(generated):
    _, plugin = generated
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=plugin,
        env=_env(plugin),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (count,) = [line for line in _console("cd plugins/peft-gatelora && pytest -q") if "passed" in line]
    assert re.search(rf"\b{count}\b", run.stdout), run.stdout[-500:]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_page_s_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", TUTORIAL.read_text())
    local = [link for link in links if not link.startswith("http")]
    assert len(local) >= 8
    for link in local:
        target, _, anchor = link.partition("#")
        page = (TUTORIAL.parent / target).resolve() if target else TUTORIAL
        assert page.is_file(), link
        if anchor:
            assert anchor in _anchors(page), link
