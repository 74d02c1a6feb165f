"""The reference spec `reference_methods/lora.yaml`, generated as `reflora`, is numerically PEFT's own LoRA.

One PEFT tree per module: the method is generated and registered into it (tests/parity_helpers.py), then a single
subprocess with `PYTHONPATH=TREE/src` compares, for tiny one-layer models (nn.Linear, nn.Embedding, nn.Conv1d,
nn.Conv2d, transformers' Conv1D with fan_in_fan_out=True) and three variants (plain LoRA, rsLoRA, two adapters active
at once plus a mixed-adapter batch), PEFT's `LoraConfig(init_lora_weights=False)` adapter with the generated one
holding the same weights: forward outputs, merged and unmerged base weights, merge_and_unload, all in fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scaffold.peft_source import copy_peft_tree
from tests.parity_helpers import (
    CASE_NAMES,
    DIFF_KEYS,
    EFFECT_KEYS,
    MULTI_ONLY_DIFF_KEYS,
    REFERENCE_LORA_SPEC,
    generate_into_tree,
    run_parity,
)


# fp32: the generated method and PEFT's LoRA must agree this closely on every quantity
TOLERANCE = 1e-5
# ...and PEFT's adapter must move the output and the merged weight at least this much, so a no-op cannot pass
MIN_EFFECT = 1e-3


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tree = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("lora-parity") / "peft")
    generate_into_tree(tree, REFERENCE_LORA_SPEC)
    assert (tree / "src" / "peft" / "tuners" / "reflora" / "layer.py").is_file()
    return run_parity(tree)


def test_every_case_ran(parity_report: dict[str, Any]) -> None:
    errors = parity_report["errors"]
    assert not errors, "cases raised:\n" + "\n".join(f"--- {case}\n{tb}" for case, tb in errors.items())
    assert sorted(parity_report["cases"]) == sorted(CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_reflora_matches_peft_lora(parity_report: dict[str, Any], case: str) -> None:
    if case in parity_report["errors"]:
        pytest.fail(f"{case} raised:\n{parity_report['errors'][case]}")
    result = parity_report["cases"][case]

    expected_diffs = DIFF_KEYS + (MULTI_ONLY_DIFF_KEYS if case.endswith("/multi") else ())
    missing = [key for key in expected_diffs + EFFECT_KEYS if key not in result]
    assert not missing, f"{case}: quantities not measured: {missing}"

    too_far = {key: result[key] for key in expected_diffs if not result[key] <= TOLERANCE}
    assert not too_far, f"{case}: generated RefLoRA differs from PEFT LoRA by more than {TOLERANCE}: {too_far}"

    too_small = {key: result[key] for key in EFFECT_KEYS if not result[key] > MIN_EFFECT}
    assert not too_small, f"{case}: the adapter barely changes the model (vacuous comparison): {too_small}"


def test_a_failing_new_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    """The parity tests test what `new --peft-root` produces: if it fails, so does the helper (no other code path)."""
    with pytest.raises(RuntimeError, match="exited 2"):
        generate_into_tree(tmp_path, REFERENCE_LORA_SPEC)  # not a PEFT tree
    assert list(tmp_path.iterdir()) == []
