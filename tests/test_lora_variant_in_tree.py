"""LoRA variants at work in a registered PEFT tree.

* Generality: two variants unlike DoRA (tests/test_lora_variant.py: ROWSCALE, a learned per-output scale; DIAG, a
  learned diagonal between A and B with a frozen weight) behave as their specs say, checked against the spec's math
  computed independently here: identity at init, forward, merge/unmerge, save/load, gradients.
* PEFT's own test matrix (tests/test_custom_models.py TEST_CASES rows with `use_<name>: True`) passes for DoRA and
  both variants: tests/test_in_tree.py, in one PEFT run with the other registered methods (collecting PEFT's 20k
  tests once).

This file is also the script run in the tree (subprocess, `PYTHONPATH=TREE/src`), as test_lora_variant_parity.py.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
DORA_SPEC = REPO_ROOT / "reference_methods" / "dora.yaml"
JSON_MARKER = "VARIANT_CHECK_JSON: "
TOLERANCE = 1e-5
# (variant, LoRA layer type) pairs the script checks
CASES = (("rowscale", "Linear"), ("rowscale", "Embedding"), ("diaglora", "Linear"), ("diaglora", "Conv2d"))
DIFF_KEYS = (
    "identity_at_init",  # init_lora_weights=True: the output is the base model's
    "forward",  # against the spec's math: the base layer with the merged weight
    "merged_weight",  # against the spec's merge, computed here
    "merged_forward",
    "restored_weight",  # after unmerge
    "reloaded_forward",  # save_pretrained + PeftModel.from_pretrained
)
EFFECT_KEYS = ("effect_forward", "effect_extra_grad")


@pytest.fixture(scope="module")
def variants_tree(tmp_path_factory: pytest.TempPathFactory, peft_sdist: Path) -> Path:
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree
    from tests.test_lora_variant import DIAG, ROWSCALE

    base = tmp_path_factory.mktemp("variants")
    tree = copy_peft_tree(peft_sdist, base / "peft")
    specs = [DORA_SPEC]
    for name, text in (("rowscale", ROWSCALE), ("diaglora", DIAG)):
        path = base / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        specs.append(path)
    for spec in specs:
        pipeline.generate_into_tree(spec, tree).changeset.apply()
    return tree


def _run_script(tree: Path, timeout: float = 300) -> dict[str, Any]:
    """Run this file as the script in `tree` (a subprocess that imports the tree's peft only); its JSON report."""
    from tests.parity_helpers import run_script_in_tree

    return run_script_in_tree(Path(__file__), tree, JSON_MARKER, timeout=timeout, what="variant script")


@pytest.fixture(scope="module")
def report(variants_tree: Path) -> dict[str, Any]:
    return _run_script(variants_tree)


@pytest.mark.parametrize(("variant", "layer_type"), CASES, ids=[f"{v}-{t}" for v, t in CASES])
def test_variant_follows_its_spec(report: dict[str, Any], variant: str, layer_type: str) -> None:
    key = f"{variant}/{layer_type}"
    assert key not in report["errors"], report["errors"].get(key)
    case = report["cases"][key]
    too_far = {k: case[k] for k in DIFF_KEYS if not case[k] <= TOLERANCE}
    assert not too_far, f"{key}: differences above {TOLERANCE}: {too_far}"
    weak = {k: case[k] for k in EFFECT_KEYS if not case[k] > 1e-4}
    assert not weak, f"{key}: no visible effect: {weak}"
    assert case["saved_extra_keys"] >= 1  # the extra weights are in the saved adapter
    assert case["frozen_requires_grad"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# script side


def _canonical(layer: Any, weight: Any) -> Any:
    """The base weight as (out_features, in_features), the way the specs see it."""
    import torch

    if isinstance(layer, torch.nn.Embedding):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def _from_canonical(layer: Any, matrix: Any) -> Any:
    import torch

    if isinstance(layer, torch.nn.Embedding):
        return matrix.T
    return matrix.reshape(layer.weight.shape)


def _lora_matrices(layer: Any) -> tuple[Any, Any]:
    if "default" in getattr(layer, "lora_embedding_A", {}):
        return layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    return layer.lora_A["default"].weight.flatten(1), layer.lora_B["default"].weight.flatten(1)


def _expected_merged(variant: str, lora_layer: Any, weight: Any) -> Any:
    """The spec's merged canonical weight, computed here from the spec's math (not the generated code)."""
    import torch

    lora_A, lora_B = _lora_matrices(lora_layer)
    scaling = lora_layer.scaling["default"]
    if variant == "rowscale":
        s = 2 * torch.sigmoid(lora_layer.lora_rowscale_gate["default"])
        return s[:, None] * (weight + lora_B @ lora_A * scaling)
    diag = lora_layer.lora_diaglora_diag["default"]
    gain = lora_layer.lora_diaglora_gain["default"]
    return weight + (lora_B * diag) @ lora_A * scaling * gain


def _run_case(variant: str, layer_type: str, workdir: Path) -> dict[str, float]:
    import copy

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora.layer import LoraLayer
    from peft.utils import get_peft_model_state_dict

    from tests.parity_helpers import make_case, max_abs_diff, one_layer_net, only_tuner_layer

    torch.manual_seed(3000 + CASES.index((variant, layer_type)))
    layer, x, _ = make_case(layer_type)
    base = one_layer_net(layer).eval()
    weight0 = layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)
    config = {"target_modules": ["layer"], "r": 4, "lora_alpha": 8, f"use_{variant}": True}
    out: dict[str, float] = {}

    identity = get_peft_model(copy.deepcopy(base), LoraConfig(**config)).eval()
    with torch.no_grad():
        out["identity_at_init"] = max_abs_diff(identity(x), base_out)

    model = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **config))
    lora_layer = only_tuner_layer(model, LoraLayer)
    variant_cls = type(lora_layer.lora_variant["default"]).__name__
    if not variant_cls.endswith(f"{layer_type}Variant"):
        raise AssertionError(f"unexpected variant class {variant_cls}")
    extra = lora_layer.lora_rowscale_gate if variant == "rowscale" else lora_layer.lora_diaglora_diag
    with torch.no_grad():
        extra["default"].uniform_(0.5, 1.5)  # away from the identity init (gate 0, diag 1)
        if variant == "diaglora":
            lora_layer.lora_diaglora_gain["default"].fill_(0.7)
    out["frozen_requires_grad"] = float(
        variant == "diaglora" and lora_layer.lora_diaglora_gain["default"].requires_grad
    )

    # training: the extra weight gets a gradient
    model.train()
    model(x).pow(2).mean().backward()
    out["effect_extra_grad"] = extra["default"].grad.abs().max().item()
    model.eval()

    with torch.no_grad():
        gen_out = model(x)
        out["effect_forward"] = max_abs_diff(gen_out, base_out)
        expected_weight = _from_canonical(layer, _expected_merged(variant, lora_layer, _canonical(layer, weight0)))
        reference = copy.deepcopy(base)
        reference.layer.weight.copy_(expected_weight)
        out["forward"] = max_abs_diff(gen_out, reference(x))

        model.merge_adapter()
        out["merged_weight"] = max_abs_diff(lora_layer.get_base_layer().weight, expected_weight)
        out["merged_forward"] = max_abs_diff(model(x), gen_out)
        model.unmerge_adapter()
        out["restored_weight"] = max_abs_diff(lora_layer.get_base_layer().weight, weight0)

        state = get_peft_model_state_dict(model)
        out["saved_extra_keys"] = float(sum(f"lora_{variant}_" in key for key in state))
        save_dir = workdir / f"{variant}-{layer_type}"
        model.save_pretrained(save_dir)
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), save_dir).eval()
        out["reloaded_forward"] = max_abs_diff(reloaded(x), gen_out)
    return out


def _script_main(tree: str) -> int:
    import tempfile

    from tests.parity_helpers import report_cases

    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            (f"{variant}/{layer_type}", functools.partial(_run_case, variant, layer_type, Path(tmp)))
            for variant, layer_type in CASES
        ]
        return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): the repository root is not on sys.path. Append it, after
    # the tree's src and site-packages (peft still comes from the tree), for the shared helpers of tests.parity_helpers.
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
