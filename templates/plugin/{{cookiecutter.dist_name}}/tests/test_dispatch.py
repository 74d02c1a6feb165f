{% if cookiecutter.kind == "lora_layer" %}
{{ cookiecutter.header }}
"""How `{{ cookiecutter.package }}` plugs into the installed PEFT: a plain `LoraConfig` (created, or loaded with a saved adapter)
dispatches `{{ cookiecutter.base_layer }}` to `{{ cookiecutter.layer_cls }}`, importing again is harmless, and the version check."""

import importlib
import re
import sys

import pytest
{% if cookiecutter.base_import %}
import {{ cookiecutter.base_import }}
{% endif %}
import torch
from torch import nn

import {{ cookiecutter.package }}
from peft import LoraConfig, PeftModel, get_peft_model
from {{ cookiecutter.package }} import {{ cookiecutter.layer_cls }}, _registration


BASE_LAYER_CLS = {{ cookiecutter.base_layer }}


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = {{ cookiecutter.usage_model }}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _input() -> torch.Tensor:
    torch.manual_seed(42)
    return {{ cookiecutter.usage_input }}


def _base_model() -> Model:
    torch.manual_seed(0)
    return Model().eval()


def _lora_layer(model):
    layer = model.base_model.model.layer
    assert isinstance(layer, {{ cookiecutter.layer_cls }})
    return layer


def test_a_plain_lora_config_dispatches_the_layer_type():
    config = LoraConfig(target_modules=["layer"])
    assert config._custom_modules == {BASE_LAYER_CLS: {{ cookiecutter.layer_cls }}}
    torch.manual_seed(1)
    model = get_peft_model(_base_model(), LoraConfig(target_modules=["layer"], init_lora_weights=False)).eval()
    layer = _lora_layer(model)
    x = _input()
    with torch.no_grad():
        base = _base_model()(x)
        output = model(x)
        assert not torch.allclose(output, base, atol=1e-4)  # the adapter does something
        model.merge_adapter()
        assert torch.allclose(model(x), output, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        assert torch.allclose(layer.get_base_layer().weight, _base_model().layer.weight, atol=1e-6)


def test_a_saved_adapter_loads_without_registering_again(tmp_path):
    torch.manual_seed(1)
    model = get_peft_model(_base_model(), LoraConfig(target_modules=["layer"], init_lora_weights=False)).eval()
    x = _input()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_base_model(), tmp_path).eval()
    _lora_layer(loaded)
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-6)


def test_importing_again_is_harmless(monkeypatch):
    post_init = LoraConfig.__post_init__
    importlib.reload({{ cookiecutter.package }})
    _registration.register_custom_module(BASE_LAYER_CLS, {{ cookiecutter.layer_cls }})
    assert LoraConfig.__post_init__ is post_init  # wrapped once
    for module in [m for m in sys.modules if m == "{{ cookiecutter.package }}" or m.startswith("{{ cookiecutter.package }}.")]:
        monkeypatch.delitem(sys.modules, module)
    registry = getattr(LoraConfig, _registration._REGISTRY)
    monkeypatch.setitem(registry, BASE_LAYER_CLS, registry[BASE_LAYER_CLS])  # restored after the test
    fresh = importlib.import_module("{{ cookiecutter.package }}")
    assert fresh.{{ cookiecutter.layer_cls }} is not {{ cookiecutter.layer_cls }}
    assert LoraConfig()._custom_modules == {BASE_LAYER_CLS: fresh.{{ cookiecutter.layer_cls }}}


def test_another_layer_class_for_the_same_type_is_refused():
    impostor = type("{{ cookiecutter.layer_cls }}", ({{ cookiecutter.layer_cls }},), {})
    with pytest.raises(RuntimeError, match="LoRA already maps"):
        _registration.register_custom_module(BASE_LAYER_CLS, impostor)
    assert LoraConfig()._custom_modules[BASE_LAYER_CLS] is {{ cookiecutter.layer_cls }}


@pytest.mark.parametrize("version", ["{{ cookiecutter.peft_min }}.0", "{{ cookiecutter.peft_min }}.3"])
def test_supported_peft_versions_are_accepted(version):
    assert _registration.check_peft_version(version) == version


@pytest.mark.parametrize("version", ["{{ cookiecutter.peft_too_old }}", "{{ cookiecutter.peft_max }}.0", "{{ cookiecutter.peft_max }}.0.dev0", "1.0.0"])
def test_other_peft_versions_are_refused(version):
    expected = f"supports peft{_registration.PEFT_REQUIREMENT}, but peft {version} is installed"
    with pytest.raises(ImportError, match=re.escape(expected)):
        _registration.check_peft_version(version)


def test_import_refuses_an_unsupported_peft(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "{{ cookiecutter.peft_max }}.0" if name == "peft" else "0")
    for module in [m for m in sys.modules if m == "{{ cookiecutter.package }}" or m.startswith("{{ cookiecutter.package }}.")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match="{{ cookiecutter.dist_name }} supports peft"):
        importlib.import_module("{{ cookiecutter.package }}")
{% endif %}
