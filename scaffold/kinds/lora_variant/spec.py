"""The `kind: lora_variant` spec: a LoRA variant (a `LoraVariant` subclass switched on by `LoraConfig.use_<name>`).

Structure and types are checked here; which names an expression may read is checked by the plan
(`scaffold.kinds.lora_variant.plan`), where the whole spec is known. See docs/lora_variant.md.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from scaffold.spec.model import FieldError, TensorValue, check_names, check_text, tensor_value


# PEFT's LoRA layer classes a variant can be registered for (each has a `lora_variants` mapping in PEFT >= 0.20).
SUPPORTED_LAYERS: tuple[str, ...] = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d")
# LoRA layer classes PEFT has but a variant cannot be registered for (no `lora_variants` of their own).
UNSUPPORTED_LAYERS = {
    "MultiheadAttention": "PEFT's LoRA MultiheadAttention has no `lora_variants` mapping",
    "ParamWrapper": "PEFT's LoRA ParamWrapper (target_parameters) has no `lora_variants` mapping",
    "Conv1D": "transformers' Conv1D is adapted by LoRA's `Linear` class (fan_in_fan_out): list `Linear`",
}

# `use_<name>` switches LoraConfig 0.21.x already has: refused without looking at a tree (the registrar also reads
# the target tree's config.py, which catches fields added later).
KNOWN_LORA_SWITCHES = frozenset({"use_dora", "use_rslora", "use_qalora", "use_bdlora"})

# Names the generated variant code binds itself; spec weights and values may not take them.
RESERVED_NAMES = frozenset(
    {
        "x", "result", "base", "weight", "base_weight", "orig_weight", "new_weight", "delta_weight", "lora_A",
        "lora_B", "scaling", "r", "in_features", "out_features", "dropout", "dropped", "per_output", "layer_op",
        "module", "base_layer", "adapter_name", "active_adapter", "kwargs", "bias", "torch", "F", "nn", "math", "transpose",
        "safe_merge", "key", "value", "self", "cls", "config",
    }
)  # fmt: skip

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CLASS_PREFIX = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_layer(layer: str) -> str:
    if layer in UNSUPPORTED_LAYERS:
        raise ValueError(f"{layer!r} is not supported: {UNSUPPORTED_LAYERS[layer]}")
    if layer not in SUPPORTED_LAYERS:
        raise ValueError(f"unknown LoRA layer class {layer!r} (supported: {', '.join(SUPPORTED_LAYERS)})")
    return layer


LayerName = Annotated[str, AfterValidator(_check_layer)]


class VariantWeight(_Strict):
    """An extra tensor per adapter and layer (e.g. DoRA's magnitude vector), stored as `lora_<name>_<weight>`."""

    shape: list[int | str] = Field(
        min_length=1,
        max_length=4,
        description="entries: positive ints or scalar expressions over in_features, out_features, r",
    )
    init: str | float = Field(
        description="tensor expression for its initial value (broadcast to `shape`), over weight, lora_A, lora_B, "
        "delta_weight, scaling, dims, earlier weights and values that read no extra weight"
    )
    trainable: bool = Field(
        default=True, description="False: frozen (requires_grad=False), still saved with the adapter"
    )

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, value: list[int | str]) -> list[int | str]:
        for entry in value:
            if isinstance(entry, bool) or (isinstance(entry, int) and entry < 1):
                raise ValueError(f"shape entries must be positive integers or expressions, got {entry!r}")
        return value


# the named tensors are one notion across kinds (scaffold.spec.model.TensorValue)
VariantValue = TensorValue


class LoraVariantSpec(_Strict):
    """A LoRA variant described in YAML; see docs/lora_variant.md."""

    kind: Literal["lora_variant"]
    name: str = Field(description="lowercase identifier: config switch `use_<name>`, module tuners/lora/<name>.py")
    class_prefix: str | None = Field(default=None, description="CamelCase prefix of the variant classes")
    title: str | None = None
    paper: str | None = None
    summary: str = ""
    help: str | None = Field(default=None, description="help text of the `use_<name>` config field")
    layers: list[LayerName] = Field(default_factory=lambda: ["Linear"], min_length=1)
    weights: dict[str, VariantWeight] = Field(default_factory=dict)
    values: dict[str, str | VariantValue] = Field(default_factory=dict)
    forward: str | dict[str, str] = Field(
        description="the layer's output: one tensor expression, or one per layer class"
    )
    merge: str | None = Field(default=None, description="the merged weight, from `weight` (canonical view)")
    unmerge: str | None = Field(default=None, description="the inverse of `merge`")
    supports_lora_conversion: bool = Field(
        default=False, description="whether an adapter can be converted to plain LoRA (`convert_to_lora`)"
    )
    peft_test_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra LoraConfig kwargs for the rows added to PEFT's test matrix"
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"{value!r} contains a path separator")
        if not _NAME.match(value) or value.endswith("_") or keyword.iskeyword(value):
            raise ValueError(f"{value!r} must be a lowercase identifier (letters, digits, `_`, not ending in `_`)")
        if f"use_{value}" in KNOWN_LORA_SWITCHES:
            raise ValueError(f"LoraConfig already has `use_{value}`; choose another name (e.g. `my{value}`)")
        return value

    @field_validator("class_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is not None and not _CLASS_PREFIX.match(value):
            raise ValueError(f"{value!r} must be a CamelCase identifier")
        return value

    @field_validator("title", "paper")
    @classmethod
    def _check_one_line(cls, value: str | None) -> str | None:
        return value if value is None else check_text(value, one_line=True, literal=True)

    @field_validator("summary", "help")
    @classmethod
    def _check_prose(cls, value: str | None) -> str | None:
        # both end up in docstrings and (quoted by the generator) in the config field's help string
        return value if value is None else check_text(" ".join(value.split()))

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("layer classes are listed more than once")
        return value

    @field_validator("weights", "values")
    @classmethod
    def _check_identifiers(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_names(value, reserved=RESERVED_NAMES)
        return value

    @field_validator("peft_test_kwargs")
    @classmethod
    def _check_test_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not _IDENTIFIER.match(key):
                raise FieldError(str(key), f"{key!r} is not a LoraConfig field name")
            if key == "target_modules":
                raise FieldError(key, "the rows choose their own target modules per layer class")
            if not _literal_ok(item):
                raise FieldError(key, f"{item!r} is not a plain value (int, float, bool, str, list, dict, None)")
        return value

    @model_validator(mode="after")
    def _check_cross(self) -> LoraVariantSpec:
        for name in self.values:
            if name in self.weights:
                raise FieldError(f"values.{name}", f"`{name}` is already a name in `weights`")
        if (self.merge is None) != (self.unmerge is None):
            missing = "unmerge" if self.unmerge is None else "merge"
            raise FieldError(missing, "`merge` and `unmerge` must be given together")
        if isinstance(self.forward, dict):
            for key in self.forward:
                if key not in self.layers:
                    raise FieldError(f"forward.{key}", f"{key!r} is not one of the spec's `layers` {self.layers}")
            missing_layers = [layer for layer in self.layers if layer not in self.forward]
            if missing_layers:
                raise FieldError("forward", f"no expression for layer class {missing_layers[0]!r}")
        return self

    # -- derived names ---------------------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return self.class_prefix or self.name.replace("_", " ").title().replace(" ", "")

    @property
    def switch(self) -> str:
        """The LoraConfig field that turns the variant on."""
        return f"use_{self.name}"

    def value(self, name: str) -> VariantValue:
        return tensor_value(self.values[name])

    def forward_for(self, layer: str) -> str:
        return self.forward[layer] if isinstance(self.forward, dict) else self.forward


def _literal_ok(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, str) or '"""' not in value
    if isinstance(value, list):
        return all(_literal_ok(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _literal_ok(v) for k, v in value.items())
    return False
