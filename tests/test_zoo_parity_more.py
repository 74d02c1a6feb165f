"""The reference specs of SuperTuning and PEANuT are numerically PEFT's own.

`reference_methods/supertuning.yaml` (generated as `refsupertuning`: PEFT's default "Super" mode, a sparse update at
the top-|W0| entries, an index buffer computed from the base weight) and `reference_methods/peanut.yaml`
(`refpeanut`: PEFT's default depth 0, B act(A W0) * scaling) are generated and registered into one PEFT 0.21.2 tree.
This file is also the script run there (one subprocess with `PYTHONPATH=TREE/src`): on a tiny nn.Linear model (the
only layer type both PEFT methods support) it puts PEFT's method (`init_weights=False`) on one copy and the generated
one on another and copies PEFT's trainable weights across. SuperTuning's indices are NOT copied: the generated layer
computes them itself with its init expression (topk of |W0|), and they must equal PEFT's (PEFT stores them as int32,
the spec language as int64: compared as values). It reports max absolute differences as JSON: the indices, forward,
gradients, merged and unmerged weights, merge_and_unload, disabled adapters, two adapters active at once (PEANuT with
different activations), a mixed-adapter batch.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS = {
    "supertuning": REPO_ROOT / "reference_methods" / "supertuning.yaml",
    "peanut": REPO_ROOT / "reference_methods" / "peanut.yaml",
}
JSON_MARKER = "ZOO_PARITY_MORE_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3


def _top_entries(weight: Any, sparsity: float, largest: bool) -> Any:
    """SuperTuning's support computed here from the original base weight (PEFT's formula, int64)."""
    import torch

    return torch.topk(weight.abs().flatten(), int(weight.numel() * (1 - sparsity)), largest=largest)[1]


METHODS: dict[str, dict[str, Any]] = {
    "supertuning": {
        "peft_config": "SupertuningConfig",
        "peft_layer": ("peft.tuners.supertuning.layer", "SupertuningLayer"),
        "gen_package": "peft.tuners.refsupertuning",
        "gen_config": "RefSupertuningConfig",
        "gen_layer": "RefSupertuningLayer",
        "gen_model": "RefSupertuningModel",
        # PEFT's trainable weights -> the generated layer's (copied)
        "weights": {"supertuning_values": "refsupertuning_sparse_values"},
        # PEFT's buffers -> the generated layer's (computed by each, compared as values: int32 vs int64)
        "buffers": {"supertuning_indices": "refsupertuning_indices"},
        # an adapter added while another is merged: the spec language ranks the pre-merge weight
        "late_buffer": ("refsupertuning_indices", functools.partial(_top_entries, sparsity=0.9, largest=True)),
        "variants": {
            # Linear(10, 12): 0.9 trains int(120 * 0.1) = 11 entries (PEFT's _num_trainable), 0.75 trains 30
            "single": [("default", {"sparsity": 0.9})],
            "multi": [("default", {"sparsity": 0.9}), ("other", {"sparsity": 0.75, "select_top": False})],
        },
    },
    "peanut": {
        "peft_config": "PeanutConfig",
        "peft_layer": ("peft.tuners.peanut.layer", "PeanutLayer"),
        "gen_package": "peft.tuners.refpeanut",
        "gen_config": "RefPeanutConfig",
        "gen_layer": "RefPeanutLayer",
        "gen_model": "RefPeanutModel",
        # PEFT's A and B are nn.Linear modules: `.weight` of the module per adapter
        "weights": {"peanut_A.weight": "refpeanut_A", "peanut_B.weight": "refpeanut_B"},
        "buffers": {},
        "variants": {
            "single": [("default", {"r": 4})],
            "multi": [("default", {"r": 4, "scaling": 0.5}), ("other", {"r": 2, "act_fn": "gelu", "scaling": 2.0})],
            # the other two activations of the spec's enum
            "multi_acts": [("default", {"r": 3, "act_fn": "silu"}), ("other", {"r": 5, "act_fn": "tanh"})],
        },
    },
}
CASE_NAMES = tuple(f"{method}/Linear/{variant}" for method in SPECS for variant in METHODS[method]["variants"])

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
SINGLE_ONLY_DIFF_KEYS = ("grad",)
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")
BUFFER_EFFECT_KEYS = ("effect_buffers",)
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)
LATE_BUFFER_KEYS = ("late_buffer",)


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("zoo-parity-more")
    return parity_report_in_fresh_tree(
        Path(__file__), SPECS.values(), peft_sdist, workdir, what="zoo parity script (more)", marker=JSON_MARKER
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
    method = METHODS[case.split("/")[0]]
    single = case.endswith("/single")
    expected = DIFF_KEYS + (SINGLE_ONLY_DIFF_KEYS if single else MULTI_ONLY_DIFF_KEYS)
    if single and "late_buffer" in method:
        expected += LATE_BUFFER_KEYS
    effects = EFFECT_KEYS + (SINGLE_ONLY_EFFECT_KEYS if single else ())
    if method["buffers"]:
        effects += BUFFER_EFFECT_KEYS
    assert_close_with_effect(case, result, expected, effects, tolerance=TOLERANCE, min_effect=MIN_EFFECT)


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _peft_tensor(layer: Any, attr: str, adapter: str) -> Any:
    """PEFT's tensor `attr` of `adapter`: `name` (a ParameterDict/BufferDict entry) or `name.weight` (a module's)."""
    name, _, sub = attr.partition(".")
    entry = getattr(layer, name)[adapter]
    return getattr(entry, sub) if sub else entry


def _run_case(method_name: str, variant: str) -> dict[str, float]:
    import copy
    import importlib

    import peft
    import torch

    from tests.parity_helpers import make_case, max_abs_diff, merge_unload_checks, one_layer_net, only_tuner_layer

    method = METHODS[method_name]
    peft_config_cls = getattr(peft, method["peft_config"])
    peft_layer_cls = getattr(importlib.import_module(method["peft_layer"][0]), method["peft_layer"][1])
    gen_package = importlib.import_module(method["gen_package"])
    gen_config_cls = getattr(gen_package, method["gen_config"])
    gen_layer_cls = getattr(importlib.import_module(method["gen_package"] + ".layer"), method["gen_layer"])

    torch.manual_seed(4000 + CASE_NAMES.index(f"{method_name}/Linear/{variant}"))
    layer, x, _ = make_case("Linear")
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = method["variants"][variant]
    adapter_names = [name for name, _ in adapters]
    peft_model = gen_model = None
    common: dict[str, Any] = {}
    for name, hp in adapters:
        common = {"init_weights": False, "target_modules": ["layer"], **hp}
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
    out: dict[str, float] = {"buffers": 0.0, "effect_buffers": 0.0}
    for name in adapter_names:
        for peft_name, gen_name in method["buffers"].items():
            # computed by each side on its own: never copied
            source, target = getattr(peft_layer, peft_name)[name], getattr(gen_layer, gen_name)[name]
            if source.dtype.is_floating_point or target.dtype != torch.long:
                raise AssertionError(f"{peft_name}: PEFT {source.dtype} vs generated {target.dtype}")
            out["buffers"] = max(out["buffers"], max_abs_diff(target, source))
            out["effect_buffers"] = max(out["effect_buffers"], source.abs().max().item())
        for peft_name, gen_name in method["weights"].items():
            source, target = _peft_tensor(peft_layer, peft_name, name), getattr(gen_layer, gen_name)[name]
            if source.shape != target.shape:
                raise AssertionError(f"{peft_name}: PEFT {tuple(source.shape)} vs generated {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(source)
    if variant != "single":
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
            peft_grad = _peft_tensor(peft_layer, peft_name, "default").grad
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

        if variant != "single":
            # PEFT's SuperTuning and PEANuT have no mixed-batch forward: the expected rows come from PEFT's model with
            # each adapter set in turn
            names = [*adapter_names, "__base__"] * (len(x) // (len(adapter_names) + 1) + 1)
            names = names[: len(x)]
            expected = torch.empty_like(peft_out)
            for name in set(names):
                rows = [i for i, item in enumerate(names) if item == name]
                if name == "__base__":
                    expected[rows] = base_out[rows]
                else:
                    peft_model.base_model.set_adapter(name)
                    expected[rows] = peft_model(x[rows])
            peft_model.base_model.set_adapter(adapter_names)
            out["mixed_batch"] = max_abs_diff(gen_model(x, adapter_names=names), expected)

        out.update(
            merge_unload_checks(peft_model, gen_model, peft_layer, gen_layer, x, base_weight, base_out, gen_layer_cls)
        )
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [
        (f"{method}/Linear/{variant}", functools.partial(_run_case, method, variant))
        for method in SPECS
        for variant in METHODS[method]["variants"]
    ]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): append the repository root after the tree's src, so that
    # `tests.parity_helpers` is importable and `peft` still comes from the tree
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
