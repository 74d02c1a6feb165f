"""The reference VeRA spec is numerically PEFT's own VeRA, shared projections included.

`reference_methods/vera.yaml` (generated as `refvera`) is generated and registered into a PEFT 0.21.2 tree. This file
is also the script run there (a subprocess with `PYTHONPATH=TREE/src`, so the tree's peft is the only one imported).
Each case is a two-layer model whose layers differ in both dims (so the shared projections are sized for the larger
one and each layer uses its own slice), on `nn.Linear` and transformers' `Conv1D` (the layer types PEFT's VeRA and
the spec both support), with one adapter and with two active at once. PEFT's VeRA (`init_weights=False`) goes on one
copy and the generated method on another; the projections drawn from the same `projection_prng_key` must already
agree (same generator, same order), then PEFT's projections and lambdas are copied across and the script reports max
absolute differences as JSON: forward, gradients, merged / unmerged weights of both layers, merge_and_unload,
disabled adapters, a mixed-adapter batch, and a save / load round trip with and without `save_projection`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "reference_methods" / "vera.yaml"
JSON_MARKER = "VERA_PARITY_JSON: "
TOLERANCE = 1e-5
MIN_EFFECT = 1e-3

LAYER_TYPES = ("Linear", "Conv1D")
VARIANTS = ("single", "multi")
CASE_NAMES = tuple(f"vera/{layer}/{variant}" for layer in LAYER_TYPES for variant in VARIANTS)
# PEFT's VeRA: every adapter must have the same key and r (its second adapter reuses the first one's projections)
ADAPTERS = {
    "single": [("default", {"r": 4})],
    "multi": [("default", {"r": 4}), ("other", {"r": 4})],
}
PRNG_KEY = 7

DIFF_KEYS = (
    "projection_init",
    "forward",
    "merged_weight",
    "merged_forward",
    "unmerged_weight",
    "restored_weight",
    "unmerged_forward",
    "disabled_forward",
    "merge_and_unload",
    "reload_saved_projection",
    "reload_regenerated_projection",
)
SINGLE_ONLY_DIFF_KEYS = ("grad",)
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")
SINGLE_ONLY_EFFECT_KEYS = ("effect_grad",)

# one subprocess for all cases, about a minute on 2 cores
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def parity_report(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.parity_helpers import parity_report_in_fresh_tree

    workdir = tmp_path_factory.mktemp("vera-parity")
    return parity_report_in_fresh_tree(
        Path(__file__), [SPEC], peft_sdist, workdir, what="vera parity script", marker=JSON_MARKER
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


@pytest.mark.parametrize("case", CASE_NAMES)
def test_checkpoint_holds_projections_once_and_only_when_saved(parity_report: dict[str, Any], case: str) -> None:
    if case in parity_report["errors"]:
        pytest.fail(f"{case} raised:\n{parity_report['errors'][case]}")
    keys = parity_report["cases"][case]["checkpoint_keys"]
    # PEFT's VeRA and the generated method save the same entries (their prefixes aside): the lambdas of each layer
    # and, with save_projection=True, the two projections once, at model level
    assert keys["generated_saved"] == keys["peft_saved"], keys
    assert keys["generated_not_saved"] == keys["peft_not_saved"], keys
    assert sorted(set(keys["generated_saved"]) - set(keys["generated_not_saved"])) == ["base_model.A", "base_model.B"]


# ---------------------------------------------------------------------------------------------------------------------
# script side (torch and the tree's peft are imported only here)


def _two_layer_net(layer_type: str) -> tuple[Any, Any]:
    """lin0: 10 -> 16, lin1: 16 -> 7 (Conv1D: the same sizes): the projections are sized (r, 16) and (16, r)."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if layer_type == "Linear":
                self.lin0, self.lin1 = nn.Linear(10, 16), nn.Linear(16, 7)
            else:
                self.lin0, self.lin1 = Conv1D(16, 10), Conv1D(7, 16)  # Conv1D(nf=out, nx=in)
                for layer in (self.lin0, self.lin1):
                    with torch.no_grad():
                        layer.weight.normal_(std=0.3)
                        layer.bias.normal_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin1(torch.relu(self.lin0(x)))

    return Net().eval(), torch.randn(6, 10)


def _canonical_key(key: str, prefix: str) -> str:
    """A checkpoint key with the method's names taken out: `lin0.vera_lambda_b` and `lin0.refvera_lambda_b` both
    read `lin0.lambda_b`, `base_model.vera_A` and `base_model.shared_A` both `base_model.A`."""
    return key.replace(f".{prefix}", ".").replace(".shared_", ".")


def _saved_keys(model: Any, directory: Path, prefix: str) -> list[str]:
    from safetensors.torch import load_file

    model.save_pretrained(directory)
    return sorted(_canonical_key(k, prefix) for k in load_file(directory / "adapter_model.safetensors"))


def _run_case(layer_type: str, variant: str) -> dict[str, Any]:
    import copy
    import tempfile

    import peft
    import torch
    from peft import PeftModel, VeraConfig
    from peft.tuners.refvera import RefVeraConfig
    from peft.tuners.refvera.layer import RefVeraLayer
    from peft.tuners.vera.layer import VeraLayer

    from tests.parity_helpers import max_abs_diff

    torch.manual_seed(3000 + CASE_NAMES.index(f"vera/{layer_type}/{variant}"))
    base, x = _two_layer_net(layer_type)
    targets = ["lin0", "lin1"]
    base_weights = {n: getattr(base, n).weight.detach().clone() for n in targets}
    with torch.no_grad():
        base_out = base(x)

    adapters = ADAPTERS[variant]
    names = [name for name, _ in adapters]
    common = {"init_weights": False, "target_modules": targets, "projection_prng_key": PRNG_KEY}
    peft_model = gen_model = None
    for name, hp in adapters:
        peft_config = VeraConfig(**common, **hp)
        gen_config = RefVeraConfig(**common, **hp)
        if peft_model is None:
            peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = peft.get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    peft_tuner, gen_tuner = peft_model.base_model, gen_model.base_model

    out: dict[str, Any] = {}
    # the same key, generator and order of draws: the projections are PEFT's own before anything is copied
    out["projection_init"] = max(
        max_abs_diff(getattr(gen_tuner, f"shared_{m}")[n], getattr(peft_tuner, f"vera_{m}")[n])
        for m in ("A", "B")
        for n in names
    )
    peft_layers = {t: getattr(peft_tuner.model, t) for t in targets}
    gen_layers = {t: getattr(gen_tuner.model, t) for t in targets}
    assert all(isinstance(v, VeraLayer) for v in peft_layers.values())
    assert all(isinstance(v, RefVeraLayer) for v in gen_layers.values())
    with torch.no_grad():
        for n in names:
            for m in ("A", "B"):
                getattr(gen_tuner, f"shared_{m}")[n].copy_(getattr(peft_tuner, f"vera_{m}")[n])
            for t in targets:
                for v in ("lambda_b", "lambda_d"):
                    getattr(gen_layers[t], f"refvera_{v}")[n].copy_(getattr(peft_layers[t], f"vera_{v}")[n])
    # every layer reads the model's tensors (a reference, so the copy above reached them all)
    for t in targets:
        if gen_layers[t].shared_A is not gen_tuner.shared_A:
            raise AssertionError(f"{t} holds its own projections, not the model's")
    if len(names) > 1:
        peft_tuner.set_adapter(names)
        gen_tuner.set_adapter(names)

    if variant == "single":
        peft_model.train()
        gen_model.train()
        target = torch.randn_like(base_out)
        (peft_model(x) * target).sum().backward()
        (gen_model(x) * target).sum().backward()
        diffs, sizes = [], []
        for t in targets:
            for v in ("lambda_b", "lambda_d"):
                peft_grad = getattr(peft_layers[t], f"vera_{v}")["default"].grad
                gen_grad = getattr(gen_layers[t], f"refvera_{v}")["default"].grad
                diffs.append(max_abs_diff(gen_grad, peft_grad) / max(1.0, peft_grad.abs().max().item()))
                sizes.append(peft_grad.abs().max().item())
        out["grad"] = max(diffs)
        out["effect_grad"] = min(sizes)
        if gen_tuner.shared_A["default"].requires_grad:
            raise AssertionError("the shared projection is trainable")
    peft_model.eval()
    gen_model.eval()

    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            rows = [*names, "__base__"] * 2
            expected = torch.empty_like(peft_out)
            for name in set(rows):
                index = [i for i, item in enumerate(rows) if item == name]
                if name == "__base__":
                    expected[index] = base_out[index]
                else:
                    peft_tuner.set_adapter(name)
                    expected[index] = peft_model(x[index])
            peft_tuner.set_adapter(names)
            out["mixed_batch"] = max_abs_diff(gen_model(x, adapter_names=rows), expected)

        peft_model.merge_adapter()
        gen_model.merge_adapter()

        def weight(layers: dict[str, Any], t: str) -> Any:
            return layers[t].get_base_layer().weight

        out["merged_weight"] = max(max_abs_diff(weight(gen_layers, t), weight(peft_layers, t)) for t in targets)
        out["effect_merged_weight"] = min(max_abs_diff(weight(peft_layers, t), base_weights[t]) for t in targets)
        out["merged_forward"] = max_abs_diff(gen_model(x), peft_model(x))
        peft_model.unmerge_adapter()
        gen_model.unmerge_adapter()
        out["unmerged_weight"] = max(max_abs_diff(weight(gen_layers, t), weight(peft_layers, t)) for t in targets)
        out["restored_weight"] = max(max_abs_diff(weight(gen_layers, t), base_weights[t]) for t in targets)
        out["unmerged_forward"] = max_abs_diff(gen_model(x), peft_model(x))
        with gen_model.disable_adapter():
            out["disabled_forward"] = max_abs_diff(gen_model(x), base_out)
        gen_out = gen_model(x)

    # save / load: with save_projection the checkpoint holds the projections (once), without it they are
    # regenerated from projection_prng_key; PEFT's VeRA saves the same entries
    keys: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        keys["peft_saved"] = _saved_keys(peft_model, Path(tmp, "peft"), "vera_")
        keys["generated_saved"] = _saved_keys(gen_model, Path(tmp, "gen"), "refvera_")
        with torch.no_grad():
            loaded = PeftModel.from_pretrained(copy.deepcopy(base), Path(tmp, "gen"), adapter_name=names[0])
            for name in names[1:]:
                loaded.load_adapter(Path(tmp, "gen", name), adapter_name=name)
            loaded.base_model.set_adapter(names)
            out["reload_saved_projection"] = max_abs_diff(loaded(x), gen_out)

        # the projections drawn again from the key: the values PEFT drew (copied in above) come back
        def unsaved(model: Any, config_cls: Any, prefix: str, layers: dict[str, Any]) -> Any:
            fresh = None
            for name, hp in adapters:
                config = config_cls(**common, **hp, save_projection=False)
                if fresh is None:
                    fresh = peft.get_peft_model(copy.deepcopy(base), config, adapter_name=name)
                else:
                    fresh.add_adapter(name, config)
            with torch.no_grad():
                for name in names:
                    for t in targets:
                        for v in ("lambda_b", "lambda_d"):
                            source = getattr(layers[t], f"{prefix}{v}")[name]
                            getattr(getattr(fresh.base_model.model, t), f"{prefix}{v}")[name].copy_(source)
            return fresh

        peft_unsaved = unsaved(peft_model, VeraConfig, "vera_", peft_layers)
        gen_unsaved = unsaved(gen_model, RefVeraConfig, "refvera_", gen_layers)
        keys["peft_not_saved"] = _saved_keys(peft_unsaved, Path(tmp, "peft-ns"), "vera_")
        keys["generated_not_saved"] = _saved_keys(gen_unsaved, Path(tmp, "gen-ns"), "refvera_")
        with torch.no_grad():
            loaded = PeftModel.from_pretrained(copy.deepcopy(base), Path(tmp, "gen-ns"), adapter_name=names[0])
            for name in names[1:]:
                loaded.load_adapter(Path(tmp, "gen-ns", name), adapter_name=name)
            loaded.base_model.set_adapter(names)
            out["reload_regenerated_projection"] = max_abs_diff(loaded(x), gen_out)
    out["checkpoint_keys"] = keys

    with torch.no_grad():
        peft_unloaded = peft_model.merge_and_unload()
        gen_unloaded = gen_model.merge_and_unload()
        if any(isinstance(m, RefVeraLayer) for m in gen_unloaded.modules()):
            raise AssertionError("merge_and_unload left RefVeraLayer layers in the model")
        out["merge_and_unload"] = max_abs_diff(gen_unloaded(x), peft_unloaded(x))
    return out


def _script_main(tree: str) -> int:
    from tests.parity_helpers import report_cases

    cases = [
        (f"vera/{layer}/{variant}", functools.partial(_run_case, layer, variant))
        for layer in LAYER_TYPES
        for variant in VARIANTS
    ]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    # run in a PEFT tree (`python -P`, PYTHONPATH=TREE/src): append the repository root after the tree's src, so that
    # `tests.parity_helpers` is importable and `peft` still comes from the tree
    sys.path.append(str(REPO_ROOT))
    sys.exit(_script_main(sys.argv[1]))
