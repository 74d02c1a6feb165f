{{ cookiecutter.header }}
{% if cookiecutter.kind == "tuner" %}
"""Adds {{ cookiecutter.title }} to the installed PEFT, which knows nothing of it, when `{{ cookiecutter.package }}` is imported.

An in-tree PEFT method is known through three registries, which a plugin fills at run time instead:

- the `PeftType.{{ cookiecutter.peft_type }}` member: what the config's `peft_type` holds and `adapter_config.json` stores;
- `register_peft_method`: config class, model class and parameter prefix, keyed by that member (how
  `get_peft_model`, `PeftConfig.from_pretrained` and `PeftModel.from_pretrained` find the method);
- the default target modules, `peft.utils.TRANSFORMERS_MODELS_TO_{{ cookiecutter.peft_type }}_TARGET_MODULES_MAPPING`.

The first relies on how `enum` stores members, so only the PEFT versions this was tested against are accepted
(`PEFT_REQUIREMENT`, as in pyproject.toml); any other is refused when this module is imported, before any of
PEFT's internals are touched. Registering again (the package re-imported or reloaded) replaces this package's
own entries; a method of the same name from anywhere else is refused.
"""

{% else %}
"""Adds `{{ cookiecutter.layer_cls }}` to LoRA's custom-module dispatch of the installed PEFT when `{{ cookiecutter.package }}` is imported.

PEFT's LoRA creates a layer for a module type it does not know through `LoraConfig._register_custom_module`
(experimental), a mapping from base layer type to LoRA layer class held by each config. `register_custom_module`
makes every `LoraConfig` created from then on carry this package's mapping: the ones user code creates and the
ones `LoraConfig.from_pretrained` and `PeftModel.from_pretrained` create, so that a saved adapter loads with no
extra step. It does so by wrapping `LoraConfig.__post_init__` once per process; the mapping is shared by every
package generated this way (one wrapper, one entry per base layer type).

The mapping is not part of PEFT's public API, so only the PEFT versions this was tested against are accepted
(`PEFT_REQUIREMENT`, as in pyproject.toml); any other is refused when this module is imported, before any of
PEFT's internals are touched. Registering again (the package re-imported or reloaded) replaces this package's
own entry; another layer class for the same base layer type is refused.
"""

{% endif %}
from __future__ import annotations

{% if cookiecutter.kind == "lora_layer" %}
import functools
{% endif %}
import importlib.metadata
from typing import Any

from packaging.version import Version


DISTRIBUTION = "{{ cookiecutter.dist_name }}"
PEFT_REQUIREMENT = "{{ cookiecutter.peft_requirement }}"
# minor releases, compared on (major, minor) so that pre-releases of the next minor are refused too
_PEFT_MIN = Version("{{ cookiecutter.peft_min }}").release[:2]
_PEFT_BELOW = Version("{{ cookiecutter.peft_max }}").release[:2]


def check_peft_version(installed: str | None = None) -> str:
    """The installed PEFT's version; ImportError when it is outside `PEFT_REQUIREMENT`."""
    if installed is None:
        installed = importlib.metadata.version("peft")
    if not _PEFT_MIN <= Version(installed).release[:2] < _PEFT_BELOW:
        raise ImportError(
            f"{DISTRIBUTION} supports peft{PEFT_REQUIREMENT}, but peft {installed} is installed: "
            f"pip install 'peft{PEFT_REQUIREMENT}'"
        )
    return installed


{% if cookiecutter.kind == "tuner" %}
def add_peft_type(value: str) -> Any:
    """The `PeftType` member `value`, added to PEFT's enum when it is not there yet.

    `PeftType` is a `str` Enum, and the standard library has no API to add a member to an Enum class (third-party
    `aenum` has `extend_enum`). A member is an instance of the class carrying `_name_` and `_value_`, and the class
    finds its members through three tables, filled here the way `enum` fills them when it creates the class:
    `_member_map_` (name -> member: `PeftType["X"]`, `PeftType.__members__`), `_value2member_map_` (value ->
    member: `PeftType("X")`, unpickling, `"X" in PeftType`) and `_member_names_` (iteration, `len`). Setting the
    class attribute gives `PeftType.X`; it must come before `_member_map_`, since Enum refuses to reassign members.
    """
    from peft.utils import PeftType

    member = PeftType._value2member_map_.get(value)
    if member is not None:
        return member
    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    setattr(PeftType, value, member)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    return member


def register_peft_method(
    *, name: str, config_cls: type, model_cls: type, prefix: str | None = None, is_mixed_compatible: bool = False
) -> None:
    """PEFT's `register_peft_method` (same arguments), after adding the `PeftType` member it requires, and with
    the default target modules published where PEFT keeps them. Safe to run again for the same classes."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import register_peft_method as peft_register_peft_method

    peft_type = add_peft_type(name.upper())
    prefix = prefix or f"{name}_"
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is not None:
        if _qualified_name(registered) != _qualified_name(config_cls):
            raise RuntimeError(
                f"{DISTRIBUTION}: PEFT already has a method {peft_type.value} ({_qualified_name(registered)})"
            )
        # this package imported again: its classes replace the earlier ones
        for mapping in (
            PEFT_TYPE_TO_CONFIG_MAPPING,
            PEFT_TYPE_TO_TUNER_MAPPING,
            PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
            PEFT_TYPE_TO_PREFIX_MAPPING,
        ):
            mapping.pop(peft_type, None)
    # PEFT means prefixes to be unique (its own check compares the prefix with the mapping's keys, the types)
    for other, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == prefix:
            raise RuntimeError(f"{DISTRIBUTION}: the parameter prefix {prefix!r} is PEFT's {other.value} method's")
    peft_register_peft_method(
        name=name,
        config_cls=config_cls,
        model_cls=model_cls,
        prefix=prefix,
        is_mixed_compatible=is_mixed_compatible,
    )
    _publish_target_modules(peft_type.value, model_cls)


def _publish_target_modules(peft_type: str, model_cls: type) -> None:
    """Make the model's default target modules importable under the name an in-tree method's have."""
    import peft.utils
    import peft.utils.constants

    constant = f"TRANSFORMERS_MODELS_TO_{peft_type}_TARGET_MODULES_MAPPING"
    mapping = getattr(model_cls, "target_module_mapping", None)
    for module in (peft.utils.constants, peft.utils):
        setattr(module, constant, mapping)


{% else %}
# the `LoraConfig` attribute holding the process-wide mapping (base layer type -> LoRA layer class)
_REGISTRY = "_peft_scaffold_custom_modules"


def register_custom_module(base_layer_cls: type, layer_cls: type) -> None:
    """Map `base_layer_cls` to `layer_cls` in every `LoraConfig` created from now on, as
    `config._register_custom_module({base_layer_cls: layer_cls})` does for one. Safe to run again for the same class."""
    from peft import LoraConfig

    registry = _custom_modules(LoraConfig)
    registered = registry.get(base_layer_cls)
    if registered is not None and _qualified_name(registered) != _qualified_name(layer_cls):
        raise RuntimeError(
            f"{DISTRIBUTION}: LoRA already maps {_qualified_name(base_layer_cls)} to {_qualified_name(registered)}"
        )
    # this package imported again: its class replaces the earlier one
    registry[base_layer_cls] = layer_cls


def _custom_modules(config_cls: Any) -> dict[type, type]:
    """The process-wide mapping, created with the `__post_init__` wrapper that gives it to each new config."""
    registry = config_cls.__dict__.get(_REGISTRY)
    if registry is not None:
        return registry
    registry = {}
    post_init = config_cls.__post_init__

    @functools.wraps(post_init)
    def __post_init__(self: Any, *args: Any, **kwargs: Any) -> None:
        post_init(self, *args, **kwargs)
        if registry:
            self._register_custom_module(dict(registry))

    config_cls.__post_init__ = __post_init__
    setattr(config_cls, _REGISTRY, registry)
    return registry


{% endif %}
def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


check_peft_version()
