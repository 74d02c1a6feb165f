"""The reference LyCORIS specs are numerically PEFT's own LoHa and LoKr.

`reference_methods/loha.yaml` (generated as `refloha`) and `reference_methods/lokr.yaml` (`reflokr`) are generated and
registered into one PEFT 0.21.2 tree. This file is also the script run there (a subprocess with `PYTHONPATH=TREE/src`,
so the tree's peft is the only one imported): for tiny one-layer models (nn.Linear, nn.Conv1d, nn.Conv2d: the layer
types PEFT's LoHa/LoKr and the specs both support) it puts PEFT's method (`init_weights=False`) on one copy and the
generated one on another, copies PEFT's adapter weights across (their canonical 2-D shapes are PEFT's own, so a copy
is exact), and reports max absolute differences as JSON: forward, gradients, merged and unmerged weights,
merge_and_unload, disabled adapters, two adapters active at once, and a mixed-adapter batch.

The LoKr cases use a `decompose_factor` that divides every dimension and ranks below PEFT's full-rank-w2 threshold:
the subset of PEFT's LoKr the spec can express (see the spec's header comment and docs/coverage.md).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS = {
    "loha": REPO_ROOT / "reference_methods" / "loha.yaml",
    "lokr": REPO_ROOT / "reference_methods" / "lokr.yaml",
}
JSON_MARKER = "ZOO_PARITY_JSON: "
# fp32: the generated method and PEFT's must agree this closely on every quantity
TOLERANCE = 1e-5
# ...and PEFT's adapter must move the output and the merged weight at least this much, so a no-op cannot pass
MIN_EFFECT = 1e-3

LAYER_TYPES = ("Linear", "Conv1d", "Conv2d")
# single: one adapter, also trained one step for gradients. multi: two adapters of different hyperparameters, both
# active, plus a mixed-adapter batch.
VARIANTS = ("single", "multi")
CASE_NAMES = tuple(f"{method}/{layer}/{variant}" for method in SPECS for layer in LAYER_TYPES for variant in VARIANTS)

# per method: the generated method's package, classes, and PEFT's weight names -> the generated layer's attributes
METHODS: dict[str, dict[str, Any]] = {
    "loha": {
        "peft_config": "LoHaConfig",
        "peft_layer": ("peft.tuners.loha.layer", "LoHaLayer"),
        "gen_package": "peft.tuners.refloha",
        "gen_config": "RefLoHaConfig",
        "gen_layer": "RefLoHaLayer",
        "gen_model": "RefLoHaModel",
        "scaling": "refloha_scaling",
        "weights": {w: f"refloha_{w}" for w in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
        # (adapter name, hyperparameters) in the order they are added
        "single": [("default", {"r": 4, "alpha": 8.0})],
        "multi": [("default", {"r": 4, "alpha": 8.0}), ("other", {"r": 2, "alpha": 3.0})],
    },
    "lokr": {
        "peft_config": "LoKrConfig",
        "peft_layer": ("peft.tuners.lokr.layer", "LoKrLayer"),
        "gen_package": "peft.tuners.reflokr",
        "gen_config": "RefLoKrConfig",
        "gen_layer": "RefLoKrLayer",
        "gen_model": "RefLoKrModel",
        "scaling": "reflokr_scaling",
        "weights": {w: f"reflokr_{w}" for w in ("lokr_w1", "lokr_w2_a", "lokr_w2_b")},
        # factors 2 and 4 divide every dimension of the LoKr cases; ranks stay below PEFT's full-rank-w2 threshold
        "single": [("default", {"r": 2, "alpha": 5.0, "decompose_factor": 2})],
        "multi": [
            ("default", {"r": 2, "alpha": 5.0, "decompose_factor": 2}),
            ("other", {"r": 1, "alpha": 3.0, "decompose_factor": 4}),
        ],
    },
}

# Quantities that must agree (max abs difference; gradients relative to max(1, |PEFT's gradient|)).
DIFF_KEYS = (
    "scaling",
    "forward",
    "merged_weight",
    "merged_forward",
    "unmerged_weight",
    "restored_weight",
    "unmerged_forward",
    "disabled_forward",
    "merge_and_unload",
)
SINGLE_ONLY_DIFF_KEYS = ("grad",)
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity")
    return parity_report_in_fresh_tree(
        Path(__file__), SPECS.values(), peft_sdist, workdir, what="zoo parity script", marker=JSON_MARKER
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


def _lokr_case(layer_type: str) -> tuple[Any, Any, bool]:
    """Layers whose output features and input channels / groups are divisible by 2 and 4 (the LoKr factors)."""
    import torch
    from torch import nn

    if layer_type == "Linear":
        return nn.Linear(16, 24), torch.randn(6, 16), False
    if layer_type == "Conv1d":
        return nn.Conv1d(4, 16, 3, stride=2, padding=1), torch.randn(6, 4, 11), False
    if layer_type == "Conv2d":
        return nn.Conv2d(8, 16, (3, 2), stride=2, padding=1, groups=2), torch.randn(6, 8, 9, 8), False
    raise ValueError(layer_type)


def _copy_adapter(method: dict[str, Any], peft_layer: Any, gen_layer: Any, adapter_name: str) -> None:
    """Copy PEFT's adapter weights into the generated layer; both use the same canonical 2-D shapes."""
    import torch

    # PEFT may have chosen other weights for this layer (LoKr's full-rank w2, a CP kernel): then the case is invalid
    peft_params = {name for name in peft_layer.adapter_layer_names if adapter_name in getattr(peft_layer, name)}
    if peft_params != set(method["weights"]):
        raise AssertionError(f"PEFT's layer holds {sorted(peft_params)}, the spec mirrors {sorted(method['weights'])}")
    for peft_name, gen_name in method["weights"].items():
        source = getattr(peft_layer, peft_name)[adapter_name]
        target = getattr(gen_layer, gen_name)[adapter_name]
        if source.shape != target.shape:
            raise AssertionError(f"{peft_name}: PEFT {tuple(source.shape)} vs generated {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(source)


def _run_case(method_name: str, layer_type: str, variant: str) -> dict[str, float]:
    import copy
    import importlib

    import peft
    import torch

    from tests.parity_helpers import (
        make_case,
        max_abs_diff,
        merge_unload_checks,
        mixed_batch_diff,
        one_layer_net,
        only_tuner_layer,
    )

    method = METHODS[method_name]
    peft_config_cls = getattr(peft, method["peft_config"])
    peft_layer_cls = getattr(importlib.import_module(method["peft_layer"][0]), method["peft_layer"][1])
    gen_package = importlib.import_module(method["gen_package"])
    gen_config_cls = getattr(gen_package, method["gen_config"])
    gen_layer_cls = getattr(importlib.import_module(method["gen_package"] + ".layer"), method["gen_layer"])

    torch.manual_seed(2000 + CASE_NAMES.index(f"{method_name}/{layer_type}/{variant}"))
    layer, x, _ = make_case(layer_type) if method_name == "loha" else _lokr_case(layer_type)
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = method[variant]
    adapter_names = [name for name, _ in adapters]
    peft_model = gen_model = None
    for name, hp in adapters:
        peft_config = peft_config_cls(init_weights=False, target_modules=["layer"], **hp)
        gen_config = gen_config_cls(init_weights=False, target_modules=["layer"], **hp)
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    if type(gen_model.base_model).__name__ != method["gen_model"]:
        raise AssertionError(f"the generated config produced a {type(gen_model.base_model).__name__}")

    peft_layer = only_tuner_layer(peft_model, peft_layer_cls)
    gen_layer = only_tuner_layer(gen_model, gen_layer_cls)
    for name in adapter_names:
        _copy_adapter(method, peft_layer, gen_layer, name)
    if len(adapter_names) > 1:
        # all adapters active at once: their updates add up
        peft_model.base_model.set_adapter(adapter_names)
        gen_model.base_model.set_adapter(adapter_names)

    out: dict[str, float] = {}
    scalings = getattr(gen_layer, method["scaling"])
    out["scaling"] = max(abs(peft_layer.scaling[n] - scalings[n]) for n in adapter_names)

    if variant == "single":
        # one backward pass in train mode: PEFT's hand-written LoHa backward vs autograd through the spec's formula
        peft_model.train()
        gen_model.train()
        target = torch.randn_like(base_out)
        (peft_model(x) * target).sum().backward()
        (gen_model(x) * target).sum().backward()
        diffs, sizes = [], []
        for peft_name, gen_name in method["weights"].items():
            peft_grad = getattr(peft_layer, peft_name)["default"].grad
            gen_grad = getattr(gen_layer, gen_name)["default"].grad
            diffs.append(max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item()))
            sizes.append(peft_grad.abs().max().item())
        out["grad"] = max(diffs)
        # every one of PEFT's weights gets a gradient, so a detached weight cannot pass
        out["effect_grad"] = min(sizes)
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            # one sample per adapter, and the base model for the rest. PEFT's LyCORIS layers have no mixed-batch
            # forward, so the expected rows come from PEFT's model with each adapter set in turn.
            out["mixed_batch"] = mixed_batch_diff(peft_model, gen_model, x, adapter_names, base_out)

        out.update(
            merge_unload_checks(peft_model, gen_model, peft_layer, gen_layer, x, base_weight, base_out, gen_layer_cls)
        )
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [
        (f"{method}/{layer}/{variant}", functools.partial(_run_case, method, layer, variant))
        for method in SPECS
        for layer in LAYER_TYPES
        for variant in VARIANTS
    ]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): the repository root is not on sys.path. Append it, after
    # the tree's src, so that `tests.parity_helpers` is importable and `peft` still comes from the tree.
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
