{% if cookiecutter.kind == "lora_layer" %}
{{ cookiecutter.header }}
"""{{ cookiecutter.title }} on stock PEFT: `{{ cookiecutter.layer_cls }}`, the LoRA layer for `{{ cookiecutter.base_layer }}`.

Importing this package maps `{{ cookiecutter.base_layer }}` to `{{ cookiecutter.layer_cls }}` in LoRA's custom-module dispatch
(`_registration.py`), so that a plain `LoraConfig` targets such layers.
"""

{% if cookiecutter.base_import %}
import {{ cookiecutter.base_import }}
{% else %}
import torch
{% endif %}

from ._registration import register_custom_module
from .layer import {{ cookiecutter.layer_cls }}


__all__ = ["{{ cookiecutter.layer_cls }}"]

register_custom_module({{ cookiecutter.base_layer }}, {{ cookiecutter.layer_cls }})
{% endif %}
