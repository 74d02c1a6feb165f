"""The numeric probe of `peft-scaffold verify`: seconds of checks on tiny random layers, for every listed layer type.

Run as a script in a subprocess, `python -m scaffold.verify.probe TREE SPEC...`, with `PYTHONPATH=TREE/src`, so the
tree's registered peft (with the generated method) is the one imported, never an installed one. It prints one line,
`PROBE_JSON: {...}`, with, per spec and per layer type, each check's outcome:

    {"peft_file": ..., "methods": {SPEC: {"name": ..., "error": null | "...",
                                          "layers": {LAYER: {CHECK: {"ok": bool, "value": float | null,
                                                                     "detail": str}}}}}}

The checks use the generated method through PEFT's API (`get_peft_model`, `merge_adapter`, ...) and compare it
with itself (identity init, merge round trip, ...) and with the independent oracle (`scaffold.verify.oracle`).
A check that does not apply to the method is recorded as passed with `"skipped": true` and the reason as its detail:
the merge checks for a spec with `mergeable: false` (which gets `merge_refused` instead), `merge_refused` for the
others.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


JSON_MARKER = "PROBE_JSON: "

# check -> one-line hint shown next to a failure
CHECKS: dict[str, str] = {
    "identity_init": "with init_weights=True the adapter must be a no-op: give a weight an identity `init` (e.g. "
    "zeros) so that delta_weight is 0 and the output equals the base layer's",
    "finite": "the forward or delta_weight gives NaN/inf on a random adapter: check divisions, sqrt, log",
    "gradient": "after one training step every trainable weight must change: each must reach delta_weight / forward "
    "with a gradient (no .detach(), not unused; use `trainable: false` for frozen tensors)",
    "merge_unmerge": "merge then unmerge must restore the base weight: `unmerge` must invert `merge`",
    "merge_matches_forward": "the merged layer must compute what the unmerged forward computes: `forward`, "
    "`delta_weight` and `merge` disagree",
    "two_adapters": "with two active adapters the forward must equal the output after merging both",
    "merge_refused": "a method with `mergeable: false` must refuse merge_adapter, merge_and_unload and layer.merge "
    "(NotImplementedError) without touching the base weight, and unload() must give the base model back",
    "fp16": "the fp16 forward is not finite or far from the fp32 one",
    "bf16": "the bf16 forward is not finite or far from the fp32 one",
    "shared_key": "shared weights must be the model's tensors (layers hold references), frozen, and drawn the same "
    "from the same `projection_prng_key` (checkpoints without them rely on it); a trainable one must be one "
    "trainable parameter of the model",
    "oracle_delta": "get_delta_weight differs from the spec's delta_weight evaluated independently",
    "oracle_forward": "the forward differs from the spec's forward evaluated independently",
    "oracle_merge": "the merged weight differs from the spec's merge evaluated independently",
    "oracle_unmerge": "the unmerged weight differs from the spec's unmerge evaluated independently",
    "oracle_two_forward": "the forward with two active adapters differs from the spec's semantics (independently "
    "evaluated)",
    "oracle_two_merge": "merging two adapters differs from the spec's semantics: each delta must be computed from the "
    "base weight as it was before any merge",
    "oracle_two_unmerge": "unmerging two adapters does not give what the spec's unmerge gives",
}
ORACLE_CHECKS = tuple(name for name in CHECKS if name.startswith("oracle_"))
# checks of a spec-language feature, run only for specs that use it (`verify` shows no row for the others)
FEATURE_CHECKS = {"shared_key": "shared weights"}
# what a method with `mergeable: false` has no use for (it gets `merge_refused` instead)
MERGE_CHECKS = (
    "merge_unmerge", "merge_matches_forward", "two_adapters", "oracle_delta", "oracle_merge", "oracle_unmerge",
    "oracle_two_merge", "oracle_two_unmerge",
)  # fmt: skip
NOT_MERGEABLE = "not applicable: the spec says `mergeable: false`"
MERGEABLE = "not applicable: the method can be merged"

# fp32 against the float64 oracle / against itself: relative to max(1, largest magnitude of the reference)
TOLERANCE = 1e-5
# an identity init must be a no-op up to rounding
IDENTITY_TOLERANCE = 1e-6
HALF_TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2}


# ---------------------------------------------------------------------------------------------------------------------
# tiny layers


def make_layer(layer_type: str) -> tuple[Any, Any, bool]:
    """(base layer, input, fan_in_fan_out) of a layer type; call under a fixed seed. The dims are even so that
    shapes like `out_features / 2` stay integers."""
    import torch
    from torch import nn

    if layer_type == "Linear":
        return nn.Linear(8, 12), torch.randn(3, 8), False
    if layer_type == "Conv1D":
        from transformers.pytorch_utils import Conv1D

        layer = Conv1D(12, 8)  # 12 outputs, 8 inputs; weight stored (8, 12)
        with torch.no_grad():
            layer.weight.normal_(std=0.3)
            layer.bias.normal_()
        return layer, torch.randn(3, 8), True
    if layer_type == "Embedding":
        return nn.Embedding(16, 12), torch.randint(0, 16, (3, 5)), False
    if layer_type == "Conv1d":
        return nn.Conv1d(4, 6, 3, stride=2, padding=1), torch.randn(2, 4, 9), False
    if layer_type == "Conv2d":
        # groups and a non-square kernel: the canonical view is (out, in / groups * kh * kw)
        return nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2), torch.randn(2, 4, 7, 6), False
    if layer_type == "Conv3d":
        return nn.Conv3d(2, 4, 2, padding=1), torch.randn(2, 2, 4, 4, 4), False
    raise ValueError(f"unknown layer type {layer_type!r}")


def _one_layer_net(layer: Any) -> Any:
    from torch import nn

    class Net(nn.Module):
        def __init__(self, layer: nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Any) -> Any:
            return self.layer(x)

    return Net(layer)


def rel_diff(a: Any, b: Any) -> float:
    """Max |a - b| relative to max(1, max |b|), in float64; NaN when either is not finite; shapes must agree."""
    if tuple(a.shape) != tuple(b.shape):
        raise AssertionError(f"shape {tuple(a.shape)} vs expected {tuple(b.shape)}")
    a, b = a.detach().double(), b.detach().double()
    if not (a.isfinite().all() and b.isfinite().all()):
        return math.nan
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return (a - b).abs().max().item() / scale if a.numel() else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# one method


class _MethodProbe:
    def __init__(self, spec_path: Path) -> None:
        import importlib

        from scaffold.plan import build_plan
        from scaffold.spec import load_spec

        self.spec = load_spec(spec_path)
        self.plan = build_plan(self.spec, source=str(spec_path))
        module = importlib.import_module(f"peft.tuners.{self.plan.name}")
        self.config_cls = getattr(module, self.plan.config_cls)
        self.layer_cls = getattr(module, self.plan.layer_cls)
        self.oracle: Any = None
        self.layer_type = ""
        self.oracle_error = ""
        # `modules` hyperparameters set to select the probed layer for the first adapter (not the second): its flag is
        # then true for one adapter and false for the other
        self.selected: list[str] = []
        try:
            from scaffold.verify.oracle import Oracle, OracleUnsupported

            try:
                self.oracle = Oracle(self.spec)
            except OracleUnsupported as exc:
                self.oracle_error = f"the oracle does not support this spec: {exc}"
        except ImportError as exc:  # pragma: no cover - torch is there, or nothing here runs
            self.oracle_error = str(exc)

    # -- models ---------------------------------------------------------------------------------------------------
    def config(self, init_weights: bool, fan_in_fan_out: bool, select: bool = False) -> Any:
        kwargs: dict[str, Any] = {"target_modules": ["layer"], "init_weights": init_weights}
        # the spec's kwargs for PEFT's test rows of this layer type make it fit tiny layers (FourierFT's default
        # n_frequency of 1000 does not)
        kwargs.update(self.spec.peft_test_kwargs.get(self.layer_type, {}))
        if fan_in_fan_out:
            kwargs["fan_in_fan_out"] = True
        if select:
            kwargs.update({name: ["layer"] for name in self.selected})
        return self.config_cls(**kwargs)

    def model(self, base: Any, fan_in_fan_out: bool, *, init_weights: bool = False, adapters: int = 1) -> Any:
        """`base` (copied) with `adapters` adapters ("default", "other"), all active, in eval mode."""
        from peft import get_peft_model

        model = get_peft_model(copy.deepcopy(base), self.config(init_weights, fan_in_fan_out, select=True))
        names = ["default"]
        for index in range(1, adapters):
            name = ["other", "third"][index - 1]
            model.add_adapter(name, self.config(init_weights, fan_in_fan_out))
            names.append(name)
        if adapters > 1:
            model.base_model.set_adapter(names)
        return model.eval()

    def tuner_layer(self, model: Any) -> Any:
        layers = [m for m in model.modules() if isinstance(m, self.layer_cls)]
        if len(layers) != 1:
            raise AssertionError(f"expected one {self.layer_cls.__name__} in the model, found {len(layers)}")
        return layers[0]

    def adapter_values(self, layer: Any, config: Any, adapter: str) -> Any:
        from scaffold.verify.oracle import Adapter

        weights = {w.name: getattr(layer, w.attr)[adapter] for w in self.plan.weights}
        hyperparameters = {name: getattr(config, name) for name in self.spec.hyperparameters}
        # a flag is stored on the layer when the spec reads it
        flags = {
            s.flag: getattr(layer, f"{self.plan.prefix}{s.flag}", {}).get(adapter, False) for s in self.plan.selectors
        }
        return Adapter(hyperparameters, weights, flags)

    # -- checks ---------------------------------------------------------------------------------------------------
    def run_layer(self, layer_type: str, seed: int) -> dict[str, dict[str, Any]]:
        import torch

        from scaffold.plan.registration import selectable

        results: dict[str, dict[str, Any]] = {}
        self.selected = selectable(self.plan, layer_type)
        self.layer_type = layer_type
        mergeable = self.plan.mergeable

        def record(check: str, run: Callable[[], tuple[float | None, bool, str]]) -> None:
            if not mergeable and check in MERGE_CHECKS or mergeable and check == "merge_refused":
                reason = NOT_MERGEABLE if not mergeable else MERGEABLE
                results[check] = {"ok": True, "value": None, "detail": reason, "skipped": True}
                return
            torch.manual_seed(seed + 7)
            try:
                value, ok, detail = run()
            except Exception as exc:  # one failing check does not hide the others
                last = traceback.extract_tb(exc.__traceback__)[-1]
                where = f" ({Path(last.filename).name}:{last.lineno})"
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                value, ok, detail = None, False, f"raised {type(exc).__name__}: {message}{where}"[:300]
            results[check] = {"ok": bool(ok), "value": value, "detail": detail}

        torch.manual_seed(seed)
        base_module, x, fan_in_fan_out = make_layer(layer_type)
        base = _one_layer_net(base_module).eval()
        base_weight = base_module.weight.detach().clone()
        base_bias = None if getattr(base_module, "bias", None) is None else base_module.bias.detach().clone()
        with torch.no_grad():
            base_out = base(x)

        def within(value: float, tolerance: float = TOLERANCE) -> bool:
            return value <= tolerance  # False for NaN

        def model(**kwargs: Any) -> tuple[Any, Any]:
            peft_model = self.model(base, fan_in_fan_out, **kwargs)
            return peft_model, self.tuner_layer(peft_model)

        @torch.no_grad()
        def identity_init() -> tuple[float, bool, str]:
            peft_model, layer = model(init_weights=True)
            diffs = {"output": rel_diff(peft_model(x), base_out)}
            if mergeable:
                diffs["delta_weight"] = rel_diff(layer.get_delta_weight("default"), torch.zeros_like(base_weight))
                peft_model.merge_adapter()
                diffs["merged weight"] = rel_diff(layer.get_base_layer().weight, base_weight)
            value = max(diffs.values(), key=lambda v: math.inf if math.isnan(v) else v)
            bad = [k for k, v in diffs.items() if not within(v, IDENTITY_TOLERANCE)]
            return value, not bad, f"{', '.join(bad)} changed by {value:.3g}" if bad else ""

        @torch.no_grad()
        def finite() -> tuple[None, bool, str]:
            peft_model, layer = model()
            quantities = {"output": peft_model(x)}
            if mergeable:
                quantities["delta_weight"] = layer.get_delta_weight("default")
            bad = [k for k, v in quantities.items() if not v.isfinite().all()]
            return None, not bad, f"{', '.join(bad)} not finite" if bad else ""

        def gradient() -> tuple[None, bool, str]:
            peft_model, layer = model()
            peft_model.train()
            trainable = {w.name: getattr(layer, w.attr)["default"] for w in self.plan.weights if w.trainable}
            before = {name: p.detach().clone() for name, p in trainable.items()}
            output = peft_model(x).float()
            # a random projection of the output, not its norm: an orthogonal adapter (a rotation of the output of a
            # layer without bias) leaves the norm unchanged, so the norm has no gradient to give it
            target = torch.randn(output.shape, generator=torch.Generator().manual_seed(0))
            (output * target).mean().backward()
            no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum().item() > 0]
            torch.optim.SGD(list(trainable.values()), lr=0.1).step()
            unchanged = [n for n, p in trainable.items() if n not in no_grad and torch.equal(p.detach(), before[n])]
            base_moved = not torch.equal(layer.get_base_layer().weight.detach(), base_weight)
            problems = [f"no gradient: {', '.join(no_grad)}"] if no_grad else []
            problems += [f"unchanged: {', '.join(unchanged)}"] if unchanged else []
            problems += ["the base weight changed"] if base_moved else []
            return None, not problems, "; ".join(problems)

        @torch.no_grad()
        def merge_unmerge() -> tuple[float, bool, str]:
            peft_model, layer = model()
            peft_model.merge_adapter()
            peft_model.unmerge_adapter()
            value = rel_diff(layer.get_base_layer().weight, base_weight)
            if base_bias is not None:  # merging may change the bias too (`merge_bias`, `delta_bias`)
                value = max(value, rel_diff(layer.get_base_layer().bias, base_bias))
            return value, within(value), f"base weight or bias off by {value:.3g} after merge + unmerge"

        @torch.no_grad()
        def merge_matches_forward() -> tuple[float, bool, str]:
            peft_model, _ = model()
            unmerged = peft_model(x)
            peft_model.merge_adapter()
            value = rel_diff(peft_model(x), unmerged)
            return value, within(value), f"merged output off by {value:.3g}"

        @torch.no_grad()
        def two_adapters() -> tuple[float, bool, str]:
            peft_model, _ = model(adapters=2)
            active = peft_model(x)
            peft_model.merge_adapter()
            value = rel_diff(peft_model(x), active)
            return value, within(value), f"two active adapters vs both merged: off by {value:.3g}"

        @torch.no_grad()
        def merge_refused() -> tuple[None, bool, str]:
            peft_model, layer = model()
            expected = peft_model(x)
            attempts = {
                "merge_adapter": peft_model.merge_adapter,
                "merge_and_unload": peft_model.merge_and_unload,
                "layer.merge": layer.merge,
            }
            problems = []
            for what, attempt in attempts.items():
                try:
                    attempt()
                except NotImplementedError:
                    continue
                problems.append(f"{what} did not raise NotImplementedError")
            if layer.merged or not torch.equal(layer.get_base_layer().weight, base_weight):
                problems.append("the base weight changed")
            if not within(rel_diff(peft_model(x), expected)):
                problems.append("the output changed")
            if not within(rel_diff(peft_model.unload()(x), base_out)):
                problems.append("unload() does not give the base model's output")
            return None, not problems, "; ".join(problems)

        def half(dtype_name: str) -> Callable[[], tuple[float, bool, str]]:
            @torch.no_grad()
            def run() -> tuple[float, bool, str]:
                dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
                peft_model, _ = model()
                reference = peft_model(x)
                peft_model.to(dtype)
                output = peft_model(x.to(dtype) if x.is_floating_point() else x)
                if output.dtype != dtype:
                    return math.nan, False, f"output dtype {output.dtype}, expected {dtype}"
                value = rel_diff(output, reference)
                return value, within(value, HALF_TOLERANCE[dtype_name]), f"off by {value:.3g} from fp32"

            return run

        @torch.no_grad()
        def shared_key() -> tuple[None, bool, str]:
            first, layer = model()
            second, _ = model()
            problems = []
            for w in self.plan.weights:
                if not w.shared:
                    continue
                held = getattr(first.base_model, w.attr)
                if getattr(layer, w.attr) is not held:
                    problems.append(f"{w.name}: the layer holds its own dict, not the model's")
                if w.trainable:
                    # trained (VB-LoRA's vector bank): one parameter, listed once among the trainable ones
                    params = [p for p in first.parameters() if p is held["default"]]
                    if not held["default"].requires_grad or len(params) != 1:
                        problems.append(f"{w.name} is not one trainable parameter of the model")
                    continue
                if not torch.equal(held["default"], getattr(second.base_model, w.attr)["default"]):
                    problems.append(f"{w.name}: the same key drew different values")
                if held["default"].requires_grad:
                    problems.append(f"{w.name} is trainable")
            return None, not problems, "; ".join(problems)

        if self.plan.shared_weights:
            record("shared_key", shared_key)
        for check, run in (
            ("identity_init", identity_init),
            ("finite", finite),
            ("gradient", gradient),
            ("merge_unmerge", merge_unmerge),
            ("merge_matches_forward", merge_matches_forward),
            ("two_adapters", two_adapters),
            ("merge_refused", merge_refused),
            ("fp16", half("fp16")),
            ("bf16", half("bf16")),
        ):
            record(check, run)
        self.run_oracle(layer_type, base, base_module, x, fan_in_fan_out, record)
        return results

    def run_oracle(
        self, layer_type: str, base: Any, base_module: Any, x: Any, fan_in_fan_out: bool, record: Callable[..., None]
    ) -> None:
        import torch

        if self.oracle is None:
            for check in ORACLE_CHECKS:
                record(check, lambda: (None, False, self.oracle_error))
            return
        from scaffold.verify.oracle import BaseLayer

        oracle = self.oracle
        reference = BaseLayer.of(layer_type, base_module)

        def model(adapters: int) -> tuple[Any, Any, list[Any]]:
            peft_model = self.model(base, fan_in_fan_out, adapters=adapters)
            layer = self.tuner_layer(peft_model)
            names = ["default", "other"][:adapters]
            values = [self.adapter_values(layer, peft_model.peft_config[n], n) for n in names]
            return peft_model, layer, values

        def compare(actual: Any, expected: Any, what: str) -> tuple[float, bool, str]:
            value = rel_diff(actual, expected)
            return value, value <= TOLERANCE, f"{what} off by {value:.3g} (relative) from the oracle"

        @torch.no_grad()
        def delta() -> tuple[float, bool, str]:
            _, layer, values = model(1)
            # index buffers an init expression computes must be exactly the oracle's (float ones are checked
            # through the delta: an SVD's signs, say, may differ without changing it)
            for name, value in oracle.computed_weights(reference, values[0]).items():
                if not value.is_floating_point() and not torch.equal(values[0].weights[name].cpu(), value):
                    return math.nan, False, f"index buffer `{name}` differs from the oracle's"
            expected = oracle.delta_weight(reference, values[0])
            if self.spec.delta_weight is None:  # a method that only updates the bias: its delta must be zero
                return compare(layer.get_delta_weight("default"), expected, "delta")
            if not expected.abs().max().item() > 1e-4:  # a zero update would make every comparison vacuous
                return 0.0, False, "the random init (init_weights=False) gives a zero delta: nothing to compare"
            return compare(layer.get_delta_weight("default"), expected, "delta")

        def forward(adapters: int) -> Callable[[], tuple[float, bool, str]]:
            @torch.no_grad()
            def run() -> tuple[float, bool, str]:
                peft_model, _, values = model(adapters)
                return compare(peft_model(x), oracle.forward(reference, x, values), "output")

            return run

        def merge(adapters: int, then_unmerge: bool) -> Callable[[], tuple[float, bool, str]]:
            @torch.no_grad()
            def run() -> tuple[float, bool, str]:
                peft_model, layer, values = model(adapters)
                peft_model.merge_adapter()
                merged = layer.get_base_layer().weight.detach().clone()
                bias = getattr(layer.get_base_layer(), "bias", None)
                merged_bias = None if bias is None else bias.detach().clone()
                if not then_unmerge:
                    found = compare(merged, oracle.merged_weight(reference, values), "merged weight")
                    if merged_bias is None:
                        return found
                    return max(found, compare(merged_bias, oracle.merged_bias(reference, values), "merged bias"))
                peft_model.unmerge_adapter()
                expected = oracle.unmerged_weight(reference, merged, values)
                found = compare(layer.get_base_layer().weight, expected, "unmerged weight")
                if merged_bias is None:
                    return found
                expected_bias = oracle.unmerged_bias(reference, merged_bias, values)
                return max(found, compare(layer.get_base_layer().bias, expected_bias, "unmerged bias"))

            return run

        record("oracle_delta", delta)
        record("oracle_forward", forward(1))
        record("oracle_merge", merge(1, False))
        record("oracle_unmerge", merge(1, True))
        record("oracle_two_forward", forward(2))
        record("oracle_two_merge", merge(2, False))
        record("oracle_two_unmerge", merge(2, True))


def probe(spec_path: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"name": None, "error": None, "layers": {}}
    try:
        method = _MethodProbe(spec_path)
        report["name"] = method.plan.name
        for index, layer_type in enumerate(method.spec.layers):
            report["layers"][layer_type] = method.run_layer(layer_type, seed=1000 + 10 * index)
    except Exception:
        report["error"] = traceback.format_exc()
    return report


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m scaffold.verify.probe TREE SPEC...\n")
        return 2
    tree, specs = Path(argv[0]).resolve(), [Path(p) for p in argv[1:]]
    import peft

    # the probe is meaningless if the peft imported is not the tree's
    peft_file = Path(peft.__file__).resolve()
    if tree / "src" not in peft_file.parents:
        sys.stderr.write(f"imported peft from {peft_file}, not from the tree {tree}\n")
        return 2
    report: dict[str, Any] = {"peft_file": str(peft_file), "methods": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs:
            report["methods"][str(spec)] = probe(spec)
    print(JSON_MARKER + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
