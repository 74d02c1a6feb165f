"""The reference specs with computed buffers and FFTs are numerically PEFT's own DeLoRA, FourierFT and C3A.

`reference_methods/delora.yaml` (generated as `refdelora`), `reference_methods/fourierft.yaml` (`reffourierft`) and
`reference_methods/c3a.yaml` (`refc3a`, a block-circulant update built with FFTs, no buffers) are generated and
registered into one PEFT 0.21.2 tree. This file is also the script run there (one subprocess with
`PYTHONPATH=TREE/src`): on tiny one-layer models (DeLoRA and C3A: nn.Linear; FourierFT: nn.Linear and transformers'
Conv1D; the layer types PEFT's methods support) it puts PEFT's method (`init_weights=False`) on one copy and the
generated one on another and copies PEFT's trainable weights across. The buffers are NOT copied: the generated layer computes
them itself from its init expressions (DeLoRA's column norms of the base weight, FourierFT's seeded frequency
indices), and they must equal PEFT's. It reports max absolute differences as JSON: the buffers, forward, gradients,
merged and unmerged weights, merge_and_unload, disabled adapters, two adapters active at once, a mixed-adapter batch.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS = {
    "delora": REPO_ROOT / "reference_methods" / "delora.yaml",
    "fourierft": REPO_ROOT / "reference_methods" / "fourierft.yaml",
    "c3a": REPO_ROOT / "reference_methods" / "c3a.yaml",
}
JSON_MARKER = "ZOO_PARITY_BUFFERS_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3
VARIANTS = ("single", "multi")

METHODS: dict[str, dict[str, Any]] = {
    "delora": {
        "layers": ("Linear",),
        "peft_config": "DeloraConfig",
        "peft_layer": ("peft.tuners.delora.layer", "DeloraLayer"),
        "gen_package": "peft.tuners.refdelora",
        "gen_config": "RefDeloraConfig",
        "gen_layer": "RefDeloraLayer",
        "gen_model": "RefDeloraModel",
        # PEFT's trainable weights -> the generated layer's (copied)
        "weights": {"delora_A": "refdelora_A", "delora_B": "refdelora_B", "delora_lambda": "refdelora_lam"},
        # PEFT's buffers -> the generated layer's (computed by each, compared)
        "buffers": {"delora_w_norm": "refdelora_w_norm"},
        # the buffer read from the base weight, for an adapter added while another is merged: the spec language's
        # pre-merge weight (PEFT would take the merged one), checked against the norms of the original weight
        "late_buffer": ("refdelora_w_norm", lambda weight: weight.norm(dim=0)),
        # per-adapter scalars that must agree
        "scalars": {"r": "refdelora_r"},
        "single": [("default", {"r": 4, "delora_lambda": 15})],
        "multi": [("default", {"r": 4, "delora_lambda": 15}), ("other", {"r": 2, "delora_lambda": 5})],
    },
    "fourierft": {
        "layers": ("Linear", "Conv1D"),
        "peft_config": "FourierFTConfig",
        "peft_layer": ("peft.tuners.fourierft.layer", "FourierFTLayer"),
        "gen_package": "peft.tuners.reffourierft",
        "gen_config": "RefFourierFTConfig",
        "gen_layer": "RefFourierFTLayer",
        "gen_model": "RefFourierFTModel",
        "weights": {"fourierft_spectrum": "reffourierft_spectrum"},
        "buffers": {"indices": "reffourierft_indices"},
        "scalars": {"fourierft_scaling": "reffourierft_scaling"},
        # scaling kept small so that fp32 rounding of the outputs stays well below the tolerance
        "single": [("default", {"n_frequency": 30, "scaling": 10.0})],
        "multi": [
            ("default", {"n_frequency": 30, "scaling": 10.0}),
            ("other", {"n_frequency": 20, "scaling": 4.0, "random_loc_seed": 3}),
        ],
    },
}
METHODS["c3a"] = {
    "layers": ("Linear",),
    "peft_config": "C3AConfig",
    "peft_layer": ("peft.tuners.c3a.layer", "C3ALayer"),
    "gen_package": "peft.tuners.refc3a",
    "gen_config": "RefC3AConfig",
    "gen_layer": "RefC3ALayer",
    "gen_model": "RefC3AModel",
    "weights": {"c3a_kernel": "refc3a_kernel"},
    "buffers": {},
    "scalars": {"block_size": "refc3a_block_size"},
    # block sizes dividing the case's Linear(10, 12)
    "single": [("default", {"block_size": 2})],
    "multi": [("default", {"block_size": 2}), ("other", {"block_size": 1})],
    # PEFT's C3A forward feeds each active adapter the previous adapter's output (it reassigns `x`), so with two
    # active adapters its unmerged forward is not the sum of their updates (and fails for different block sizes).
    # The multi case therefore runs with one adapter active, and checks the generated forward with both active
    # against PEFT's layer with both merged (its merge is right): `both_active`.
    "multi_active": False,
}
CASE_NAMES = tuple(
    f"{method}/{layer}/{variant}" for method in SPECS for layer in METHODS[method]["layers"] for variant in VARIANTS
)

DIFF_KEYS = (
    "buffers",
    "scalars",
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
BOTH_ACTIVE_KEYS = ("both_active",)  # methods whose PEFT forward cannot run two active adapters
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")
BUFFER_EFFECT_KEYS = ("effect_buffers",)  # for methods with buffers: PEFT's are not all zero
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)
LATE_BUFFER_KEYS = ("late_buffer",)  # single variant of methods with a buffer read from the base weight


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity-buffers")
    return parity_report_in_fresh_tree(
        Path(__file__), SPECS.values(), peft_sdist, workdir, what="zoo parity script (buffers)", marker=JSON_MARKER
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
    if multi and not METHODS[case.split("/")[0]].get("multi_active", True):
        expected += BOTH_ACTIVE_KEYS
    if not multi and "late_buffer" in METHODS[case.split("/")[0]]:
        expected += LATE_BUFFER_KEYS
    effects = EFFECT_KEYS + (() if multi else SINGLE_ONLY_EFFECT_KEYS)
    if METHODS[case.split("/")[0]]["buffers"]:
        effects += BUFFER_EFFECT_KEYS
    assert_close_with_effect(case, result, expected, effects, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


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

    torch.manual_seed(3000 + CASE_NAMES.index(f"{method_name}/{layer_type}/{variant}"))
    layer, x, fan_in_fan_out = make_case(layer_type)
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = method[variant]
    adapter_names = [name for name, _ in adapters]
    peft_model = gen_model = None
    for name, hp in adapters:
        common = {"init_weights": False, "target_modules": ["layer"], **hp}
        if fan_in_fan_out:  # transformers' Conv1D (DeloraConfig has no such field)
            common["fan_in_fan_out"] = True
        peft_config, gen_config = peft_config_cls(**common), gen_config_cls(**common)
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
    out: dict[str, float] = {"buffers": 0.0, "scalars": 0.0, "effect_buffers": 0.0}
    for name in adapter_names:
        for peft_name, gen_name in method["buffers"].items():
            # computed by each side on its own: never copied
            source, target = getattr(peft_layer, peft_name)[name], getattr(gen_layer, gen_name)[name]
            if source.dtype != target.dtype:
                raise AssertionError(f"{peft_name}: PEFT {source.dtype} vs generated {target.dtype}")
            out["buffers"] = max(out["buffers"], max_abs_diff(target, source))
            out["effect_buffers"] = max(out["effect_buffers"], source.abs().max().item())
        for peft_name, gen_name in method["scalars"].items():
            diff = abs(getattr(peft_layer, peft_name)[name] - getattr(gen_layer, gen_name)[name])
            out["scalars"] = max(out["scalars"], diff)
        for peft_name, gen_name in method["weights"].items():
            source, target = getattr(peft_layer, peft_name)[name], getattr(gen_layer, gen_name)[name]
            if source.shape != target.shape:
                raise AssertionError(f"{peft_name}: PEFT {tuple(source.shape)} vs generated {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(source)
    if len(adapter_names) > 1 and not method.get("multi_active", True):
        with torch.no_grad():
            peft_model.base_model.set_adapter(adapter_names)
            gen_model.base_model.set_adapter(adapter_names)
            peft_model.merge_adapter()
            expected = peft_model(x)
            peft_model.unmerge_adapter()
            out["both_active"] = max_abs_diff(gen_model(x), expected)
        adapter_names = adapter_names[-1:]
    if len(adapter_names) > 1 or variant == "multi":
        peft_model.base_model.set_adapter(adapter_names)
        gen_model.base_model.set_adapter(adapter_names)

    if variant == "single":
        # one backward pass in train mode: every trainable weight's gradient
        peft_model.train()
        gen_model.train()
        target_out = torch.randn_like(base_out)
        (peft_model(x) * target_out).sum().backward()
        (gen_model(x) * target_out).sum().backward()
        diffs, sizes = [], []
        for peft_name, gen_name in method["weights"].items():
            peft_grad = getattr(peft_layer, peft_name)["default"].grad
            gen_grad = getattr(gen_layer, gen_name)["default"].grad
            diffs.append(max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item()))
            sizes.append(peft_grad.abs().max().item())
        out["grad"] = max(diffs)
        out["effect_grad"] = min(sizes)
        if "late_buffer" in method:
            attr, expected_of = method["late_buffer"]
            with torch.no_grad():
                late = peft.get_peft_model(copy.deepcopy(base), gen_config_cls(**common))
                late.merge_adapter()
                late.add_adapter("late", gen_config_cls(**common))
                late_layer = only_tuner_layer(late, gen_layer_cls)
                out["late_buffer"] = max_abs_diff(getattr(late_layer, attr)["late"], expected_of(base_weight))
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            # PEFT's DeLoRA and FourierFT have no mixed-batch forward: the expected rows come from PEFT's model with
            # each adapter set in turn
            loaded = [name for name, _ in adapters]
            out["mixed_batch"] = mixed_batch_diff(peft_model, gen_model, x, loaded, base_out, active=adapter_names)

        out.update(
            merge_unload_checks(peft_model, gen_model, peft_layer, gen_layer, x, base_weight, base_out, gen_layer_cls)
        )
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [
        (f"{method}/{layer}/{variant}", functools.partial(_run_case, method, layer, variant))
        for method in SPECS
        for layer in METHODS[method]["layers"]
        for variant in VARIANTS
    ]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): append the repository root after the tree's src, so that
    # `tests.parity_helpers` is importable and `peft` still comes from the tree
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
