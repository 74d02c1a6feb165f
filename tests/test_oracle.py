"""Generated methods against an independent oracle of the spec language (scaffold/verify/oracle.py).

The oracle walks the spec's whitelisted expression trees with torch (float64) on the canonical view, converting
each layer's weight layout on its own. For every `kind: tuner` spec in reference_methods/ and tests/specs/, on every
layer type it lists, the generated layer (random adapter weights, `init_weights=False`) must agree with it: delta,
forward, merge and unmerge, with one adapter and with two. Without this, a consistently wrong translation of
`delta_weight` would pass every self-consistency test (identity init, merged == unmerged, save/load); the last test
here shows that it does, and that the oracle catches it.

The comparisons run in one subprocess per tree (`python -m scaffold.verify.probe`, PYTHONPATH=TREE/src), the probe
that `peft-scaffold verify` runs too.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from scaffold.spec import load_spec
from scaffold.spec.expressions import parse_expression
from scaffold.spec.model import MethodSpec, Weight
from scaffold.verify.oracle import (
    KNOWN_SPEC_FIELDS,
    KNOWN_WEIGHT_FIELDS,
    Adapter,
    BaseLayer,
    NotMergeable,
    Oracle,
    OracleUnsupported,
    evaluate,
    evaluate_scalar,
)
from scaffold.verify.probe import JSON_MARKER, MERGE_CHECKS, ORACLE_CHECKS, make_layer


REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "reference_methods" / "lora.yaml"


def _tuner_specs() -> list[Path]:
    paths = sorted((REPO / "reference_methods").glob("*.yaml")) + sorted((REPO / "tests" / "specs").glob("*.yaml"))
    return [p for p in paths if (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("kind", "tuner") == "tuner"]


def _mergeable(spec: Path) -> bool:
    return yaml.safe_load(spec.read_text(encoding="utf-8")).get("mergeable", True)


TUNER_SPECS = _tuner_specs()
CASES = [
    (spec, layer_type, check)
    for spec in TUNER_SPECS
    for layer_type in yaml.safe_load(spec.read_text(encoding="utf-8")).get("layers", ["Linear"])
    for check in ORACLE_CHECKS
    # a method that cannot merge has only a forward to compare (its merge checks are `merge_refused`, below)
    if _mergeable(spec) or check not in MERGE_CHECKS
]
BOTTLENECK = REPO / "tests" / "specs" / "bottleneck.yaml"

# Known bugs of the generator (issue #9), as (spec file, check) -> reason; strict: the test flips when fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------------------------------------------------------------
# the oracle itself, in process


@pytest.mark.parametrize("layer_type", ["Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d"])
def test_the_oracles_own_view_of_a_layer_reproduces_the_layer(layer_type):
    torch.manual_seed(0)
    module, x, _ = make_layer(layer_type)
    layer = BaseLayer.of(layer_type, module)
    with torch.no_grad():
        expected = module(x).double()
    assert torch.allclose(layer.output(x, layer.canonical_weight), expected, atol=1e-5)
    dims = layer.dims()
    assert layer.canonical_weight.shape == (dims["out_features"], dims["in_features"])
    assert torch.equal(layer.from_canonical(layer.canonical_weight), layer.weight)


def test_canonical_dims_follow_the_spec_doc():
    torch.manual_seed(0)
    shapes = {t: BaseLayer.of(t, make_layer(t)[0]).dims() for t in ("Conv1D", "Embedding", "Conv2d")}
    assert shapes["Conv1D"] == {"in_features": 8, "out_features": 12}
    assert shapes["Embedding"] == {"in_features": 16, "out_features": 12, "num_embeddings": 16, "embedding_dim": 12}
    # nn.Conv2d(4, 6, (3, 2), groups=2): in_channels / groups * kernel elements = 2 * 6
    assert shapes["Conv2d"] == {
        "in_features": 12,
        "out_features": 6,
        "in_channels": 4,
        "out_channels": 6,
        "kernel_numel": 6,
        "groups": 2,
    }


def _lora_adapter(layer: BaseLayer, r: int, **hp: Any) -> Adapter:
    dims = layer.dims()
    weights = {"lora_A": torch.randn(r, dims["in_features"]), "lora_B": torch.randn(dims["out_features"], r)}
    return Adapter({"r": r, **hp}, weights)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_oracle_lora_is_the_textbook_formula(use_rslora):
    torch.manual_seed(1)
    oracle = Oracle(load_spec(LORA))
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    adapter = _lora_adapter(layer, 4, lora_alpha=6.0, use_rslora=use_rslora)
    scaling = 6.0 / (math.sqrt(4) if use_rslora else 4)
    A, B = (adapter.weights[n].double() for n in ("lora_A", "lora_B"))
    W, b = module.weight.detach().double(), module.bias.detach().double()
    assert torch.allclose(oracle.delta(layer, adapter), B @ A * scaling)
    assert torch.allclose(oracle.merged_weight(layer, [adapter]), W + B @ A * scaling)
    expected = x.double() @ W.T + b + (x.double() @ A.T @ B.T) * scaling
    assert torch.allclose(oracle.forward(layer, x, [adapter]), expected)


def test_oracle_semantics_for_two_adapters_and_weight_reading_deltas():
    """Each delta reads the base weight as it was before any merge; merge chains; unmerge undoes in reverse."""
    torch.manual_seed(2)
    spec = MethodSpec.model_validate(
        {
            "name": "normed",
            "weights": {"v": {"shape": ["out_features"], "init": "zeros"}},
            "delta_weight": "v[:, None] * weight / torch.linalg.norm(weight)",
        }
    )
    oracle = Oracle(spec)
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    first, second = (Adapter({}, {"v": torch.randn(12)}) for _ in range(2))
    W = module.weight.detach().double()
    norm = torch.linalg.norm(W)
    merged = W + first.weights["v"].double()[:, None] * W / norm + second.weights["v"].double()[:, None] * W / norm
    assert torch.allclose(oracle.merged_weight(layer, [first, second]), merged)
    assert torch.allclose(oracle.unmerged_weight(layer, merged, [first, second]), W)
    expected = x.double() @ merged.T + module.bias.detach().double()
    assert torch.allclose(oracle.forward(layer, x, [first, second]), expected)


def test_oracle_non_additive_methods_compose_like_their_merge():
    torch.manual_seed(3)
    oracle = Oracle(load_spec(REPO / "tests" / "specs" / "scaler.yaml"))
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    first, second = (Adapter({}, {"lvec": 1 + 0.2 * torch.randn(12)}) for _ in range(2))
    W, b = module.weight.detach().double(), module.bias.detach().double()
    v1, v2 = first.weights["lvec"].double(), second.weights["lvec"].double()
    assert torch.allclose(oracle.forward(layer, x, [first]), x.double() @ (W * v1[:, None]).T + b)
    both = W * v1[:, None] * v2[:, None]
    assert torch.allclose(oracle.merged_weight(layer, [first, second]), both)
    assert torch.allclose(oracle.forward(layer, x, [first, second]), x.double() @ both.T + b)


def test_oracle_ia3_scales_the_output_with_its_bias_or_the_input_per_layer_flag():
    """refia3: without the flag the output is scaled, bias included (merge_bias); with it the input is scaled and the
    bias left alone; two adapters with different flags compose like their merges (the scalings commute)."""
    torch.manual_seed(4)
    oracle = Oracle(load_spec(REPO / "reference_methods" / "ia3.yaml"))
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    W, b, xd = module.weight.detach().double(), module.bias.detach().double(), x.double()
    out_vec, in_vec = 1 + 0.3 * torch.randn(12), 1 + 0.3 * torch.randn(8)
    output = Adapter({}, {"ia3_l": out_vec})
    feedforward = Adapter({}, {"ia3_l": in_vec}, flags={"is_feedforward": True})
    v, u = out_vec.double(), in_vec.double()
    assert torch.allclose(oracle.forward(layer, x, [output]), (xd @ W.T + b) * v)
    assert torch.allclose(oracle.merged_bias(layer, [output]), b * v)
    assert torch.allclose(oracle.forward(layer, x, [feedforward]), (xd * u) @ W.T + b)
    assert torch.allclose(oracle.merged_bias(layer, [feedforward]), b)
    merged = W * u[None, :] * v[:, None]
    assert torch.allclose(oracle.merged_weight(layer, [feedforward, output]), merged)
    assert torch.allclose(oracle.forward(layer, x, [output, feedforward]), ((xd * u) @ W.T + b) * v)
    assert torch.allclose(oracle.unmerged_bias(layer, b * v, [feedforward, output]), b)


def test_oracle_bias_update_adds_in_forward_and_on_merge():
    torch.manual_seed(5)
    oracle = Oracle(load_spec(REPO / "tests" / "specs" / "biasshift.yaml"))
    module, x, _ = make_layer("Conv2d")
    layer = BaseLayer.of("Conv2d", module)
    dims = layer.dims()
    adapters = [
        Adapter(
            {"r": 2, "alpha": 3.0},
            {
                "lora_A": torch.randn(2, dims["in_features"]),
                "lora_B": torch.randn(dims["out_features"], 2),
                "db": torch.randn(dims["out_features"]),
            },
        )
        for _ in range(2)
    ]
    b = module.bias.detach().double()
    shift = sum(a.weights["db"].double() * 1.5 for a in adapters)
    merged = oracle.merged_canonical(layer, adapters)
    assert torch.allclose(oracle.merged_bias(layer, adapters), b + shift)
    expected = layer.output(x.double(), merged, b + shift)
    assert torch.allclose(oracle.forward(layer, x, adapters), expected)
    assert torch.allclose(oracle.unmerged_bias(layer, b + shift, adapters), b)


def test_oracle_computes_init_expression_buffers_itself():
    """DeLoRA's column norms and FourierFT's seeded indices come from the base weight and the hyperparameters,
    never from the adapter's values; `torch.zeros` takes the oracle's float64; FFT and index_put are walked."""
    torch.manual_seed(4)
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    W = module.weight.detach().double()

    delora = Oracle(load_spec(REPO / "reference_methods" / "delora.yaml"))
    A, B = torch.randn(3, 8), torch.randn(12, 3)
    bogus = torch.full((8,), 7.0)  # a wrong buffer value handed in is ignored
    adapter = Adapter({"r": 3, "delora_lambda": 2.0}, {"A": A, "B": B, "lam": torch.tensor([2.0]), "w_norm": bogus})
    assert torch.allclose(delora.computed_weights(layer, adapter)["w_norm"], W.norm(dim=0))
    A64, B64 = A.double(), B.double()
    scale = 2.0 / 3 / (A64.norm(dim=1).clamp(min=1e-4) * B64.norm(dim=0).clamp(min=1e-4))
    expected = B64 @ torch.diag(scale) @ A64 * W.norm(dim=0)[None, :]
    assert torch.allclose(delora.delta(layer, adapter), expected)

    fourier = Oracle(load_spec(REPO / "reference_methods" / "fourierft.yaml"))
    spectrum = torch.randn(20)
    adapter = Adapter({"n_frequency": 20, "scaling": 3.0, "random_loc_seed": 5}, {"spectrum": spectrum})
    # PEFT's FourierFT construction, written out
    flat = torch.randperm(12 * 8, generator=torch.Generator().manual_seed(5))[:20]
    indices = torch.stack([flat // 8, flat % 8])
    assert torch.equal(fourier.computed_weights(layer, adapter)["indices"], indices)
    dense = torch.zeros(12, 8, dtype=torch.float64)
    dense[indices[0], indices[1]] = spectrum.double()
    assert torch.allclose(fourier.delta(layer, adapter), torch.fft.ifft2(dense).real * 3.0)

    sparse = Oracle(load_spec(REPO / "tests" / "specs" / "sparsemask.yaml"))
    values = torch.randn(16)
    adapter = Adapter({}, {"values": values})
    support = torch.randperm(96, generator=torch.Generator().manual_seed(42))[:16]
    expected = torch.zeros(96, dtype=torch.float64)
    expected[support] = values.double()
    assert torch.allclose(sparse.delta(layer, adapter), expected.reshape(12, 8))


def test_oracle_shared_weights_are_sliced_to_each_layer():
    """A shared weight is the model's one tensor, sized for the largest layer: each layer reads the leading block its
    own shape covers (VeRA's `vera_A[:, :in_features]`, `vera_B[:out_features, :]`)."""
    torch.manual_seed(4)
    oracle = Oracle(load_spec(REPO / "reference_methods" / "vera.yaml"))
    module, x, _ = make_layer("Linear")
    layer = BaseLayer.of("Linear", module)
    dims = layer.dims()
    r = 3
    # sized for a larger layer elsewhere in the model
    A, B = torch.randn(r, dims["in_features"] + 5), torch.randn(dims["out_features"] + 4, r)
    lb, ld = torch.randn(dims["out_features"]), torch.randn(r)
    adapter = Adapter({"r": r}, {"A": A, "B": B, "lambda_b": lb, "lambda_d": ld})
    A_, B_ = A[:, : dims["in_features"]].double(), B[: dims["out_features"]].double()
    expected = (lb.double()[:, None] * B_) @ (ld.double()[:, None] * A_)
    assert torch.allclose(oracle.delta(layer, adapter), expected)
    W, b = module.weight.detach().double(), module.bias.detach().double()
    assert torch.allclose(oracle.forward(layer, x, [adapter]), x.double() @ (W + expected).T + b)
    # smaller than this layer needs: the model sized it wrongly, which the oracle does not paper over
    too_small = Adapter({"r": r}, {"A": A[:, :2], "B": B, "lambda_b": lb, "lambda_d": ld})
    with pytest.raises(ValueError, match="shared weight A"):
        oracle.delta(layer, too_small)


@pytest.mark.parametrize("layer_type", ["Linear", "Embedding"])
def test_oracle_bottleneck_applies_adapters_in_order_and_has_no_merge(layer_type):
    """`mergeable: false`: h -> h + up(gelu(down h + b)) * scale, the second adapter on the first one's output."""
    torch.manual_seed(4)
    oracle = Oracle(load_spec(BOTTLENECK))
    module, x, _ = make_layer(layer_type)
    layer = BaseLayer.of(layer_type, module)
    out = layer.dims()["out_features"]

    def adapter(scale: float) -> Adapter:
        weights = {"down": torch.randn(4, out), "down_bias": torch.randn(4), "up": torch.randn(out, 4)}
        return Adapter({"r": 4, "scale": scale}, weights)

    def textbook(h: torch.Tensor, a: Adapter) -> torch.Tensor:
        down, bias, up = (a.weights[n].double() for n in ("down", "down_bias", "up"))
        return h + torch.nn.functional.gelu(h @ down.T + bias) @ up.T * a.hyperparameters["scale"]

    first, second = adapter(0.5), adapter(2.0)
    with torch.no_grad():
        h = module(x).double()
    assert torch.allclose(oracle.forward(layer, x, [first]), textbook(h, first))
    both = oracle.forward(layer, x, [first, second])
    assert torch.allclose(both, textbook(textbook(h, first), second))
    assert not torch.allclose(both, textbook(textbook(h, second), first))  # the order matters: it is not a sum
    for call in (
        lambda: oracle.delta(layer, first),
        lambda: oracle.merged_weight(layer, [first]),
        lambda: oracle.unmerged_weight(layer, module.weight, [first]),
    ):
        with pytest.raises(NotMergeable, match="mergeable: false"):
            call()


def test_the_walker_covers_the_language():
    names = {"v", "w", "r", "flag"}
    env = {"v": torch.tensor([1.0, -2.0, 3.0]), "w": torch.ones(3, 2), "r": 4, "flag": False}
    cases = {
        "v[:, None] * w": env["v"][:, None] * env["w"],
        "(v[1:] if flag or r >= 4 else v).abs().sum()": torch.tensor(5.0),
        "torch.where(v > 0, v, torch.zeros_like(v))": torch.tensor([1.0, 0.0, 3.0]),
        "torch.linalg.vector_norm(v) ** 2 - 14": torch.tensor(0.0),
        "F.relu(-v).reshape(3, 1).T @ w": torch.tensor([[2.0, 2.0]]),
        "torch.einsum('i,ij->j', v, w) / r": torch.tensor([0.5, 0.5]),
        "-v if not flag and 1 < r < 5 else v": -env["v"],
    }
    for source, expected in cases.items():
        value = evaluate(parse_expression(source, names=names), env)
        assert torch.allclose(torch.as_tensor(value, dtype=torch.float32), expected, atol=1e-5), source
    scalar = parse_expression("max(sqrt(r), 1) * pi if r > 2 else floor(e)", names={"r"}, tensor=False)
    assert evaluate_scalar(scalar, {"r": 4}) == pytest.approx(2 * math.pi)
    assert evaluate_scalar(scalar, {"r": 1}) == 2


def test_the_oracle_refuses_spec_fields_it_does_not_know():
    class Extended(MethodSpec):
        input_scale: str | None = None

    data = yaml.safe_load(LORA.read_text(encoding="utf-8"))
    Oracle(Extended.model_validate(data))  # unknown but unused: fine
    with pytest.raises(OracleUnsupported, match="input_scale"):
        Oracle(Extended.model_validate({**data, "input_scale": "lora_A"}))


def test_the_oracle_knows_every_field_of_the_spec_language():
    """A new field in the spec model (e.g. input/output scaling) must be taught to the oracle, or every spec that
    uses it fails its oracle checks; this test names the gap."""
    assert set(MethodSpec.model_fields) <= KNOWN_SPEC_FIELDS, set(MethodSpec.model_fields) - KNOWN_SPEC_FIELDS
    assert set(Weight.model_fields) <= KNOWN_WEIGHT_FIELDS, set(Weight.model_fields) - KNOWN_WEIGHT_FIELDS


# ---------------------------------------------------------------------------------------------------------------------
# generated code against the oracle (subprocess with the tree's peft)


def run_probe(tree: Path, specs: list[Path]) -> dict[str, Any]:
    import json

    from scaffold.verify.checks import tree_env

    command = [sys.executable, "-m", "scaffold.verify.probe", str(tree), *map(str, specs)]
    env = tree_env(tree)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(REPO)])  # scaffold itself, after the tree's peft
    proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(JSON_MARKER)]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    report = json.loads(lines[0][len(JSON_MARKER) :])
    assert Path(report["peft_file"]).is_relative_to(tree.resolve() / "src")
    return report["methods"]


@pytest.fixture(scope="module")
def oracle_tree(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree

    tree = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("oracle") / "peft")
    for spec in TUNER_SPECS:
        pipeline.generate_into_tree(spec, tree).changeset.apply()
    return tree


@pytest.fixture(scope="module")
def oracle_report(oracle_tree: Path) -> dict[str, Any]:
    return run_probe(oracle_tree, TUNER_SPECS)


def test_every_tuner_spec_is_covered():
    names = {p.name for p in TUNER_SPECS}
    assert {"lora.yaml", "hadamard.yaml", "kron.yaml", "scaler.yaml"} <= names
    # module selectors with a conditional merge and merge_bias; a bias-only method; a bias update next to LoRA
    assert {"ia3.yaml", "beft.yaml", "biasshift.yaml"} <= names
    # computed buffers (issue #10): column norms, seeded indices with an FFT, a scatter, an SVD basis
    assert {"delora.yaml", "fourierft.yaml", "sparsemask.yaml", "svdbasis.yaml"} <= names
    # a method that cannot be merged (its forward only)
    assert "bottleneck.yaml" in names
    # a matrix merge rotating the bias (RoAd, and an unseen one); an init expression with paired random draws (HRA)
    assert {"road.yaml", "biasrot.yaml", "pairedrefl.yaml"} <= names
    assert len(CASES) >= 4 * len(ORACLE_CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, layer_type, check",
    [
        pytest.param(
            spec,
            layer_type,
            check,
            id=f"{spec.stem}-{layer_type}-{check}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(spec.name, check)])]
            if (spec.name, check) in KNOWN_BUGS
            else [],
        )
        for spec, layer_type, check in CASES
    ],
)
def test_generated_layer_agrees_with_the_oracle(oracle_report, spec, layer_type, check):
    method = oracle_report[str(spec)]
    assert method["error"] is None, method["error"]
    result = method["layers"][layer_type][check]
    assert result["ok"], f"{spec.name} on {layer_type}: {check}: {result['detail']}"


SHARED_SPECS = [
    spec
    for spec in TUNER_SPECS
    if any(w.get("shared") for w in (yaml.safe_load(spec.read_text(encoding="utf-8")).get("weights") or {}).values())
]


@pytest.mark.slow
def test_probe_checks_shared_weights_only_where_a_spec_has_them(oracle_report):
    assert {spec.name for spec in SHARED_SPECS} >= {"vera.yaml", "sharedproj.yaml", "bankmix.yaml"}
    for spec in TUNER_SPECS:
        layers = oracle_report[str(spec)]["layers"]
        results = [checks.get("shared_key") for checks in layers.values()]
        if spec in SHARED_SPECS:
            # the layer references the model's tensor, frozen, drawn the same from the same key
            assert results and all(r is not None and r["ok"] for r in results), (spec.name, results)
        else:
            assert results == [None] * len(results), spec.name


@pytest.mark.slow
def test_a_method_that_cannot_merge_refuses_it_and_skips_only_the_merge_checks(oracle_report):
    method = oracle_report[str(BOTTLENECK)]
    assert method["error"] is None, method["error"]
    assert sorted(method["layers"]) == ["Conv1D", "Embedding", "Linear"]
    for layer_type, checks in method["layers"].items():
        skipped = {name for name, result in checks.items() if result.get("skipped")}
        assert skipped == set(MERGE_CHECKS), (layer_type, skipped)
        assert all(result["ok"] for result in checks.values()), (layer_type, checks)
        # merge_adapter, merge_and_unload and layer.merge raised; unload gave the base model back
        assert checks["merge_refused"]["detail"] == "", checks["merge_refused"]
    for spec in TUNER_SPECS:  # and the others ran every check, merge_refused being the one that does not apply
        if spec != BOTTLENECK:
            skipped = {
                c
                for checks in oracle_report[str(spec)]["layers"].values()
                for c, r in checks.items()
                if r.get("skipped")
            }
            assert skipped == {"merge_refused"}, (spec.name, skipped)


@pytest.mark.slow
def test_a_consistently_wrong_translation_passes_self_checks_but_not_the_oracle(oracle_tree, oracle_report):
    """Double the generated delta of `hadalow` (as a translation bug would): identity init, merge round trip,
    merged == unmerged and two adapters all stay green; only the oracle notices."""
    spec = REPO / "tests" / "specs" / "hadamard.yaml"
    assert all(r["ok"] for checks in oracle_report[str(spec)]["layers"].values() for r in checks.values())
    layer_py = oracle_tree / "src" / "peft" / "tuners" / "hadalow" / "layer.py"
    text = layer_py.read_text(encoding="utf-8")
    line = "        delta_weight = w1a @ w1b * (w2a @ w2b) * scale\n"
    assert text.count(line) == 1, "the generated delta line changed; update this test's patch"
    layer_py.write_text(text.replace(line, line.rstrip("\n") + " * 2\n"), encoding="utf-8")
    try:
        report = run_probe(oracle_tree, [spec])[str(spec)]
    finally:
        layer_py.write_text(text, encoding="utf-8")
    assert report["error"] is None, report["error"]
    for layer_type, checks in report["layers"].items():
        failed = {name for name, result in checks.items() if not result["ok"]}
        assert failed == set(ORACLE_CHECKS), (layer_type, failed)
