"""The reference OFT spec is numerically PEFT's own OFT.

`reference_methods/oft.yaml` (generated as `refoft`) is generated and registered into a PEFT 0.21.2 tree. This file is
also the script run there (a subprocess with `PYTHONPATH=TREE/src`): for tiny one-layer models it puts PEFT's OFT
(`init_weights=False`) on one copy and the generated method on the other, copies PEFT's packed skew-symmetric blocks
(`oft_R[name].weight`, shape (blocks, block * (block - 1) / 2)) across, and reports max absolute differences as JSON.

Cases: nn.Linear with PEFT's default Cayley-Neumann series and with the exact Cayley transform, block size given
directly or derived from `r`; nn.Conv2d with a 1x1 kernel (where PEFT's unfold/fold forward is its merge) and with
a 3x3 kernel; one adapter, and two adapters of different block sizes.

Where PEFT's unmerged forward does not compute what its own merged weight computes (two active adapters: PEFT
rotates the input with adapter 1 first while merging applies adapter 2's rotation first; Conv2d kernels larger than
1x1: PEFT rotates overlapping patches and folds them back), the generated forward is compared with PEFT's *merged*
forward, which is what the spec's composition rule makes it compute; `peft_forward_vs_merge` records PEFT's own gap
there (see the spec's header comment).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "reference_methods" / "oft.yaml"
JSON_MARKER = "OFT_PARITY_JSON: "
# a tree, a generation and one subprocess: about 30 s
pytestmark = pytest.mark.slow
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3

# case -> (layer, [(adapter name, hyperparameters)], whether PEFT's unmerged forward equals its merge)
CASES: dict[str, tuple[str, list[tuple[str, dict[str, Any]]], bool]] = {
    "Linear/single": ("Linear", [("default", {"oft_block_size": 4})], True),
    "Linear/single_cayley": ("Linear", [("default", {"oft_block_size": 8, "use_cayley_neumann": False})], True),
    "Linear/single_r": ("Linear", [("default", {"r": 2, "oft_block_size": 0, "num_cayley_neumann_terms": 7})], True),
    "Linear/multi": (
        "Linear",
        [("default", {"oft_block_size": 4}), ("other", {"r": 2, "oft_block_size": 0, "use_cayley_neumann": False})],
        False,
    ),
    "Conv2d/single_1x1": ("Conv2d_1x1", [("default", {"r": 2, "oft_block_size": 0})], True),
    "Conv2d/single_3x3": ("Conv2d_3x3", [("default", {"r": 3, "oft_block_size": 0})], False),
    "Conv2d/multi_1x1": (
        "Conv2d_1x1",
        [("default", {"r": 2, "oft_block_size": 0}), ("other", {"oft_block_size": 2})],
        False,
    ),
}
CASE_NAMES = tuple(CASES)

DIFF_KEYS = (
    "forward",
    "merged_weight",
    "merged_forward",
    "unmerged_weight",
    "restored_weight",
    "disabled_forward",
    "merge_and_unload",
)
SINGLE_FAITHFUL_KEYS = ("grad",)
MULTI_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("oft-parity")
    return parity_report_in_fresh_tree(
        Path(__file__), [SPEC], peft_sdist, workdir, what="OFT parity script", marker=JSON_MARKER
    )


def _expected_keys(case: str) -> tuple[str, ...]:
    _, adapters, faithful = CASES[case]
    keys = DIFF_KEYS + (MULTI_KEYS if len(adapters) > 1 else ())
    return keys + (SINGLE_FAITHFUL_KEYS if faithful and len(adapters) == 1 else ())


def test_every_case_ran(parity_report: dict[str, Any]) -> None:
    from tests.parity_helpers import assert_every_case_ran

    assert_every_case_ran(parity_report, CASE_NAMES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_reference_oft_matches_peft(parity_report: dict[str, Any], case: str) -> None:
    from tests.parity_helpers import assert_close_with_effect, case_result

    result = case_result(parity_report, case)
    expected = _expected_keys(case)
    assert_close_with_effect(case, result, expected, EFFECT_KEYS, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


def test_peft_unmerged_forward_differs_from_its_merge_where_the_spec_says(parity_report: dict[str, Any]) -> None:
    """The cases compared with PEFT's merged forward are those where PEFT's own forward and merge disagree (so the
    choice is real), and PEFT agrees with itself everywhere else."""
    for case, (_, _, faithful) in CASES.items():
        gap = parity_report["cases"][case]["peft_forward_vs_merge"]
        if faithful:
            assert gap <= TOLERANCE, f"{case}: PEFT's forward and merge differ by {gap}"
        else:
            assert gap > MIN_EFFECT, f"{case}: PEFT's forward equals its merge ({gap}): compare the forward directly"


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _layer(kind: str) -> tuple[Any, Any]:
    import torch
    from torch import nn

    if kind == "Linear":
        return nn.Linear(16, 24), torch.randn(6, 16)
    if kind == "Conv2d_1x1":
        return nn.Conv2d(8, 6, 1), torch.randn(3, 8, 5, 5)
    if kind == "Conv2d_3x3":
        return nn.Conv2d(4, 6, 3, padding=1), torch.randn(3, 4, 6, 6)
    raise ValueError(kind)


def _run_case(case: str) -> dict[str, float]:
    import copy

    import peft
    import torch
    from peft.tuners.oft.layer import OFTLayer
    from peft.tuners.refoft import RefOFTConfig
    from peft.tuners.refoft.layer import RefOFTLayer

    from tests.parity_helpers import max_abs_diff, one_layer_net, only_tuner_layer

    kind, adapters, faithful = CASES[case]
    torch.manual_seed(3000 + CASE_NAMES.index(case))
    layer, x = _layer(kind)
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    names = [name for name, _ in adapters]
    peft_model = gen_model = None
    for name, hp in adapters:
        peft_config = peft.OFTConfig(init_weights=False, target_modules=["layer"], **hp)
        gen_config = RefOFTConfig(init_weights=False, target_modules=["layer"], **hp)
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    peft_layer = only_tuner_layer(peft_model, OFTLayer)
    gen_layer = only_tuner_layer(gen_model, RefOFTLayer)
    for name in names:
        source = peft_layer.oft_R[name].weight
        target = gen_layer.refoft_oft_R[name]
        if source.shape != target.shape:
            raise AssertionError(f"oft_R: PEFT {tuple(source.shape)} vs generated {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(source)
    if len(names) > 1:
        peft_model.base_model.set_adapter(names)
        gen_model.base_model.set_adapter(names)

    out: dict[str, float] = {}
    if faithful and len(names) == 1:
        # one backward pass: PEFT's Neumann loop / solve vs autograd through the spec's closed form
        target_out = torch.randn_like(base_out)
        (peft_model(x) * target_out).sum().backward()
        (gen_model(x) * target_out).sum().backward()
        peft_grad = peft_layer.oft_R["default"].weight.grad
        gen_grad = gen_layer.refoft_oft_R["default"].grad
        out["grad"] = max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item())

    peft_model.eval()
    gen_model.eval()
    with torch.no_grad():
        peft_out = peft_model(x)
        peft_model.merge_adapter()
        peft_merged_weight = peft_layer.get_base_layer().weight.detach().clone()
        peft_merged_out = peft_model(x)
        peft_model.unmerge_adapter()
        peft_unmerged_weight = peft_layer.get_base_layer().weight.detach().clone()
        out["peft_forward_vs_merge"] = max_abs_diff(peft_out, peft_merged_out)
        expected = peft_out if faithful else peft_merged_out

        out["forward"] = max_abs_diff(gen_model(x), expected)
        out["effect_forward"] = max_abs_diff(expected, base_out)
        gen_model.merge_adapter()
        out["merged_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, peft_merged_weight)
        out["effect_merged_weight"] = max_abs_diff(peft_merged_weight, base_weight)
        out["merged_forward"] = max_abs_diff(gen_model(x), peft_merged_out)
        gen_model.unmerge_adapter()
        out["unmerged_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, peft_unmerged_weight)
        out["restored_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, base_weight)
        with gen_model.disable_adapter():
            out["disabled_forward"] = max_abs_diff(gen_model(x), base_out)

        if len(names) > 1:
            # one sample per adapter and the base model for the rest; the expected rows come from PEFT with each
            # adapter alone (merged, so they are what the spec's composition computes)
            rows_of = [*names, "__base__"] * len(x)
            rows_of = rows_of[: len(x)]
            mixed = torch.empty_like(peft_out)
            for name in set(rows_of):
                rows = [i for i, item in enumerate(rows_of) if item == name]
                if name == "__base__":
                    mixed[rows] = base_out[rows]
                    continue
                peft_model.base_model.set_adapter(name)
                peft_model.merge_adapter()
                mixed[rows] = peft_model(x[rows])
                peft_model.unmerge_adapter()
            peft_model.base_model.set_adapter(names)
            out["mixed_batch"] = max_abs_diff(gen_model(x, adapter_names=rows_of), mixed)

        gen_unloaded = gen_model.merge_and_unload()
        if any(isinstance(m, RefOFTLayer) for m in gen_unloaded.modules()):
            raise AssertionError("merge_and_unload left RefOFT layers in the model")
        out["merge_and_unload"] = max_abs_diff(gen_unloaded(x), peft_merged_out)
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    return report_cases(tree, JSON_MARKER, [(case, functools.partial(_run_case, case)) for case in CASE_NAMES])


if __name__ == "__main__":
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
