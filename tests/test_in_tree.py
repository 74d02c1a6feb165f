"""End to end in a real PEFT 0.21.2 source tree: `new --peft-root`, then run what was generated.

For every spec (the reference LoRA and the generality specs in tests/specs/): the generated tests pass, and
ruff (PEFT's settings) and mypy report nothing on the generated code. For the reference LoRA, and for the specs
that exercise the generator's derived behaviour (a delta that reads `weight`, output and input scaling composed
like their merges, factored forwards on every layer type), PEFT's own test matrix (tests/test_custom_models.py,
tests/test_config.py) passes for the registered methods.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plan import build_plan
from scaffold.spec import load_spec
from scaffold.verify import lint_generated, run_pytest


REPO = Path(__file__).resolve().parent.parent
SPECS = [REPO / "reference_methods" / "lora.yaml", *sorted((REPO / "tests" / "specs").glob("*.yaml"))]
# Need the Hub, so they fail offline for every method (PEFT's own tests, not ours).
OFFLINE_DESELECT = "not from_pretrained and not runtime_config"

pytestmark = pytest.mark.slow


def _generate(spec: Path, tree: Path):
    result = CliRunner().invoke(app, ["new", str(spec), "--peft-root", str(tree)])
    assert result.exit_code == 0, result.output
    return build_plan(load_spec(spec))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_generated_tests_pass_and_code_is_lint_clean(spec, peft_tree):
    plan = _generate(spec, peft_tree)
    test_file = f"tests/test_{plan.name}.py"
    counts = run_pytest(peft_tree, [test_file])
    assert counts.failed == 0 and counts.errors == 0, counts.output_tail
    assert counts.passed >= 10 * len(plan.spec.layers)

    report = lint_generated(peft_tree, [f"src/peft/tuners/{plan.name}", test_file, f"examples/{plan.name}"])
    assert report.ok, (report.findings, report.ruff_check, report.mypy)


def test_peft_own_matrix_passes_for_reference_lora(peft_tree):
    plan = _generate(SPECS[0], peft_tree)
    custom = run_pytest(peft_tree, ["tests/test_custom_models.py", "-k", plan.class_name])
    assert custom.failed == 0 and custom.errors == 0, custom.output_tail
    assert custom.passed > 300  # the method's rows really ran through PEFT's whole custom-model matrix

    config = run_pytest(peft_tree, ["tests/test_config.py", "-k", f"{plan.config_cls} and {OFFLINE_DESELECT}"])
    assert config.failed == 0 and config.errors == 0, config.output_tail
    assert config.passed > 10


# Methods whose correctness rests on what the generator derives (see docs/spec.md): all registered in one tree and
# run through PEFT's matrix together (one collection of PEFT's big test modules instead of four).
DERIVED_SPECS = [REPO / "tests" / "specs" / f"{stem}.yaml" for stem in ("normdelta", "scaler", "inscale", "factored")]


def test_peft_own_matrix_passes_for_derived_behaviour_specs(peft_tree):
    plans = [_generate(spec, peft_tree) for spec in DERIVED_SPECS]
    selected = " or ".join(plan.class_name for plan in plans)
    custom = run_pytest(peft_tree, ["tests/test_custom_models.py", "-k", selected])
    assert custom.failed == 0 and custom.errors == 0, custom.output_tail
    # 331 + 331 + 227 + 435 cases pass in PEFT 0.21.2: fewer than 1200 means some method's rows did not run
    assert custom.passed > 1200, custom.output_tail

    configs = " or ".join(plan.config_cls for plan in plans)
    config = run_pytest(peft_tree, ["tests/test_config.py", "-k", f"({configs}) and {OFFLINE_DESELECT}"])
    assert config.failed == 0 and config.errors == 0, config.output_tail
    assert config.passed > 10 * len(plans)


@pytest.mark.parametrize("version", ["0.20.0", "0.19.1"])
def test_reference_lora_in_older_supported_trees(version, make_peft_tree):
    tree = make_peft_tree(version)
    plan = _generate(SPECS[0], tree)
    counts = run_pytest(tree, [f"tests/test_{plan.name}.py"])
    assert counts.failed == 0 and counts.errors == 0, counts.output_tail
    assert counts.passed >= 10 * len(plan.spec.layers)
