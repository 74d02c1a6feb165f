"""Helpers for the LoRA parity test (tests/test_lora_parity.py), and the subprocess/tree plumbing shared with the
LoRA variant tests (tests/test_lora_variant_parity.py, tests/test_lora_variant_in_tree.py).

Two halves:

* `generate_into_tree` puts a generated method into a writable PEFT source tree through the CLI
  (`python -m scaffold new SPEC --peft-root TREE`); if that fails, the test errors.
* `run_parity` runs this file as a script in a subprocess with `PYTHONPATH=TREE/src`, so the tree's `peft` is the
  only `peft` imported there (never the one installed in the test environment). The script builds tiny one-layer
  models, puts PEFT's own LoRA (`init_lora_weights=False`) on one copy and the generated `reflora` on another, copies
  the LoRA weights into the generated adapter, and reports max absolute differences per case and per quantity as
  JSON.

Shared by the other parity scripts: `run_script_in_tree` (the subprocess, on the pytest side), and on the script
side `report_cases` (the tree check, per-case errors and the JSON line), `make_case`, `one_layer_net`, `max_abs_diff`,
`merge_round_trip` and `only_tuner_layer`.

The script half imports torch/peft only inside functions: importing this module from pytest stays cheap.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_LORA_SPEC = REPO_ROOT / "reference_methods" / "lora.yaml"

# ---------------------------------------------------------------------------------------------------------------------
# What the comparison covers. Shared by the script (which runs the cases) and the test (which checks it got them all).

# Layer types of the tiny models; "Conv1D" is transformers' Conv1D (GPT-2 style, weight stored (in, out)).
LAYER_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv1D")
# lora: one adapter, scaling alpha / r. rslora: one adapter, scaling alpha / sqrt(r).
# multi: two adapters of different rank/alpha/scaling, both active, plus a mixed-adapter batch.
VARIANTS = ("lora", "rslora", "multi")
CASE_NAMES = tuple(f"{layer}/{variant}" for layer in LAYER_TYPES for variant in VARIANTS)

# Quantities that must agree between PEFT's LoRA and the generated method (max abs difference, fp32).
#   scaling            the per-adapter scaling factors
#   forward            output with the adapter(s) active, unmerged
#   merged_weight      base layer weight after merge_adapter()
#   merged_forward     output while merged
#   unmerged_weight    base layer weight after unmerge_adapter()
#   restored_weight    generated base weight after unmerge vs the original base weight
#   unmerged_forward   output after unmerge
#   disabled_forward   output inside `with model.disable_adapter()` vs the base model
#   mixed_batch        output with `adapter_names=[...]` (multi only)
#   merge_and_unload   output of the model returned by merge_and_unload()
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
MULTI_ONLY_DIFF_KEYS = ("mixed_batch",)
# Quantities that must be large, so that a no-op adapter cannot pass: PEFT's adapter changes the output and the merged
# weight, and so (both being equal to PEFT's) must the generated one.
EFFECT_KEYS = ("effect_forward", "effect_merged_weight")

R, LORA_ALPHA = 4, 8.0
# the second adapter of the "multi" variant: another rank, alpha and scaling rule
OTHER_R, OTHER_LORA_ALPHA = 2, 3.0

JSON_MARKER = "PARITY_JSON: "


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def generate_into_tree(tree: Path, spec: Path) -> None:
    """Generate the method of `spec` into the PEFT source tree `tree` and register it there, through the CLI users
    run (`python -m scaffold new SPEC --peft-root TREE`). A failure is an error: the parity tests must test what
    `new` produces, never a stand-in path."""
    tree, spec = Path(tree).resolve(), Path(spec).resolve()
    cmd = [sys.executable, "-m", "scaffold", "new", str(spec), "--peft-root", str(tree)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`scaffold new {spec.name} --peft-root {tree}` exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# pytest side of a parity file: one tree, one script run, one report checked case by case


def parity_report_in_fresh_tree(
    script: Path, specs: Iterable[Path], peft_sdist: Path, workdir: Path, *, what: str, marker: str
) -> dict[str, Any]:
    """Copy the PEFT sdist to `workdir/peft`, generate every spec into it, and run `script` there (see
    `run_script_in_tree`): the report of a parity file's module-scoped fixture."""
    from scaffold.peft_source import copy_peft_tree

    tree = copy_peft_tree(peft_sdist, workdir / "peft")
    for spec in specs:
        generate_into_tree(tree, spec)
    return run_script_in_tree(script, tree, marker, what=what)


def assert_every_case_ran(report: Mapping[str, Any], case_names: Iterable[str]) -> None:
    errors = report["errors"]
    assert not errors, "cases raised:\n" + "\n".join(f"--- {case}\n{tb}" for case, tb in errors.items())
    assert sorted(report["cases"]) == sorted(case_names)


def case_result(report: Mapping[str, Any], case: str) -> dict[str, Any]:
    """The measurements of `case`; a case that raised fails the test with its traceback."""
    import pytest

    if case in report["errors"]:
        pytest.fail(f"{case} raised:\n{report['errors'][case]}")
    return dict(report["cases"][case])


def assert_close_with_effect(
    case: str,
    result: Mapping[str, Any],
    diffs: Iterable[str],
    effects: Iterable[str],
    *,
    tolerance: float,
    min_effect: float,
) -> None:
    """Every difference in `diffs` is within `tolerance` and every effect in `effects` above `min_effect` (so a
    no-op adapter cannot pass by comparing nothing with nothing); all of them were measured."""
    diffs, effects = tuple(diffs), tuple(effects)
    missing = [key for key in diffs + effects if key not in result]
    assert not missing, f"{case}: quantities not measured: {missing}"
    too_far = {key: result[key] for key in diffs if not result[key] <= tolerance}
    assert not too_far, f"{case}: the generated method differs from PEFT's by more than {tolerance}: {too_far}"
    too_small = {key: result[key] for key in effects if not result[key] > min_effect}
    assert not too_small, f"{case}: the adapter barely changes the model (vacuous comparison): {too_small}"


# ---------------------------------------------------------------------------------------------------------------------
# Running the comparison


def run_script_in_tree(
    script: Path,
    tree: Path,
    marker: str,
    *,
    timeout: float = 300,
    what: str = "parity script",
    env_defaults: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run `python SCRIPT TREE` in a fresh interpreter with `PYTHONPATH=TREE/src` (the tree's peft is the only one it
    can import) and return the JSON report it prints on its one stdout line starting with `marker`.

    `env_defaults` are set in the subprocess's environment unless already set; `what` names the script in the error
    raised when it fails or prints no (or more than one) report line.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(Path(tree).resolve() / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for key, value in (env_defaults or {}).items():
        env.setdefault(key, value)
    # -P (3.11+): do not put the script's directory (tests/) on sys.path; only the tree's src and site-packages count
    isolate = ["-P"] if sys.version_info >= (3, 11) else []
    proc = subprocess.run(
        [sys.executable, *isolate, str(Path(script).resolve()), str(Path(tree).resolve())],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report_lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or len(report_lines) != 1:
        raise RuntimeError(f"{what} failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return json.loads(report_lines[0][len(marker) :])


def run_parity(tree: Path, timeout: float = 300) -> dict[str, Any]:
    """Run the comparison script (this file) against `tree` in a fresh interpreter and return its JSON report."""
    return run_script_in_tree(
        Path(__file__), tree, JSON_MARKER, timeout=timeout, env_defaults={"TOKENIZERS_PARALLELISM": "false"}
    )


# ---------------------------------------------------------------------------------------------------------------------
# The script (runs in the subprocess; torch, transformers and the tree's peft are imported only here)


def report_cases(tree: str | Path, marker: str, cases: Iterable[tuple[str, Callable[[], dict[str, float]]]]) -> int:
    """The main of a parity script: check that the `peft` imported is the tree's, run each `(name, run)` case with
    warnings silenced, and print `{"peft_file", "cases": {name: run()}, "errors": {name: traceback}}` as one JSON line
    after `marker`. A case that raises is reported in "errors", so one failure does not hide the others. Returns 0.
    """
    import warnings as _warnings

    import peft

    # the comparison is meaningless if the peft imported is not the tree's
    peft_file = Path(peft.__file__).resolve()
    if Path(tree).resolve() / "src" not in peft_file.parents:
        raise RuntimeError(f"imported peft from {peft_file}, not from the tree {tree}")

    report: dict[str, Any] = {"peft_file": str(peft_file), "cases": {}, "errors": {}}
    for case, run in cases:
        try:
            with _warnings.catch_warnings():
                _warnings.simplefilter("ignore")
                report["cases"][case] = run()
        except Exception:  # reported per case, so one failure does not hide the others
            report["errors"][case] = traceback.format_exc()
    print(marker + json.dumps(report), flush=True)
    return 0


def max_abs_diff(a: Any, b: Any) -> float:
    """Max absolute difference of two tensors of the same shape, in float64 (a shape mismatch raises)."""
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.detach().double() - b.detach().double()).abs().max().item()


def mixed_batch_names(adapter_names: list[str], batch_size: int) -> list[str]:
    """One sample per adapter in turn, and the base model (`__base__`) for every (n + 1)-th sample."""
    names = [*adapter_names, "__base__"] * (batch_size // (len(adapter_names) + 1) + 1)
    return names[:batch_size]


def mixed_batch_diff(
    peft_model: Any,
    gen_model: Any,
    x: Any,
    adapter_names: list[str],
    base_out: Any,
    *,
    active: list[str] | None = None,
) -> float:
    """The generated model's mixed-adapter batch against PEFT's model run with each adapter set in turn, for PEFT
    methods without a mixed-batch forward of their own. Leaves `active` (default: `adapter_names`) active on PEFT's
    model again."""
    import torch

    names = mixed_batch_names(adapter_names, len(x))
    expected = torch.empty_like(base_out)
    for name in set(names):
        rows = [i for i, item in enumerate(names) if item == name]
        if name == "__base__":
            expected[rows] = base_out[rows]
        else:
            peft_model.base_model.set_adapter(name)
            expected[rows] = peft_model(x[rows])
    peft_model.base_model.set_adapter(active or adapter_names)
    return max_abs_diff(gen_model(x, adapter_names=names), expected)


def one_layer_net(layer: Any) -> Any:
    """A tiny model whose only submodule is `layer`, under the name "layer" (the configs' target)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, layer: nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    return Net(layer)


def merge_round_trip(
    peft_model: Any, gen_model: Any, peft_layer: Any, gen_layer: Any, x: Any, base_weight: Any
) -> dict[str, float]:
    """`merge_adapter()` then `unmerge_adapter()` on both models (call under `torch.no_grad()`), measuring
    merged_weight, merged_forward and unmerged_weight (generated vs PEFT), restored_weight (the generated base weight
    after unmerge vs `base_weight`, the original) and effect_merged_weight (PEFT's merged weight vs the original)."""
    out: dict[str, float] = {}
    peft_model.merge_adapter()
    gen_model.merge_adapter()
    peft_w = peft_layer.get_base_layer().weight
    gen_w = gen_layer.get_base_layer().weight
    out["merged_weight"] = max_abs_diff(gen_w, peft_w)
    out["effect_merged_weight"] = max_abs_diff(peft_w, base_weight)
    out["merged_forward"] = max_abs_diff(gen_model(x), peft_model(x))

    peft_model.unmerge_adapter()
    gen_model.unmerge_adapter()
    out["unmerged_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, peft_layer.get_base_layer().weight)
    out["restored_weight"] = max_abs_diff(gen_layer.get_base_layer().weight, base_weight)
    return out


def merge_unload_checks(
    peft_model: Any,
    gen_model: Any,
    peft_layer: Any,
    gen_layer: Any,
    x: Any,
    base_weight: Any,
    base_out: Any,
    gen_layer_cls: type,
) -> dict[str, float]:
    """The checks every parity case ends with (under `torch.no_grad()`): the merge round trip, the unmerged and the
    disabled forward, and `merge_and_unload` (which must leave no generated layer behind)."""
    out = merge_round_trip(peft_model, gen_model, peft_layer, gen_layer, x, base_weight)
    out["unmerged_forward"] = max_abs_diff(gen_model(x), peft_model(x))
    with gen_model.disable_adapter():
        out["disabled_forward"] = max_abs_diff(gen_model(x), base_out)
    peft_unloaded = peft_model.merge_and_unload()
    gen_unloaded = gen_model.merge_and_unload()
    if any(isinstance(m, gen_layer_cls) for m in gen_unloaded.modules()):
        raise AssertionError(f"merge_and_unload left {gen_layer_cls.__name__} layers in the model")
    out["merge_and_unload"] = max_abs_diff(gen_unloaded(x), peft_unloaded(x))
    return out


def make_case(layer_type: str) -> tuple[Any, Any, bool]:
    """(base layer, input, fan_in_fan_out) for a layer type; call under a fixed seed."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if layer_type == "Linear":
        return nn.Linear(10, 12), torch.randn(6, 10), False
    if layer_type == "Embedding":
        return nn.Embedding(20, 12), torch.randint(0, 20, (6, 7)), False
    if layer_type == "Conv1d":
        # stride and padding: the adapter's convolution must honour them as the base layer does
        return nn.Conv1d(3, 6, 3, stride=2, padding=1), torch.randn(6, 3, 11), False
    if layer_type == "Conv2d":
        return nn.Conv2d(3, 6, (3, 2), stride=2, padding=1), torch.randn(6, 3, 9, 8), False
    if layer_type == "Conv3d":
        return nn.Conv3d(3, 6, (2, 3, 2), stride=(1, 2, 1), padding=1), torch.randn(4, 3, 5, 6, 4), False
    if layer_type == "Conv1D":
        layer = Conv1D(12, 10)  # nf=12 outputs, nx=10 inputs; weight stored (10, 12)
        with torch.no_grad():
            layer.weight.normal_()
            layer.bias.normal_()
        return layer, torch.randn(6, 10), True
    raise ValueError(layer_type)


def _adapter_configs(variant: str) -> list[tuple[str, dict[str, Any]]]:
    """(adapter name, hyperparameters) of each adapter of a variant, in the order they are added."""
    first = {"r": R, "lora_alpha": LORA_ALPHA, "use_rslora": variant == "rslora"}
    if variant == "multi":
        return [("default", first), ("other", {"r": OTHER_R, "lora_alpha": OTHER_LORA_ALPHA, "use_rslora": True})]
    return [("default", first)]


def _copy_adapter(peft_layer: Any, gen_layer: Any, adapter_name: str) -> None:
    """Copy PEFT's LoRA weights of `adapter_name` into the generated layer's canonical 2-D A (r, in) and B (out, r)."""
    import torch

    if adapter_name in getattr(peft_layer, "lora_embedding_A", {}):
        lora_A = peft_layer.lora_embedding_A[adapter_name]  # (r, num_embeddings)
        lora_B = peft_layer.lora_embedding_B[adapter_name]  # (embedding_dim, r)
    else:
        # Linear/Conv1D: (r, in) and (out, r). Conv: (r, in, *kernel) and (out, r, 1, ...): flatten to 2-D.
        lora_A = peft_layer.lora_A[adapter_name].weight
        lora_B = peft_layer.lora_B[adapter_name].weight
        lora_A = lora_A.reshape(lora_A.shape[0], -1)
        lora_B = lora_B.reshape(lora_B.shape[0], -1)
    gen_A = gen_layer.reflora_lora_A[adapter_name]
    gen_B = gen_layer.reflora_lora_B[adapter_name]
    if gen_A.shape != lora_A.shape or gen_B.shape != lora_B.shape:
        raise AssertionError(
            f"shape mismatch for adapter {adapter_name!r}: generated A {tuple(gen_A.shape)}, B {tuple(gen_B.shape)}; "
            f"PEFT (canonical view) A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}"
        )
    with torch.no_grad():
        gen_A.copy_(lora_A)
        gen_B.copy_(lora_B)


def only_tuner_layer(model: Any, layer_cls: type) -> Any:
    """The one module of `model` that is a `layer_cls` (none or several raise)."""
    layers = [module for module in model.modules() if isinstance(module, layer_cls)]
    if len(layers) != 1:
        raise AssertionError(f"expected exactly one {layer_cls.__name__}, found {len(layers)}")
    return layers[0]


def _run_case(layer_type: str, variant: str) -> dict[str, float]:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.reflora import RefLoraConfig
    from peft.tuners.reflora.layer import RefLoraLayer

    seed = 1000 + LAYER_TYPES.index(layer_type) * 10 + VARIANTS.index(variant)
    torch.manual_seed(seed)
    layer, x, fan_in_fan_out = make_case(layer_type)
    base = one_layer_net(layer).eval()
    base_weight = base.layer.weight.detach().clone()
    with torch.no_grad():
        base_out = base(x)

    adapters = _adapter_configs(variant)
    adapter_names = [name for name, _ in adapters]
    common = {"target_modules": ["layer"], "fan_in_fan_out": fan_in_fan_out}

    peft_model = gen_model = None
    for name, hp in adapters:
        peft_config = LoraConfig(init_lora_weights=False, **common, **hp)
        gen_config = RefLoraConfig(init_weights=False, **common, **hp)
        if peft_model is None:
            peft_model = get_peft_model(copy.deepcopy(base), peft_config, adapter_name=name)
            gen_model = get_peft_model(copy.deepcopy(base), gen_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
            gen_model.add_adapter(name, gen_config)
    assert peft_model is not None and gen_model is not None
    if type(gen_model.base_model).__name__ != "RefLoraModel":
        raise AssertionError(f"the generated config produced a {type(gen_model.base_model).__name__}")
    peft_model.eval()
    gen_model.eval()

    peft_layer = only_tuner_layer(peft_model, LoraLayer)
    gen_layer = only_tuner_layer(gen_model, RefLoraLayer)
    for name in adapter_names:
        _copy_adapter(peft_layer, gen_layer, name)
    if len(adapter_names) > 1:
        # all adapters active at once: their updates add up
        peft_model.base_model.set_adapter(adapter_names)
        gen_model.base_model.set_adapter(adapter_names)

    out: dict[str, float] = {}
    out["scaling"] = max(abs(peft_layer.scaling[n] - gen_layer.reflora_scaling[n]) for n in adapter_names)
    with torch.no_grad():
        peft_out = peft_model(x)
        out["forward"] = max_abs_diff(gen_model(x), peft_out)
        out["effect_forward"] = max_abs_diff(peft_out, base_out)

        if variant == "multi":
            # one sample per adapter, and the base model for the rest
            names = mixed_batch_names(adapter_names, len(x))
            out["mixed_batch"] = max_abs_diff(gen_model(x, adapter_names=names), peft_model(x, adapter_names=names))

        out.update(
            merge_unload_checks(peft_model, gen_model, peft_layer, gen_layer, x, base_weight, base_out, RefLoraLayer)
        )
    return out


def _script_main(tree: str) -> int:
    cases = [
        (f"{layer_type}/{variant}", functools.partial(_run_case, layer_type, variant))
        for layer_type in LAYER_TYPES
        for variant in VARIANTS
    ]
    return report_cases(tree, JSON_MARKER, cases)


if __name__ == "__main__":
    sys.exit(_script_main(sys.argv[1]))
