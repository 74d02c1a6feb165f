"""`shared: true` weights (docs/spec.md, "Shared weights"): the plan and the code rendered for them.

The numbers are checked elsewhere: against PEFT's VeRA in tests/test_zoo_parity_vera.py, against the oracle in
tests/test_oracle.py, through PEFT's matrix and the generated tests in tests/test_zoo_in_tree.py; bad specs in
tests/test_bad_input.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.files import render_method
from scaffold.plan import build_plan
from scaffold.plan.registration import registration_for
from scaffold.render import Layout
from scaffold.spec import load_spec, spec_from_data


REPO = Path(__file__).resolve().parent.parent
VERA = REPO / "reference_methods" / "vera.yaml"
SHAREDPROJ = REPO / "tests" / "specs" / "sharedproj.yaml"


def _function(module: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found")


def test_plan_holds_shared_weights_on_the_model_and_slices_them_per_layer():
    plan = build_plan(load_spec(VERA))
    weights = {w.name: w for w in plan.weights}
    # outside the method's prefix, as VeRA's vera_A is outside vera_lambda_
    assert (weights["A"].attr, weights["B"].attr) == ("shared_A", "shared_B")
    assert (weights["A"].slice_code, weights["B"].slice_code) == ("[:, :self.in_features]", "[:self.out_features]")
    assert not weights["A"].trainable and not weights["A"].init_lines and not weights["A"].random_init_lines
    assert plan.adapter_layer_names == ["refvera_lambda_b", "refvera_lambda_d"]
    assert {"shared_A", "shared_B"} <= set(plan.other_param_names)
    # which adapters a layer has is read from a per-layer weight, never from the model's shared dict
    assert plan.first_weight.name == "lambda_b"
    assert [(s.name, s.shape_code) for s in plan.shared_weights] == [
        ("A", ["config.r", "in_features"]),
        ("B", ["out_features", "config.r"]),
    ]
    assert plan.shared_weights[0].init_line == "nn.init.kaiming_uniform_(shared, a=0.0, generator=generator)"


def test_rendered_method_follows_peft_vera():
    files = render_method(build_plan(load_spec(VERA)), layout=Layout.STANDALONE)
    model = ast.parse(files["refvera/model.py"])
    model_src = files["refvera/model.py"]
    assert "uses_shared_state: bool = True" in model_src
    # sized from every targeted layer before injection, drawn from the key in the listed order
    init = ast.unparse(_function(model, "RefVeraModel", "_init_shared_weights"))
    assert "torch.Generator(device='cpu').manual_seed(config.projection_prng_key)" in init
    assert init.index("shapes['A']") < init.index("shapes['B']")
    hook = ast.unparse(_function(model, "RefVeraModel", "_pre_injection_hook"))
    assert "self.shared_A = BufferDict({}, persistent=config.save_projection)" in hook
    for name in ("_find_shared_shapes", "_check_new_adapter_config", "_get_adapter_state_dict"):
        _function(model, "RefVeraModel", name)
    assert "_remap_adapter_state_dict_for_load" in model_src

    config = files["refvera/config.py"]
    assert "projection_prng_key: int = field(\n        default=0," in config
    assert "save_projection: bool = field(\n        default=True," in config
    layer = files["refvera/layer.py"]
    assert "A = self.shared_A[adapter_name][:, : self.in_features]" in layer
    assert 'self.shared_A = shared_weights["A"]' in layer
    test = files["tests/test_refvera.py"]
    assert "def test_shared_weights_are_saved_once_or_regenerated_from_the_key" in test


def test_unshared_specs_render_no_shared_machinery():
    files = render_method(build_plan(load_spec(REPO / "reference_methods" / "loha.yaml")), layout=Layout.STANDALONE)
    for path, text in files.items():
        for marker in ("projection_prng_key", "shared_weights", "uses_shared_state", "_find_shared_shapes"):
            assert marker not in text, (path, marker)


def test_init_arguments_of_a_shared_weight_read_the_config_and_the_model_imports_math():
    plan = build_plan(load_spec(SHAREDPROJ))
    assert plan.shared_weights[0].init_line == (
        "nn.init.normal_(shared, std=1 / math.sqrt(config.r), generator=generator)"
    )
    files = render_method(plan, layout=Layout.STANDALONE)
    assert "import math" in files["sharedproj/model.py"]
    # only in_features is read: the unpacking names the other `_` (ruff's unused-variable rule)
    assert "in_features, _ = _canonical_in_out_features(base_layer)" in files["sharedproj/model.py"]


def test_shared_shape_expressions_are_sliced_with_the_layer_dims():
    data = {
        "name": "halfshare",
        "hyperparameters": {"r": {"type": "int", "default": 4}},
        "weights": {
            "s": {"shape": ["out_features"], "init": "zeros"},
            "P": {"shape": ["2 * r", "in_features // 2 + 1"], "init": "ones", "shared": True},
        },
        "delta_weight": "s[:, None] * P.sum(0)[None, :]",
    }
    plan = build_plan(spec_from_data(data))
    shared = next(w for w in plan.weights if w.shared)
    # the rank dim is the same for every layer of an adapter: whole; the other is cut to this layer's value
    assert shared.slice_code == "[:, :int(self.in_features // 2 + 1)]"
    assert plan.shared_weights[0].shape_code == ["int(2 * config.r)", "int(in_features // 2 + 1)"]
    assert plan.shared_weights[0].init_line == "nn.init.ones_(shared)"  # no randomness: no generator


def test_registrar_adds_a_row_reading_one_shared_tensor_from_two_layer_types():
    rows = {desc: kwargs for desc, _, kwargs in registration_for(build_plan(load_spec(SHAREDPROJ))).test_cases}
    assert rows["Vanilla EmbConv1D emb+conv1d SharedProj"]["target_modules"] == ["emb", "conv1d"]
    multi = [desc for desc, _, _ in registration_for(build_plan(load_spec(VERA))).multiple_active_adapters_cases]
    # unlike PEFT's VeRA (only "Same"), each adapter's shared weights fit its own targets
    assert multi == ["RefVeRA Same", "RefVeRA Different"]


def test_a_weight_named_into_the_method_prefix_is_refused():
    data = {
        "name": "ed",  # prefix `ed_`, inside `shared_P`
        "weights": {
            "s": {"shape": ["out_features"], "init": "zeros"},
            "P": {"shape": [1], "init": "ones", "shared": True},
        },
        "delta_weight": "s[:, None] * P",
    }
    with pytest.raises(ScaffoldError, match="contains the method's prefix"):
        build_plan(spec_from_data(data))


BANKMIX = REPO / "tests" / "specs" / "bankmix.yaml"


def test_a_trainable_shared_weight_is_one_parameter_of_the_model_named_in_the_prefix():
    plan = build_plan(load_spec(BANKMIX))
    weights = {w.name: w for w in plan.weights}
    # inside the prefix, as VB-LoRA's vblora_vector_bank: PEFT trains and saves the method's parameters by it
    assert weights["bank"].attr == "bankmix_bank" and weights["bank"].trainable and weights["bank"].shared
    assert "bankmix_bank" in plan.adapter_layer_names and "bankmix_bank" not in plan.other_param_names
    assert plan.shared_trainable and not plan.frozen_shared and plan.shared_container == "nn.ParameterDict"
    # its own init from torch's global RNG (always saved: no key needed)
    assert plan.shared_weights[0].init_line == "nn.init.uniform_(shared, a=-config.bank_bound, b=config.bank_bound)"

    files = render_method(plan, layout=Layout.STANDALONE)
    model = ast.parse(files["bankmix/model.py"])
    hook = ast.unparse(_function(model, "BankmixModel", "_pre_injection_hook"))
    assert "self.bankmix_bank = nn.ParameterDict({})" in hook
    init = ast.unparse(_function(model, "BankmixModel", "_init_shared_weights"))
    assert "generator" not in init and "projection_prng_key" not in init
    saved = ast.unparse(_function(model, "BankmixModel", "_get_adapter_state_dict"))
    assert "save_projection" not in saved and "to_return[f'base_model.{name}.{adapter_name}']" in saved
    load = ast.unparse(_function(model, "BankmixModel", "_remap_adapter_state_dict_for_load"))
    assert "peft_model_state_dict[key] = saved" in load  # the layers' references get the saved value
    assert "save_projection" not in files["bankmix/config.py"]
    assert "projection_prng_key" not in files["bankmix/config.py"]
    layer = files["bankmix/layer.py"]
    assert "self.bankmix_bank = nn.ParameterDict({})" in layer
    assert 'self.bankmix_bank = shared_weights["bank"]' in layer
    assert "shared_weights: Optional[dict[str, nn.ParameterDict]] = None," in layer
    assert "BufferDict" not in files["bankmix/model.py"] and "BufferDict" not in layer
    test = files["tests/test_bankmix.py"]
    assert "def test_shared_weights_are_trained_once_and_saved_once" in test
    assert "regenerated_from_the_key" not in test


def test_a_trainable_shared_weight_gets_gradients_from_every_layer_and_one_optimizer_step(tmp_path, monkeypatch):
    """The rendered model, imported against the installed PEFT: two layers, one bank, trained once per step."""
    import importlib
    import sys
    from types import SimpleNamespace

    import torch
    from torch import nn

    plan = build_plan(load_spec(BANKMIX))
    package = tmp_path / "bankmix"
    for path, text in render_method(plan, layout=Layout.STANDALONE).items():
        if path.startswith("bankmix/"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
    # the modules only: registering the method needs a PEFT tree with its PeftType
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        config_module = importlib.import_module("bankmix.config")
        model_module = importlib.import_module("bankmix.model")
        monkeypatch.setattr(config_module, "PeftType", SimpleNamespace(BANKMIX="BANKMIX"))  # not registered
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7))
        config = config_module.BankmixConfig(target_modules=["0", "2"], init_weights=False)
        tuner = model_module.BankmixModel(base, config, "default")
        bank = tuner.bankmix_bank["default"]
        layers = [tuner.model[0], tuner.model[2]]
        assert all(layer.bankmix_bank is tuner.bankmix_bank for layer in layers)
        x = torch.randn(3, 6)
        grads = []
        for layer in layers:  # each layer alone reaches the bank
            bank.grad = None
            out = layer(x if layer is layers[0] else torch.randn(3, 5))
            out.pow(2).sum().backward()
            assert bank.grad is not None and bank.grad.abs().sum() > 0
            grads.append(bank.grad.clone())
        trainable = [p for p in tuner.parameters() if p.requires_grad]
        assert sum(p is bank for p in trainable) == 1
        bank.grad = None
        tuner(x).pow(2).sum().backward()
        before = bank.detach().clone()
        torch.optim.SGD(trainable, lr=0.5).step()
        # one step: the bank moved by lr * its (summed) gradient, once
        torch.testing.assert_close(bank.detach(), before - 0.5 * bank.grad)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "bankmix" or n.startswith("bankmix.")]:
            del sys.modules[name]


def test_shared_weights_are_all_trainable_or_all_frozen():
    data = {
        "name": "mixedshare",
        "hyperparameters": {"r": {"type": "int", "default": 4}},
        "weights": {
            "s": {"shape": ["out_features"], "init": "zeros"},
            "P": {"shape": ["r", "in_features"], "init": "ones", "shared": True, "trainable": True},
            "Q": {"shape": ["out_features", "r"], "init": "ones", "shared": True},
        },
        "delta_weight": "s[:, None] * (Q @ P)",
    }
    with pytest.raises(ScaffoldError, match=r"weights\.Q\.trainable.*all trainable or all frozen"):
        build_plan(spec_from_data(data))
