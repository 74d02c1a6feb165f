"""Weights computed once by an init expression (`init: {expr}`), index buffers, and the index / FFT operations:
what the plan decides and what the generated layer code says. Numbers are checked elsewhere: against PEFT's DeLoRA
and FourierFT (tests/test_zoo_parity_buffers.py), against the oracle (tests/test_oracle.py), and PEFT's own test
matrix (tests/test_zoo_in_tree.py)."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.errors import ScaffoldError
from scaffold.plan import build_plan
from scaffold.spec import load_spec
from scaffold.spec.expressions import ExpressionError, parse_expression, render, uses_fft, with_creation_kwargs
from scaffold.spec.model import MethodSpec


REPO = Path(__file__).resolve().parent.parent
DELORA = REPO / "reference_methods" / "delora.yaml"
FOURIERFT = REPO / "reference_methods" / "fourierft.yaml"
NAMES = {"spectrum", "indices", "weight", "out_features", "in_features", "values", "support"}


def _layer_code(spec: MethodSpec, tmp_path: Path) -> str:
    """The generated layer.py, through `new --out` as a user runs it."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(exclude_defaults=True), sort_keys=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["new", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    return (tmp_path / "out" / spec.name / "layer.py").read_text(encoding="utf-8")


def _method(code: str, name: str) -> str:
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(code, node) or ""
    raise AssertionError(f"no method {name}")


@pytest.mark.parametrize(
    "text",
    [
        "torch.fft.ifft2(torch.zeros(out_features, in_features).index_put((indices[0], indices[1]), spectrum)).real",
        "torch.zeros(out_features * in_features).scatter(0, support, values).reshape(out_features, in_features)",
        "torch.gather(weight, 1, indices) + weight.index_select(0, support).sum()",
        "torch.fft.rfft(weight).imag + torch.fft.fftshift(weight)",
    ],
)
def test_index_and_fft_operations_are_in_the_language(text):
    parse_expression(text, names=NAMES)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("torch.fft.hfft(weight)", "not in the allowed list"),
        ("torch.fft.ifft2", "can only be called"),
        ("weight.index_put_((indices[0],), spectrum)", "not in the allowed list"),  # in place: refused
        ("torch.randperm(4)", "not in the allowed list"),  # randomness only through the seeded spec-level randperm
        ("randperm(4, seed=1)", "unknown function `randperm`"),
    ],
)
def test_index_and_fft_refusals(text, reason):
    with pytest.raises(ExpressionError, match=reason):
        parse_expression(text, names=NAMES)


def test_created_tensors_follow_a_reference_dtype_and_device():
    expr = parse_expression("torch.zeros(out_features, 2) + torch.eye(2, dtype=spectrum.dtype)", names=NAMES)
    shown = render(with_creation_kwargs(expr, "spectrum"))
    assert "torch.zeros(out_features, 2, dtype=spectrum.dtype, device=spectrum.device)" in shown
    # a dtype the spec names is kept; only the device is added
    assert "torch.eye(2, dtype=spectrum.dtype, device=spectrum.device)" in shown
    untouched = parse_expression("spectrum * 2", names=NAMES)
    assert with_creation_kwargs(untouched, "spectrum") is untouched
    assert uses_fft(parse_expression("torch.fft.ifft2(weight).real", names=NAMES))
    assert not uses_fft(parse_expression("weight.real", names=NAMES))


def test_delora_buffer_is_computed_once_from_the_pre_merge_weight(tmp_path):
    plan = build_plan(load_spec(DELORA))
    (w_norm,) = plan.computed_weights
    assert (w_norm.name, w_norm.trainable, w_norm.persistent) == ("w_norm", False, True)
    assert w_norm.init_expr == "torch.linalg.norm(weight, dim=0)"
    # reading `weight` at init keeps the pre-merge weight while adapters are merged, as deltas that read it do
    assert plan.computed_reads_weight and plan.caches_base_weight
    assert "refdelora_w_norm" in plan.other_param_names and "refdelora_w_norm" not in plan.adapter_layer_names
    code = _layer_code(plan.spec, tmp_path)
    assert "self.refdelora_w_norm = BufferDict({}, persistent=True)" in code
    update = _method(code, "update_layer")
    assert "weight = self._canonical_weight()" in update
    assert "self.refdelora_w_norm[adapter_name] = torch.linalg.norm(weight, dim=0)" in update
    assert "torch.empty(self.in_features)" not in update  # never an uninitialised buffer
    # the same value whatever init_weights is: not in reset_*_parameters
    assert "w_norm" not in _method(code, "reset_refdelora_parameters")


def test_fourierft_index_buffer_is_seeded_long_and_not_persistent(tmp_path):
    plan = build_plan(load_spec(FOURIERFT))
    (indices,) = plan.computed_weights
    assert (indices.dtype, indices.persistent, indices.trainable) == ("long", False, False)
    assert not plan.computed_reads_weight and not plan.caches_base_weight
    code = _layer_code(plan.spec, tmp_path)
    assert "self.reffourierft_indices = BufferDict({}, persistent=False)" in code
    update = " ".join(_method(code, "update_layer").split())
    assert "torch.randperm( self.out_features * self.in_features, generator=torch.Generator().manual_seed(" in update
    assert "config.random_loc_seed" in update
    delta = " ".join(_method(code, "_canonical_delta").split())
    # torch.fft: fp32 on every device for half-precision adapters; the index buffer is never cast to float
    assert "cast_to_fp32 = dtype in (torch.float16, torch.bfloat16)" in delta
    assert "indices = indices.float()" not in delta and "spectrum = spectrum.float()" in delta
    assert "dtype=spectrum.dtype, device=spectrum.device" in delta
    assert plan.first_weight.name == "spectrum" and plan.delta.dtype_of == "spectrum"


def _spec(**weights: Any) -> MethodSpec:
    data = yaml.safe_load(DELORA.read_text(encoding="utf-8"))
    data["weights"] = {**data["weights"], **weights}
    return MethodSpec.model_validate(data)


def test_a_view_of_the_weight_is_copied_not_aliased():
    """`weight` (or a slice of it) as a buffer would alias the base weight, which merging changes."""
    spec = _spec(w0={"shape": ["out_features", "in_features"], "init": {"expr": "weight"}, "trainable": False})
    (_, w0) = build_plan(spec).computed_weights
    assert w0.init_expr == "weight.clone()"
    spec = _spec(w0={"shape": ["in_features"], "init": {"expr": "weight[0]"}, "trainable": False})
    assert build_plan(spec).computed_weights[1].init_expr == "weight[0].clone()"


def test_a_trainable_weight_may_start_from_an_init_expression(tmp_path):
    spec = _spec(P={"shape": ["r", "in_features"], "init": {"expr": "torch.linalg.qr(weight.T)[0].T[:r]"}})
    code = _layer_code(spec, tmp_path)
    assert "self.refdelora_P[adapter_name] = nn.Parameter(torch.linalg.qr(weight.T)[0].T[: config.r].clone())" in (
        " ".join(_method(code, "update_layer").split()).replace("( ", "(").replace(" )", ")")
    )
    assert "refdelora_P" in build_plan(spec).adapter_layer_names


def test_randperm_needs_a_seed_and_nothing_else():
    data = yaml.safe_load(FOURIERFT.read_text(encoding="utf-8"))
    for bad in ("randperm(in_features)", "randperm(in_features, seed=1, generator=2)", "randperm(4, 1, 2)"):
        broken = copy.deepcopy(data)
        broken["weights"]["indices"]["init"]["expr"] = f"torch.stack([{bad}, {bad}])"
        with pytest.raises(ScaffoldError, match="randperm"):
            build_plan(MethodSpec.model_validate(broken))
    ok = copy.deepcopy(data)
    ok["weights"]["indices"]["init"]["expr"] = "torch.stack([randperm(2 * in_features, 7)[:n_frequency]] * 2)"
    assert "manual_seed(7)" in build_plan(MethodSpec.model_validate(ok)).computed_weights[0].init_expr


def test_check_shows_computed_weights():
    result = CliRunner().invoke(app, ["check", str(FOURIERFT), "--json"])
    assert result.exit_code == 0, result.output
    indices = json.loads(result.stdout)["weights"]["indices"]
    assert indices["dtype"] == "long" and indices["persistent"] is False and indices["trainable"] is False
    assert "torch.randperm(" in indices["computed"]
    assert "computed" not in json.loads(result.stdout)["weights"]["spectrum"]
