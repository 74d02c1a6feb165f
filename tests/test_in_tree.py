"""End to end in a real PEFT 0.21.2 source tree: `new --peft-root`, then run what was generated.

For every spec (the reference LoRA and the generality specs in tests/specs/): the generated tests pass, and
ruff (PEFT's settings) and mypy report nothing on the generated code. For the reference LoRA, for the specs that
exercise the generator's derived behaviour (a delta that reads `weight`, output and input scaling composed like
their merges, factored forwards on every layer type), for the LoRA variants (DoRA and two unlike it, from
tests/test_lora_variant.py) and for a stand-in method registered by the registrar alone (a renamed clone of PEFT's
supertuning), PEFT's own test matrix (tests/test_custom_models.py, tests/test_config.py) passes for the registered
methods, each with its own count floor.

Cost: every method is generated into ONE tree, and each kind of check is ONE pytest (or ruff + mypy) run over all
of them; a PEFT run spends seconds of CPU importing torch and collecting PEFT's 20k tests before the first of the
selected ones runs. The JUnit report of the shared run says which file and method each test case belongs to
(`TestCounts.subset`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.peft_source import copy_peft_tree
from scaffold.plan import build_plan
from scaffold.plan.method import MethodPlan
from scaffold.spec import load_spec
from scaffold.verify import TestCounts as Counts  # (as Counts: pytest would try to collect a Test* class)
from scaffold.verify import lint_generated, run_pytest
from tests.conftest import register_fake_method


REPO = Path(__file__).resolve().parent.parent
SPECS = [REPO / "reference_methods" / "lora.yaml", *sorted((REPO / "tests" / "specs").glob("*.yaml"))]
# Need the Hub, so they fail offline for every method (PEFT's own tests, not ours).
OFFLINE_DESELECT = "not from_pretrained and not runtime_config"
# Methods whose correctness rests on what the generator derives (see docs/spec.md).
DERIVED_SPECS = [REPO / "tests" / "specs" / f"{stem}.yaml" for stem in ("normdelta", "scaler", "inscale", "factored")]
# LoRA variants (`LoraConfig(use_<name>=True)`): their class names select their rows of PEFT's matrix.
VARIANTS = ("RefDoRA", "RowScale", "DiagLoRA")
# The stand-in method of tests/conftest.py: its config class and PEFT's test_config tests that need the Hub.
STAND_IN, STAND_IN_CONFIG = "MySuper", "MySuperConfig"
HUB_TESTS = ("test_from_pretrained", "test_from_pretrained_cache_dir", "test_save_pretrained_with_runtime_config")

pytestmark = pytest.mark.slow


def _plan(spec: Path) -> MethodPlan:
    return build_plan(load_spec(spec))


def _new(spec: Path, tree: Path) -> None:
    result = CliRunner().invoke(app, ["new", str(spec), "--peft-root", str(tree)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def tree(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tree with every method of this file registered: the specs, the LoRA variants, the stand-in."""
    from tests.test_lora_variant import DIAG, DORA_SPEC, ROWSCALE

    base = tmp_path_factory.mktemp("in-tree")
    root = copy_peft_tree(peft_sdist, base / "peft")
    for spec in SPECS:
        _new(spec, root)
    for name, text in (("rowscale", ROWSCALE), ("diaglora", DIAG)):
        (base / f"{name}.yaml").write_text(text, encoding="utf-8")
    for spec in (DORA_SPEC, base / "rowscale.yaml", base / "diaglora.yaml"):
        _new(spec, root)
    register_fake_method(root)  # the stand-in, registered by the registrar alone (no generator)
    return root


def _module_is(module: str) -> Callable[[str], bool]:
    """Test ids (`TestCounts.outcomes`) of the test module `module` ("tests.test_x")."""
    return lambda test_id: test_id.startswith((f"{module}.", f"{module}::"))


def _in_file(counts: Counts, module: str, *words: str) -> Counts:
    """The share of the test cases of `tests/<module>.py` whose id names one of `words`, matched as pytest's `-k`
    matches a word: case-insensitively, anywhere in the id."""
    pattern = re.compile("|".join(re.escape(word) for word in words), re.IGNORECASE)
    in_module = _module_is(f"tests.{module}")
    return counts.subset(lambda test_id: in_module(test_id) and bool(pattern.search(test_id)))


def test_generated_tests_pass_and_code_is_lint_clean(tree: Path) -> None:
    plans = [_plan(spec) for spec in SPECS]
    test_files = [f"tests/test_{plan.name}.py" for plan in plans]
    counts = run_pytest(tree, test_files)
    assert counts.failed == 0 and counts.errors == 0 and counts.returncode == 0, counts.output_tail
    for plan in plans:
        own = counts.subset(_module_is(f"tests.test_{plan.name}"))
        assert own.failed == 0 and own.errors == 0, (plan.name, own.failures)
        assert own.passed >= 10 * len(plan.spec.layers), (plan.name, own.as_dict())

    paths = [*test_files]
    for plan in plans:
        paths += [f"src/peft/tuners/{plan.name}", f"examples/{plan.name}"]
    report = lint_generated(tree, paths)
    assert report.ok, (report.findings, report.ruff_check, report.mypy)


def test_peft_own_matrix_passes_for_the_registered_methods(tree: Path) -> None:
    reference = _plan(SPECS[0])
    derived = [_plan(spec) for spec in DERIVED_SPECS]
    tuners = [reference, *derived]
    custom_words = [plan.class_name for plan in tuners] + [*VARIANTS, STAND_IN]
    configs = " or ".join(plan.config_cls for plan in tuners)
    stand_in_config = f"{STAND_IN_CONFIG} and not " + " and not ".join(HUB_TESTS)
    selection = (
        f"(test_custom_models and ({' or '.join(custom_words)}))"
        f" or (test_config and ((({configs}) and {OFFLINE_DESELECT}) or ({stand_in_config})))"
    )
    counts = run_pytest(tree, ["tests/test_custom_models.py", "tests/test_config.py", "-k", selection])
    # one run for all: nothing failed anywhere, and each method's rows (and config tests) really ran
    assert counts.failed == 0 and counts.errors == 0 and counts.returncode == 0, counts.output_tail

    custom = _in_file(counts, "test_custom_models", reference.class_name)
    assert custom.passed > 300, custom.as_dict()  # the method's rows ran through PEFT's whole custom-model matrix
    config = _in_file(counts, "test_config", reference.config_cls)
    assert config.passed > 10, config.as_dict()

    custom = _in_file(counts, "test_custom_models", *(plan.class_name for plan in derived))
    # 331 + 331 + 227 + 435 cases pass in PEFT 0.21.2: fewer than 1200 means some method's rows did not run
    assert custom.passed > 1200, custom.as_dict()
    config = _in_file(counts, "test_config", *(plan.config_cls for plan in derived))
    assert config.passed > 10 * len(derived), config.as_dict()

    custom = _in_file(counts, "test_custom_models", *VARIANTS)
    # DoRA: 8 rows, RowScale: 5, DiagLoRA: 5 (Linear's 3 + dropout, Conv2d's 1), about 55 tests each
    assert custom.passed >= 18 * 45, custom.as_dict()

    custom = _in_file(counts, "test_custom_models", STAND_IN)
    assert custom.passed >= 250, custom.as_dict()
    config = _in_file(counts, "test_config", STAND_IN_CONFIG)
    assert config.passed >= 20, config.as_dict()


@pytest.mark.parametrize("version", ["0.20.0", "0.19.1"])
def test_reference_lora_in_older_supported_trees(version, make_peft_tree):
    tree = make_peft_tree(version)
    _new(SPECS[0], tree)
    plan = _plan(SPECS[0])
    counts = run_pytest(tree, [f"tests/test_{plan.name}.py"])
    assert counts.failed == 0 and counts.errors == 0, counts.output_tail
    assert counts.passed >= 10 * len(plan.spec.layers)
