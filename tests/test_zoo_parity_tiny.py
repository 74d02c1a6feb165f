"""The reference spec of TinyLoRA is numerically PEFT's own.

`reference_methods/tinylora.yaml` (generated as `reftinylora`: PEFT's default weight_tying=0.0, one trainable vector
v per layer, R = sum_i v[i] P[i] between the frozen halves of the base weight's truncated SVD) is generated and
registered into a PEFT 0.21.2 tree. This file is also the script run there (one subprocess with
`PYTHONPATH=TREE/src`): on a tiny nn.Linear model (the only layer type the spec supports, see its header) it puts
PEFT's TinyLoRA on one copy and the generated method on another. The SVD buffers A and B are NOT copied: the generated
layer computes them itself with its init expressions and they must equal PEFT's. The projections P are copied
(PEFT seeds them from `projection_seed`, the spec draws them from the global RNG) and v is set by hand to the same
random values on both sides (PEFT's `init_weights=False` leaves v uninitialised, its default zeros make a no-op). It
reports max absolute differences as JSON: the buffers, forward, gradient of v, merged and unmerged weights,
merge_and_unload, disabled adapters, two adapters active at once (one with r above the layer's rank, which PEFT
clamps), a mixed-adapter batch, and that the default init is a no-op.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "reference_methods" / "tinylora.yaml"
JSON_MARKER = "ZOO_PARITY_TINY_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3

VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "single": [("default", {"r": 2, "u": 8})],
    # nn.Linear(10, 12) has rank 10: r=16 is clamped to it (PEFT's actual_r, the spec's derived `rank`)
    "multi": [("default", {"r": 3, "u": 5}), ("other", {"r": 16, "u": 3})],
}
CASE_NAMES = tuple(f"tinylora/Linear/{variant}" for variant in VARIANTS)

DIFF_KEYS = (
    "buffers",
    "forward",
    "merged_weight",
    "merged_forward",
    "unmerged_weight",
    "restored_weight",
    "unmerged_forward",
    "disabled_forward",
    "merge_and_unload",
)
SINGLE_ONLY_DIFF_KEYS = ("grad", "default_init_forward")
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_buffers", "effect_forward", "effect_merged_weight")
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity-tiny")
    return parity_report_in_fresh_tree(
        Path(__file__), [SPEC], peft_sdist, workdir, what="zoo parity script (tinylora)", marker=JSON_MARKER
    )


@pytest.mark.slow
def test_every_case_ran(parity_report: dict[str, Any]) -> None:
    from tests.parity_helpers import assert_every_case_ran

    assert_every_case_ran(parity_report, CASE_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASE_NAMES)
def test_reference_spec_matches_peft(parity_report: dict[str, Any], case: str) -> None:
    from tests.parity_helpers import assert_close_with_effect, case_result

    result = case_result(parity_report, case)
    single = case.endswith("/single")
    expected = DIFF_KEYS + (SINGLE_ONLY_DIFF_KEYS if single else MULTI_ONLY_DIFF_KEYS)
    effects = EFFECT_KEYS + (SINGLE_ONLY_EFFECT_KEYS if single else ())
    assert_close_with_effect(case, result, expected, effects, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _peft_v(layer: Any, adapter: str) -> Any:
    """PEFT's trainable vector of `adapter` for `layer` (held by the model, looked up by the layer's group key)."""
    return layer.tinylora_v[adapter][layer._tinylora_v_key[adapter]]


def _run_case(variant: str) -> dict[str, float]:
    import copy

    import peft
    import torch
    from peft.tuners.reftinylora import RefTinyLoraConfig
    from peft.tuners.reftinylora.layer import RefTinyLoraLayer
    from peft.tuners.tinylora.layer import TinyLoraLayer

    from tests.parity_helpers import (
        make_case,
        max_abs_diff,
        merge_unload_checks,
        mixed_batch_diff,
        one_layer_net,
        only_tuner_layer,
    )

    torch.manual_seed(6100 + CASE_NAMES.index(f"tinylora/Linear/{variant}"))
    layer, x, _ = make_case("Linear")
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = VARIANTS[variant]
    adapter_names = [name for name, _ in adapters]
    peft_model = gen_model = None
    for name, hp in adapters:
        common = {"target_modules": ["layer"], **hp}
        peft_config, gen_config = peft.TinyLoraConfig(**common), RefTinyLoraConfig(**common)
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    if type(gen_model.base_model).__name__ != "RefTinyLoraModel":
        raise AssertionError(f"the generated config produced a {type(gen_model.base_model).__name__}")

    peft_layer = only_tuner_layer(peft_model, TinyLoraLayer)
    gen_layer = only_tuner_layer(gen_model, RefTinyLoraLayer)
    out: dict[str, float] = {"buffers": 0.0, "effect_buffers": float("inf")}
    for name in adapter_names:
        for half in ("A", "B"):
            # computed by each side from the base weight's SVD: never copied
            source, target = (
                getattr(peft_layer, f"tinylora_{half}")[name],
                getattr(gen_layer, f"reftinylora_{half}")[name],
            )
            out["buffers"] = max(out["buffers"], max_abs_diff(target, source))
            out["effect_buffers"] = min(out["effect_buffers"], source.abs().max().item())
        peft_p, gen_p = peft_layer.tinylora_P[name], gen_layer.reftinylora_P[name]
        if peft_p.shape != gen_p.shape:
            raise AssertionError(f"P: PEFT {tuple(peft_p.shape)} vs generated {tuple(gen_p.shape)}")
        peft_v, gen_v = _peft_v(peft_layer, name), gen_layer.reftinylora_v[name]
        if peft_v.shape != gen_v.shape or not isinstance(gen_v, torch.nn.Parameter) or gen_p.requires_grad:
            raise AssertionError(f"v: PEFT {tuple(peft_v.shape)} vs generated {tuple(gen_v.shape)}, or P a parameter")
        with torch.no_grad():
            # PEFT seeds P from projection_seed, the spec draws it from the global RNG: copied
            gen_p.copy_(peft_p)
            v = torch.randn(peft_v.shape)
            peft_v.copy_(v)
            gen_v.copy_(v)
    if variant != "single":
        peft_model.base_model.set_adapter(adapter_names)
        gen_model.base_model.set_adapter(adapter_names)

    if variant == "single":
        # the default init (v = 0) is a no-op
        with torch.no_grad():
            fresh = peft.get_peft_model(copy.deepcopy(base), RefTinyLoraConfig(target_modules=["layer"]))
            out["default_init_forward"] = max_abs_diff(fresh(x), base_out)
        # one backward pass in train mode: the gradient of v (the only trainable tensor)
        peft_model.train()
        gen_model.train()
        target_out = torch.randn_like(base_out)
        (peft_model(x) * target_out).sum().backward()
        (gen_model(x) * target_out).sum().backward()
        peft_grad, gen_grad = _peft_v(peft_layer, "default").grad, gen_layer.reftinylora_v["default"].grad
        out["grad"] = max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item())
        out["effect_grad"] = peft_grad.abs().max().item()
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)
        if variant != "single":
            # PEFT's TinyLoRA has no mixed-batch forward: each adapter set in turn gives the expected rows
            out["mixed_batch"] = mixed_batch_diff(peft_model, gen_model, x, adapter_names, base_out)
        out.update(
            merge_unload_checks(
                peft_model, gen_model, peft_layer, gen_layer, x, base_weight, base_out, RefTinyLoraLayer
            )
        )
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [(f"tinylora/Linear/{variant}", functools.partial(_run_case, variant)) for variant in VARIANTS]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): append the repository root after the tree's src, so that
    # `tests.parity_helpers` is importable and `peft` still comes from the tree
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
