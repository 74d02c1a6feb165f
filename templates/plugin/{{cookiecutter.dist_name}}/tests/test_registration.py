{% if cookiecutter.kind == "tuner" %}
{{ cookiecutter.header }}
"""How `{{ cookiecutter.package }}` plugs into the installed PEFT: the `PeftType` member, the registries, the version check, and
the whole life of an adapter (train, save, load, merge) through PEFT's own entry points on a tiny Llama."""

import importlib
import json
import pickle
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import {{ cookiecutter.package }}
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType
from {{ cookiecutter.package }} import {{ cookiecutter.config_cls }}, {{ cookiecutter.layer_cls }}, {{ cookiecutter.model_cls }}, _registration


# the modules of a tiny Llama this method adapts (None: it adapts none of Llama's layer types)
LLAMA_TARGETS = {{ cookiecutter.llama_targets }}
needs_llama = pytest.mark.skipif(LLAMA_TARGETS is None, reason="the method adapts none of Llama's layer types")


def test_peft_type_member_behaves_like_peft_own():
    member = PeftType.{{ cookiecutter.peft_type }}
    assert member is PeftType("{{ cookiecutter.peft_type }}") is PeftType["{{ cookiecutter.peft_type }}"]
    assert member == "{{ cookiecutter.peft_type }}" and isinstance(member, str) and member.value == member.name == "{{ cookiecutter.peft_type }}"
    assert member in PeftType and "{{ cookiecutter.peft_type }}" in list(PeftType)  # what register_peft_method checks
    assert list(PeftType).count(member) == 1 and len(PeftType) == len(list(PeftType))
    assert PeftType.__members__["{{ cookiecutter.peft_type }}"] is member
    assert pickle.loads(pickle.dumps(member)) is member
    assert PeftType.LORA is PeftType("LORA")  # PEFT's own members untouched
    assert {{ cookiecutter.config_cls }}().peft_type is member


def test_registries_hold_the_method():
    member = PeftType.{{ cookiecutter.peft_type }}
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is {{ cookiecutter.config_cls }}
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is {{ cookiecutter.model_cls }}
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "{{ cookiecutter.prefix }}" == {{ cookiecutter.model_cls }}.prefix
    # a plain string, as read from adapter_config.json, finds the config class too
    assert PEFT_TYPE_TO_CONFIG_MAPPING["{{ cookiecutter.peft_type }}"] is {{ cookiecutter.config_cls }}
    from peft.utils import TRANSFORMERS_MODELS_TO_{{ cookiecutter.peft_type }}_TARGET_MODULES_MAPPING

    assert TRANSFORMERS_MODELS_TO_{{ cookiecutter.peft_type }}_TARGET_MODULES_MAPPING == {{ cookiecutter.model_cls }}.target_module_mapping


def test_registering_again_is_a_no_op():
    before = len(PeftType)
    importlib.reload({{ cookiecutter.package }})
    _registration.register_peft_method(
        name="{{ cookiecutter.name }}", config_cls={{ cookiecutter.config_cls }}, model_cls={{ cookiecutter.model_cls }}, prefix="{{ cookiecutter.prefix }}"
    )
    assert len(PeftType) == before
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.{{ cookiecutter.peft_type }}] is {{ cookiecutter.config_cls }}


def test_a_fresh_import_replaces_the_registered_classes(monkeypatch):
    member = PeftType.{{ cookiecutter.peft_type }}
    for mapping in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING):
        monkeypatch.setitem(mapping, member, mapping[member])  # restored after the test
    for module in [m for m in sys.modules if m == "{{ cookiecutter.package }}" or m.startswith("{{ cookiecutter.package }}.")]:
        monkeypatch.delitem(sys.modules, module)
    fresh = importlib.import_module("{{ cookiecutter.package }}")
    assert fresh.{{ cookiecutter.config_cls }} is not {{ cookiecutter.config_cls }}
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is fresh.{{ cookiecutter.config_cls }}
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is fresh.{{ cookiecutter.model_cls }}


def test_another_method_of_the_same_name_is_refused():
    impostor = type("{{ cookiecutter.config_cls }}", ({{ cookiecutter.config_cls }},), {})
    with pytest.raises(RuntimeError, match="already has a method {{ cookiecutter.peft_type }}"):
        _registration.register_peft_method(name="{{ cookiecutter.name }}", config_cls=impostor, model_cls={{ cookiecutter.model_cls }})
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.{{ cookiecutter.peft_type }}] is {{ cookiecutter.config_cls }}


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


def test_loading_without_the_plugin_fails_on_the_unknown_type(tmp_path):
    """Stock PEFT has no plugin discovery: an adapter of this method loads only once `{{ cookiecutter.package }}` is imported."""
    config = {{ cookiecutter.config_cls }}(target_modules=["lin"])
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "{{ cookiecutter.peft_type }}"
    code = f"from peft import PeftConfig; PeftConfig.from_pretrained({str(tmp_path)!r})"
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert without.returncode != 0 and "'{{ cookiecutter.peft_type }}'" in without.stderr
    with_import = subprocess.run([sys.executable, "-c", "import {{ cookiecutter.package }}; " + code], capture_output=True, text=True, check=False)
    assert with_import.returncode == 0, with_import.stderr


def _tiny_llama(path):
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@needs_llama
def test_default_target_modules_come_from_the_mapping(tmp_path):
    defaults = {{ cookiecutter.model_cls }}.target_module_mapping.get("llama")
    if defaults is None:
        pytest.skip("no default target modules for llama")
    model = get_peft_model(_tiny_llama(tmp_path / "base"), {{ cookiecutter.config_cls }}())
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, {{ cookiecutter.layer_cls }})}
    assert adapted == set(defaults)


@needs_llama
def test_train_save_load_merge(tmp_path, capsys):
    base = _tiny_llama(tmp_path / "base")
    input_ids = torch.randint(0, 100, (2, 7))
    base_logits = base(input_ids=input_ids).logits.detach()
    model = get_peft_model(base, {{ cookiecutter.config_cls }}(target_modules=LLAMA_TARGETS, init_weights=False))

    model.print_trainable_parameters()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("{{ cookiecutter.prefix }}" in name for name in trainable)
    assert f"trainable params: {sum(p.numel() for p in trainable.values()):,}" in capsys.readouterr().out

    frozen_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    adapter_before = {name: p.detach().clone() for name, p in trainable.items()}
    model.train()
    optimizer = torch.optim.SGD(list(trainable.values()), lr=0.1)
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    model.eval()
    assert any(not torch.equal(p, adapter_before[name]) for name, p in trainable.items())
    assert all(torch.equal(p, frozen_before[name]) for name, p in model.named_parameters() if not p.requires_grad)

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert not torch.allclose(logits, base_logits, atol=1e-4)  # the adapter does something

    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "{{ cookiecutter.peft_type }}"
    assert isinstance(PeftConfig.from_pretrained(tmp_path / "adapter"), {{ cookiecutter.config_cls }})

    with torch.no_grad():
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, logits)
        auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
        assert isinstance(auto.peft_config["default"], {{ cookiecutter.config_cls }})
        torch.testing.assert_close(auto(input_ids=input_ids).logits, logits)

{% if cookiecutter.mergeable == "true" %}
        merged = loaded.merge_and_unload()
        assert not any(isinstance(m, {{ cookiecutter.layer_cls }}) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=input_ids).logits, logits, atol=1e-4, rtol=1e-4)
{% else %}
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            loaded.merge_and_unload()
        unloaded = loaded.unload()
        assert not any(isinstance(m, {{ cookiecutter.layer_cls }}) for m in unloaded.modules())
        torch.testing.assert_close(unloaded(input_ids=input_ids).logits, base_logits)
{% endif %}
{% endif %}
