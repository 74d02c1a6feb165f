"""The reference RoAd spec is numerically PEFT's own RoAd (variant road_1) on nn.Linear.

`reference_methods/road.yaml` (generated as `refroad`) is generated and registered into a PEFT 0.21.2 tree. This file is
also the script run there (a subprocess with `PYTHONPATH=TREE/src`, so the tree's peft is the only one imported): for a
tiny one-layer model it puts PEFT's RoAd (`init_weights=False`: random angles and scales) on one copy and the generated
method on another, copies PEFT's angles and scales across (both store them as (out_features // 2,)), and reports max
absolute differences as JSON: forward, gradients, merged and unmerged weight AND bias (RoAd rotates the bias with the
output on merge), merge_and_unload, disabled adapters, two adapters of different group sizes active at once, and a
mixed-adapter batch.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "reference_methods" / "road.yaml"
JSON_MARKER = "ZOO_PARITY_ROAD_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3

VARIANTS = ("single", "multi")
CASE_NAMES = tuple(f"Linear/{variant}" for variant in VARIANTS)
# (adapter name, group_size): out_features is 12
ADAPTERS = {"single": [("default", 4)], "multi": [("default", 4), ("other", 12)]}

# copying a PEFT tree and generating into it takes ~30 s
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
SINGLE_ONLY_DIFF_KEYS = ("grad_theta", "grad_alpha")
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight", "effect_merged_bias")
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity-road")
    return parity_report_in_fresh_tree(
        Path(__file__), [SPEC], peft_sdist, workdir, what="RoAd parity script", marker=JSON_MARKER
    )


def test_every_case_ran(parity_report: dict[str, Any]) -> None:
    from tests.parity_helpers import assert_every_case_ran

    assert_every_case_ran(parity_report, CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_reference_spec_matches_peft(parity_report: dict[str, Any], case: str) -> None:
    from tests.parity_helpers import assert_close_with_effect, case_result

    result = case_result(parity_report, case)
    multi = case.endswith("/multi")
    expected = DIFF_KEYS + (MULTI_ONLY_DIFF_KEYS if multi else SINGLE_ONLY_DIFF_KEYS)
    effects = EFFECT_KEYS + (() if multi else SINGLE_ONLY_EFFECT_KEYS)
    assert_close_with_effect(case, result, expected, effects, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _bias(layer: Any) -> Any:
    return layer.get_base_layer().bias.detach().clone()


def _run_case(variant: str) -> dict[str, float]:
    import copy

    import peft
    import torch
    from peft.tuners.refroad.layer import RefRoadLayer
    from peft.tuners.road.layer import RoadLayer

    from tests.parity_helpers import make_case, max_abs_diff, one_layer_net, only_tuner_layer

    torch.manual_seed(4000 + VARIANTS.index(variant))
    layer, x, _ = make_case("Linear")
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    base_bias = base.layer.bias.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = ADAPTERS[variant]
    peft_model = gen_model = None
    for name, group_size in adapters:
        peft_config = peft.RoadConfig(target_modules=["layer"], group_size=group_size, init_weights=False)
        gen_config = peft.RefRoadConfig(target_modules=["layer"], group_size=group_size, init_weights=False)
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    peft_layer = only_tuner_layer(peft_model, RoadLayer)
    gen_layer = only_tuner_layer(gen_model, RefRoadLayer)
    names = [name for name, _ in adapters]
    with torch.no_grad():
        for name in names:
            gen_layer.refroad_road_theta[name].copy_(peft_layer.road_theta[name])
            gen_layer.refroad_road_alpha[name].copy_(peft_layer.road_alpha[name])
    if len(names) > 1:
        peft_model.base_model.set_adapter(names)
        gen_model.base_model.set_adapter(names)

    out: dict[str, float] = {}
    if variant == "single":
        peft_model.train()
        gen_model.train()
        target_out = torch.randn_like(base_out)
        (peft_model(x) * target_out).sum().backward()
        (gen_model(x) * target_out).sum().backward()
        for key, peft_param, gen_param in (
            ("grad_theta", peft_layer.road_theta["default"], gen_layer.refroad_road_theta["default"]),
            ("grad_alpha", peft_layer.road_alpha["default"], gen_layer.refroad_road_alpha["default"]),
        ):
            out[key] = max_abs_diff(gen_param.grad, peft_param.grad) / max(1.0, peft_param.grad.abs().max().item())
        out["effect_grad"] = peft_layer.road_theta["default"].grad.abs().max().item()
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            # PEFT's RoAd applies one adapter per sub-batch: compare with PEFT's own mixed batch
            batch = [*names, "__base__"] * (len(x) // (len(names) + 1) + 1)
            batch = batch[: len(x)]
            out["mixed_batch"] = max_abs_diff(gen_model(x, adapter_names=batch), peft_model(x, adapter_names=batch))

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
        if any(isinstance(m, RefRoadLayer) for m in gen_unloaded.modules()):
            raise AssertionError("merge_and_unload left RefRoadLayer layers in the model")
        out["merge_and_unload"] = max_abs_diff(gen_unloaded(x), peft_unloaded(x))
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [(f"Linear/{variant}", functools.partial(_run_case, variant)) for variant in VARIANTS]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): the repository root is not on sys.path. Append it, after
    # the tree's src, so that `tests.parity_helpers` is importable and `peft` still comes from the tree.
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
