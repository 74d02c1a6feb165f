"""The reference IA3 spec is numerically PEFT's own IA3, in both of its modes; the reference BEFT spec is PEFT's BEFT.

`reference_methods/ia3.yaml` (generated as `refia3`) is generated and registered into a PEFT 0.21.2 tree. This file
is also the script run there (a subprocess with `PYTHONPATH=TREE/src`, so the tree's peft is the only one imported):
for tiny one-layer models it puts PEFT's IA3 on one copy and the generated method on another, sets random vectors
(entries of magnitude 0.5 to 1.5, random signs) in PEFT's layer and copies them across (PEFT stores them as (out, 1),
(1, in) or (1, n, 1, 1); the spec as (n,)), and reports max absolute differences as JSON: forward, gradient, merged and
unmerged weight AND bias (PEFT's IA3 scales the bias of output-scaled layers on merge), merge_and_unload, disabled
adapters, two adapters active at once, and a mixed-adapter batch.

Modes: `out` (the layer is not in `feedforward_modules`: the output is scaled, bias included) on every layer type
both support (nn.Linear, transformers' Conv1D, nn.Conv2d, nn.Conv3d); `ff` (the layer is in `feedforward_modules`:
the input is scaled) on nn.Linear and Conv1D. PEFT's feed-forward convolutions scale input channels, which the spec
cannot express: the generated Conv2d refuses them (case `Conv2d/ff/refused`).

`reference_methods/beft.yaml` (`refbeft`, a method without `delta_weight`: it only updates the bias) is generated into
the same tree and compared with PEFT's BEFT the same way on nn.Linear (cases `beft/Linear/...`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "reference_methods" / "ia3.yaml"
BEFT_SPEC = REPO_ROOT / "reference_methods" / "beft.yaml"
JSON_MARKER = "ZOO_PARITY_IA3_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3

MODES = {"out": ("Linear", "Conv1D", "Conv2d", "Conv3d"), "ff": ("Linear", "Conv1D")}
VARIANTS = ("single", "multi")
IA3_CASES = tuple(
    f"{layer}/{mode}/{variant}" for mode, layers in MODES.items() for layer in layers for variant in VARIANTS
)
BEFT_CASES = tuple(f"beft/Linear/{variant}" for variant in VARIANTS)
CASE_NAMES = IA3_CASES + BEFT_CASES
REFUSED_CASE = "Conv2d/ff/refused"

# copying a PEFT tree, generating into it and running every case takes ~50 s
pytestmark = pytest.mark.slow

DIFF_KEYS = (
    "forward",
    "merged_weight",
    "merged_bias",
    "merged_forward",
    "unmerged_weight",
    "unmerged_bias",
    "restored_weight",
    "restored_bias",
    "unmerged_forward",
    "disabled_forward",
    "merge_and_unload",
)
SINGLE_ONLY_DIFF_KEYS = ("grad",)
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")
# output scaling merges the bias too: PEFT's merged bias must differ from the original, so a spec leaving it alone fails
OUT_ONLY_EFFECT_KEYS = ("effect_merged_bias",)
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity-ia3")
    return parity_report_in_fresh_tree(
        Path(__file__), [SPEC, BEFT_SPEC], peft_sdist, workdir, what="IA3 parity script", marker=JSON_MARKER
    )


def test_every_case_ran(parity_report: dict[str, Any]) -> None:
    from tests.parity_helpers import assert_every_case_ran

    assert_every_case_ran(parity_report, [*CASE_NAMES, REFUSED_CASE])


def test_feedforward_convolutions_are_refused_not_approximated(parity_report: dict[str, Any]) -> None:
    result = parity_report["cases"][REFUSED_CASE]
    assert result["refused"] == 1.0, result


@pytest.mark.parametrize("case", CASE_NAMES)
def test_reference_spec_matches_peft(parity_report: dict[str, Any], case: str) -> None:
    from tests.parity_helpers import assert_close_with_effect, case_result

    result = case_result(parity_report, case)

    multi = case.endswith("/multi")
    expected = DIFF_KEYS + (MULTI_ONLY_DIFF_KEYS if multi else SINGLE_ONLY_DIFF_KEYS)
    effects = EFFECT_KEYS + (() if multi else SINGLE_ONLY_EFFECT_KEYS)
    if case.startswith("beft/"):  # the bias moves, the weight does not
        effects = tuple(k for k in effects if k != "effect_merged_weight") + ("effect_merged_bias",)
    effects += OUT_ONLY_EFFECT_KEYS if "/out/" in case else ()
    assert_close_with_effect(case, result, expected, effects, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _models(layer: Any, mode: str, adapter_names: list[str]) -> tuple[Any, Any]:
    import copy

    import peft

    from tests.parity_helpers import one_layer_net

    base = one_layer_net(layer).eval()
    feedforward = ["layer"] if mode == "ff" else []
    peft_model = gen_model = None
    for name in adapter_names:
        if mode == "beft":
            peft_config = peft.BeftConfig(target_modules=["layer"], init_weights=False)
            gen_config = peft.RefBeftConfig(target_modules=["layer"], init_weights=False)
        else:
            peft_config = peft.IA3Config(
                target_modules=["layer"], feedforward_modules=feedforward, init_ia3_weights=False
            )
            gen_config = peft.RefIA3Config(
                target_modules=["layer"], feedforward_modules=feedforward, init_weights=False
            )
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    return peft_model, gen_model


def _bias(layer: Any) -> Any:
    return layer.get_base_layer().bias.detach().clone()


def _run_case(layer_type: str, mode: str, variant: str) -> dict[str, float]:
    import torch
    from peft.tuners.beft.layer import BeftLayer
    from peft.tuners.ia3.layer import IA3Layer
    from peft.tuners.refbeft.layer import RefBeftLayer
    from peft.tuners.refia3.layer import RefIA3Layer

    from tests.parity_helpers import make_case, max_abs_diff, mixed_batch_diff, one_layer_net, only_tuner_layer

    beft = mode == "beft"
    case = f"beft/{layer_type}/{variant}" if beft else f"{layer_type}/{mode}/{variant}"
    torch.manual_seed(3000 + CASE_NAMES.index(case))
    layer, x, _ = make_case(layer_type)
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    base_bias = base.layer.bias.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapter_names = ["default"] if variant == "single" else ["default", "other"]
    peft_model, gen_model = _models(layer, mode, adapter_names)
    peft_layer = only_tuner_layer(peft_model, BeftLayer if beft else IA3Layer)
    gen_layer = only_tuner_layer(gen_model, RefBeftLayer if beft else RefIA3Layer)
    gen_cls = RefBeftLayer if beft else RefIA3Layer
    peft_vectors = peft_layer.beft_bias if beft else peft_layer.ia3_l
    gen_vectors = gen_layer.refbeft_beft_bias if beft else gen_layer.refia3_ia3_l
    for name in adapter_names:
        source = peft_vectors[name]
        target = gen_vectors[name]
        if source.numel() != target.numel():
            raise AssertionError(f"PEFT's vector has {source.numel()} entries, the spec's {target.numel()}")
        with torch.no_grad():
            # random magnitudes in [0.5, 1.5] and random signs instead of PEFT's randn: PEFT unmerges by dividing by
            # `ia3_l + 1e-8`, so an entry near zero would measure that epsilon (documented in the spec), not the method
            magnitude = torch.empty(source.shape).uniform_(0.5, 1.5)
            source.copy_(magnitude * torch.where(torch.rand(source.shape) < 0.5, -1.0, 1.0))
            target.copy_(source.reshape(-1))
    if len(adapter_names) > 1:
        peft_model.base_model.set_adapter(adapter_names)
        gen_model.base_model.set_adapter(adapter_names)

    out: dict[str, float] = {}
    if variant == "single":
        peft_model.train()
        gen_model.train()
        target_out = torch.randn_like(base_out)
        (peft_model(x) * target_out).sum().backward()
        (gen_model(x) * target_out).sum().backward()
        peft_grad = peft_vectors["default"].grad.reshape(-1)
        gen_grad = gen_vectors["default"].grad
        out["grad"] = max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item())
        out["effect_grad"] = peft_grad.abs().max().item()
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            # PEFT's IA3 has no mixed-batch forward: the expected rows come from PEFT's model with each adapter set
            out["mixed_batch"] = mixed_batch_diff(peft_model, gen_model, x, adapter_names, base_out)

        peft_model.merge_adapter()
        gen_model.merge_adapter()
        out["merged_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, peft_layer.get_base_layer().weight)
        out["merged_bias"] = max_abs_diff(_bias(gen_layer), _bias(peft_layer))
        out["effect_merged_weight"] = max_abs_diff(peft_layer.get_base_layer().weight, base_weight)
        out["effect_merged_bias"] = max_abs_diff(_bias(peft_layer), base_bias)
        out["merged_forward"] = max_abs_diff(gen_model(x), peft_model(x))
        peft_model.unmerge_adapter()
        gen_model.unmerge_adapter()
        out["unmerged_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, peft_layer.get_base_layer().weight)
        out["unmerged_bias"] = max_abs_diff(_bias(gen_layer), _bias(peft_layer))
        out["restored_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, base_weight)
        out["restored_bias"] = max_abs_diff(_bias(gen_layer), base_bias)
        out["unmerged_forward"] = max_abs_diff(gen_model(x), peft_model(x))
        with gen_model.disable_adapter():
            out["disabled_forward"] = max_abs_diff(gen_model(x), base_out)
        peft_unloaded = peft_model.merge_and_unload()
        gen_unloaded = gen_model.merge_and_unload()
        if any(isinstance(m, gen_cls) for m in gen_unloaded.modules()):
            raise AssertionError(f"merge_and_unload left {gen_cls.__name__} layers in the model")
        out["merge_and_unload"] = max_abs_diff(gen_unloaded(x), peft_unloaded(x))
    return out


def _refused_case() -> dict[str, float]:
    import torch

    from tests.parity_helpers import make_case

    torch.manual_seed(0)
    layer, _, _ = make_case("Conv2d")
    try:
        _models(layer, "ff", ["default"])
    except ValueError as exc:
        return {"refused": float("Linear and Conv1D layers only" in str(exc))}
    return {"refused": 0.0}


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [
        (f"{layer}/{mode}/{variant}", functools.partial(_run_case, layer, mode, variant))
        for mode, layers in MODES.items()
        for layer in layers
        for variant in VARIANTS
    ]
    cases += [
        (f"beft/Linear/{variant}", functools.partial(_run_case, "Linear", "beft", variant)) for variant in VARIANTS
    ]
    cases.append((REFUSED_CASE, _refused_case))
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): the repository root is not on sys.path. Append it, after
    # the tree's src, so that `tests.parity_helpers` is importable and `peft` still comes from the tree.
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
