"""The reference DoRA spec (reference_methods/dora.yaml) generates `use_refdora`, which matches PEFT's own
`use_dora=True` within 1e-5 (fp32): magnitude init, forward (eval, train, with dropout), gradients, merged weight
(safe and unsafe), merged forward, unmerged weight, and two adapters merged in turn.

Both variants live in one registered PEFT tree. This file is also the script run there (in a subprocess with
`PYTHONPATH=TREE/src`, so the tree's peft is the only one imported); it builds tiny one-layer models, puts PEFT's DoRA
on one copy and the generated variant on another with the same seed (so LoRA's A and B start equal), copies A, B and
the magnitude across anyway, and reports max absolute differences per case as JSON.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
DORA_SPEC = REPO_ROOT / "reference_methods" / "dora.yaml"
JSON_MARKER = "VARIANT_PARITY_JSON: "
TOLERANCE = 1e-5

# Layer types of the tiny models; "Conv1D" is transformers' Conv1D (LoRA's Linear class with fan_in_fan_out).
# Every layer type reference_methods/dora.yaml lists, plus Conv1D (through LoRA's Linear class).
LAYER_TYPES = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d")
# quantities that must agree (max abs difference)
DIFF_KEYS = (
    "magnitude_init",  # the magnitude vector as initialised (same seed: same A and B)
    "forward",  # eval forward
    "forward_cached",  # a second eval forward under no_grad (the generated variant reuses its cached norm)
    "forward_after_update",  # eval forward after changing lora_B in place (the cache must notice)
    "train_forward",  # a train-mode loss (relative to max(1, |PEFT's|), as are the gradients)
    "grad_lora_A",
    "grad_lora_B",
    "grad_magnitude",
    "merged_weight",  # merge_adapter() (unsafe merge)
    "merged_forward",
    "unmerged_weight",
    "restored_weight",  # the generated layer's base weight after unmerge vs the original
    "safe_merged_weight",  # merge_and_unload(safe_merge=True)
)
LINEAR_ONLY_KEYS = (
    "dropout_forward",  # train mode with lora_dropout=0.3, same RNG state
    "two_adapters_merged_weight",  # two DoRA adapters merged in turn (the second sees the first unmerged)
    "two_adapters_unmerged_weight",
)
# quantities that must be large: the adapter really does something
EFFECT_KEYS = ("effect_forward", "effect_merged_weight", "effect_magnitude")
R, ALPHA = 4, 8.0


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def dora_tree(tmp_path_factory: pytest.TempPathFactory, peft_sdist: Path) -> Path:
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree

    tree = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("dora") / "peft")
    generation = pipeline.generate_into_tree(DORA_SPEC, tree)
    generation.changeset.apply()
    return tree


@pytest.fixture(scope="module")
def parity_report(dora_tree: Path) -> dict[str, Any]:
    return run_parity(dora_tree)


def run_parity(tree: Path, timeout: float = 300) -> dict[str, Any]:
    """Run this file as the script in `tree` (a subprocess that imports the tree's peft only); its JSON report."""
    from tests.parity_helpers import run_script_in_tree

    return run_script_in_tree(Path(__file__), tree, JSON_MARKER, timeout=timeout)


def test_runs_against_the_tree(parity_report: dict[str, Any], dora_tree: Path) -> None:
    assert Path(parity_report["peft_file"]).is_relative_to(dora_tree.resolve() / "src")


def test_every_layer_type_of_the_spec_is_compared() -> None:
    import yaml

    listed = yaml.safe_load(DORA_SPEC.read_text(encoding="utf-8"))["layers"]
    assert set(listed) <= set(LAYER_TYPES), set(listed) - set(LAYER_TYPES)


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_dora_parity(parity_report: dict[str, Any], layer_type: str) -> None:
    assert layer_type not in parity_report["errors"], parity_report["errors"].get(layer_type)
    case = parity_report["cases"][layer_type]
    keys = DIFF_KEYS + (LINEAR_ONLY_KEYS if layer_type == "Linear" else ())
    missing = [key for key in keys + EFFECT_KEYS if key not in case]
    assert not missing, f"not measured: {missing}"
    too_far = {key: case[key] for key in keys if not case[key] <= TOLERANCE}
    assert not too_far, f"{layer_type}: differences above {TOLERANCE}: {too_far}"
    # non-vacuous: the adapters changed the output, the merged weight and the magnitude (away from 1)
    weak = {key: case[key] for key in EFFECT_KEYS if not case[key] > 1e-3}
    assert not weak, f"{layer_type}: the adapter has no visible effect: {weak}"
    if layer_type == "Linear":
        # cached while no gradient is needed (3 forwards, 1 computation), computed every time in training (3 for 3)
        assert case["norm_computations_eval"] == 1 and case["norm_computations_train"] == 3, case


def test_dora_parity_on_peft_0_20(make_peft_tree: Any) -> None:
    """PEFT 0.20 has `lora_variants` but not `_unmerged_base_weight`: the generated merge reads the weight as it is,
    as 0.20's own DoRA does, and still matches it. 0.20's own DoRA cannot unmerge transformers' Conv1D (its unmerge
    divides the (in, out) weight by the (out,) factor): that case must fail there, and only there."""
    from scaffold import pipeline

    tree = make_peft_tree("0.20.0")
    pipeline.generate_into_tree(DORA_SPEC, tree).changeset.apply()
    assert "_unmerged_base_weight" not in (tree / "src/peft/tuners/lora/refdora.py").read_text(encoding="utf-8")
    report = run_parity(tree)
    assert set(report["errors"]) == {"Conv1D"}, report["errors"]
    error = report["errors"]["Conv1D"].strip().splitlines()
    assert error[-1] == (
        "RuntimeError: The size of tensor a (10) must match the size of tensor b (12) at non-singleton dimension 0"
    ), error[-1]
    frames = [line.strip() for line in error if line.strip().startswith("File ")]
    # raised by PEFT's own DoRA (variants.py) while unmerging PEFT's model, not by the generated variant
    assert frames[-1].startswith(f'File "{tree.resolve() / "src/peft/tuners/lora/variants.py"}"'), frames[-1]
    assert frames[-1].endswith("in unmerge"), frames[-1]
    assert "peft_model.unmerge_adapter()" in report["errors"]["Conv1D"]
    assert set(report["cases"]) == set(LAYER_TYPES) - {"Conv1D"}, sorted(report["cases"])
    for layer_type, case in report["cases"].items():
        keys = DIFF_KEYS + (LINEAR_ONLY_KEYS if layer_type == "Linear" else ())
        missing = [key for key in keys + EFFECT_KEYS if key not in case]
        assert not missing, f"{layer_type}: not measured: {missing}"
        too_far = {key: case[key] for key in keys if not case[key] <= TOLERANCE}  # NaN is too far
        assert not too_far, f"{layer_type}: {too_far}"
        weak = {key: case[key] for key in EFFECT_KEYS if not case[key] > 1e-3}
        assert not weak, f"{layer_type}: the adapter has no visible effect: {weak}"


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _lora(layer: Any, adapter: str) -> tuple[Any, Any]:
    if adapter in getattr(layer, "lora_embedding_A", {}):
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


def _peft_magnitude(layer: Any, adapter: str) -> Any:
    return layer.lora_magnitude_vector[adapter].weight.reshape(-1)  # (out,), or (1, out, 1, 1) for convolutions


def _run_case(layer_type: str) -> dict[str, float]:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import LoraLayer

    from tests.parity_helpers import make_case, max_abs_diff, merge_round_trip, one_layer_net, only_tuner_layer

    def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        """For gradients and losses, whose scale depends on the loss: relative to max(1, largest |b|)."""
        return max_abs_diff(a, b) / max(1.0, b.detach().double().abs().max().item())

    seed = 2000 + LAYER_TYPES.index(layer_type)
    torch.manual_seed(seed)
    layer, x, fan_in_fan_out = make_case(layer_type)
    base = one_layer_net(layer).eval()
    base_weight = layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    def pair(**extra: Any) -> tuple[Any, Any, Any, Any]:
        common = {"target_modules": ["layer"], "r": R, "lora_alpha": ALPHA, "init_lora_weights": False, **extra}
        if fan_in_fan_out:
            common["fan_in_fan_out"] = True
        torch.manual_seed(seed + 1)
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(use_dora=True, **common))
        torch.manual_seed(seed + 1)
        gen_model = get_peft_model(copy.deepcopy(base), LoraConfig(use_refdora=True, **common))
        return peft_model, gen_model, only_tuner_layer(peft_model, LoraLayer), only_tuner_layer(gen_model, LoraLayer)

    out: dict[str, float] = {}
    peft_model, gen_model, peft_layer, gen_layer = pair()
    if (
        type(gen_layer.lora_variant["default"]).__name__
        != f"RefDora{'Linear' if layer_type == 'Conv1D' else layer_type}Variant"
    ):
        raise AssertionError(f"unexpected variant {gen_layer.lora_variant['default']!r}")
    gen_magnitude = gen_layer.lora_refdora_magnitude["default"]
    out["magnitude_init"] = max_abs_diff(gen_magnitude, _peft_magnitude(peft_layer, "default"))
    # copy anyway, so that the comparisons below hold whatever the initialisation
    with torch.no_grad():
        for src, dst in zip(_lora(peft_layer, "default"), _lora(gen_layer, "default")):
            dst.copy_(src)
        gen_magnitude.copy_(_peft_magnitude(peft_layer, "default"))
        # a magnitude away from the norm: the output changes even where lora_B @ lora_A is small
        _peft_magnitude(peft_layer, "default").mul_(1.5)
        gen_magnitude.mul_(1.5)
    out["effect_magnitude"] = max_abs_diff(gen_magnitude, gen_magnitude / 1.5)

    peft_model.eval()
    gen_model.eval()
    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["forward_cached"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)
        for model in (peft_model, gen_model):
            _lora(only_tuner_layer(model, LoraLayer), "default")[1].mul_(0.5)
        out["forward_after_update"] = max_abs_diff(gen_model(x), peft_model(x))

    peft_model.train()
    gen_model.train()
    peft_loss = peft_model(x).pow(2).sum()
    gen_loss = gen_model(x).pow(2).sum()
    out["train_forward"] = rel_diff(gen_loss, peft_loss)
    peft_loss.backward()
    gen_loss.backward()
    peft_A, peft_B = _lora(peft_layer, "default")
    gen_A, gen_B = _lora(gen_layer, "default")
    out["grad_lora_A"] = rel_diff(gen_A.grad, peft_A.grad)
    out["grad_lora_B"] = rel_diff(gen_B.grad, peft_B.grad)
    peft_magnitude_grad = peft_layer.lora_magnitude_vector["default"].weight.grad.reshape(-1)
    out["grad_magnitude"] = rel_diff(gen_magnitude.grad, peft_magnitude_grad)
    if layer_type == "Linear":
        # the weight norm is computed once for several forwards while no gradient is needed, every time otherwise
        variant_cls = type(gen_layer.lora_variant["default"])
        original = variant_cls.get_weight_norm
        calls = []

        def counting(*args: Any) -> Any:
            calls.append(1)
            return original(*args)

        variant_cls.get_weight_norm = staticmethod(counting)
        try:
            gen_model.eval()
            with torch.no_grad():
                gen_B.mul_(1.0)  # an in-place change (its version counter moves): the cached norm is stale
                for _ in range(3):
                    gen_model(x)
            out["norm_computations_eval"] = float(len(calls))
            calls.clear()
            gen_model.train()
            for step in range(3):
                if step < 2:
                    with torch.no_grad():
                        gen_B.add_(0.0)  # as an optimizer step would: a new norm is needed
                gen_model(x).sum().backward()
            # the third forward sees unchanged weights, but what training computes is not kept: computed again
            out["norm_computations_train"] = float(len(calls))
        finally:
            variant_cls.get_weight_norm = staticmethod(original)

    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        out.update(merge_round_trip(peft_model, gen_model, peft_layer, gen_layer, x, base_weight))
        peft_unloaded = peft_model.merge_and_unload(safe_merge=True)
        gen_unloaded = gen_model.merge_and_unload(safe_merge=True)
        out["safe_merged_weight"] = max_abs_diff(gen_unloaded.layer.weight, peft_unloaded.layer.weight)

    if layer_type == "Linear":
        peft_model, gen_model, peft_layer, gen_layer = pair(lora_dropout=0.3)
        with torch.no_grad():
            for src, dst in zip(_lora(peft_layer, "default"), _lora(gen_layer, "default")):
                dst.copy_(src)
            gen_layer.lora_refdora_magnitude["default"].copy_(_peft_magnitude(peft_layer, "default"))
        peft_model.train()
        gen_model.train()
        torch.manual_seed(7)
        peft_out = peft_model(x)
        torch.manual_seed(7)
        out["dropout_forward"] = max_abs_diff(gen_model(x), peft_out)

        # two adapters, merged one after the other
        peft_model, gen_model, peft_layer, gen_layer = pair()
        common = {"target_modules": ["layer"], "r": 2, "lora_alpha": 3.0, "init_lora_weights": False}
        torch.manual_seed(seed + 2)
        peft_model.add_adapter("other", LoraConfig(use_dora=True, **common))
        torch.manual_seed(seed + 2)
        gen_model.add_adapter("other", LoraConfig(use_refdora=True, **common))
        with torch.no_grad():
            for name in ("default", "other"):
                for src, dst in zip(_lora(peft_layer, name), _lora(gen_layer, name)):
                    dst.copy_(src)
                gen_layer.lora_refdora_magnitude[name].copy_(_peft_magnitude(peft_layer, name) * 1.2)
                _peft_magnitude(peft_layer, name).mul_(1.2)
            peft_model.base_model.set_adapter(["default", "other"])
            gen_model.base_model.set_adapter(["default", "other"])
            peft_model.merge_adapter()
            gen_model.merge_adapter()
            out["two_adapters_merged_weight"] = max_abs_diff(
                gen_layer.get_base_layer().weight, peft_layer.get_base_layer().weight
            )
            peft_model.unmerge_adapter()
            gen_model.unmerge_adapter()
            out["two_adapters_unmerged_weight"] = max_abs_diff(
                gen_layer.get_base_layer().weight, peft_layer.get_base_layer().weight
            )
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    return report_cases(
        tree, JSON_MARKER, [(layer_type, functools.partial(_run_case, layer_type)) for layer_type in LAYER_TYPES]
    )


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): the repository root is not on sys.path. Append it, after
    # the tree's src and site-packages (peft still comes from the tree), for the shared helpers of tests.parity_helpers.
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
