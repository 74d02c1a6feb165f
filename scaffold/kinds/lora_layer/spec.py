"""The `kind: lora_layer` spec: a LoRA layer class for a base layer type PEFT's LoRA does not cover.

    kind: lora_layer
    name: convtranspose2d                    # the module (src/peft/tuners/lora/convtranspose2d.py), `remove NAME`
    base_layer: torch.nn.ConvTranspose2d     # dotted path of the base layer class
    attributes: [in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, dilation]
    dims: {kernel_numel: "kernel_size[0] * kernel_size[1]"}
    in_features: in_channels * kernel_numel  # lora_A is (r, in_features), lora_B (out_features, r)
    out_features: out_channels
    checks: [{condition: "groups == 1", message: "..."}]
    delta_weight: "(B @ A).reshape(...).transpose(0, 1) * scaling"   # in the base weight's layout
    forward: "..."                           # optional faster adapter path
    example: {args: [4, 6, 3], kwargs: {stride: 2}, input_shape: [2, 4, 5, 5]}

This module checks structure, names and literal values; what an expression may read is checked when the plan is
built (`plan.py`), and whether `base_layer` can be imported in a subprocess (`base_type.py`).
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from scaffold.spec.model import FieldError, check_text


_MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

# Modules of PEFT's tuners/lora package (0.19-0.21): a generated module may not take their names.
LORA_MODULES = frozenset(
    {
        "__init__", "aqlm", "arrow", "awq", "bnb", "config", "conversion", "corda", "dora", "eetq", "eva", "gptq",
        "hqq", "inc", "intruders", "layer", "loraga", "model", "monteclora", "te", "torchao", "tp_layer", "variants",
        "velora",
    }
)  # fmt: skip
# Classes PEFT's LoRA package defines or exports (0.21.2): a generated class may not take their names.
LORA_CLASSES = frozenset(
    {
        "ArrowConfig", "BdLoraConfig", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EvaConfig", "GPTQLoraLinear",
        "KasaConfig", "Linear", "LoftQConfig", "LoraConfig", "LoraGAConfig", "LoraLayer", "LoraModel",
        "LoraRuntimeConfig", "LoraVariant", "MontecloraConfig", "MultiheadAttention", "ParamWrapper", "VeloraConfig",
        "Linear8bitLt", "Linear4bit", "EetqLoraLinear", "LoraEmbeddingATPHolder",
    }
)  # fmt: skip
# Base layer types `dispatch_default` (and PEFT's quantization dispatchers) already handle.
SUPPORTED_BY_LORA = {
    "Linear": "torch.nn.Linear",
    "Embedding": "torch.nn.Embedding",
    "Conv1d": "torch.nn.Conv1d",
    "Conv2d": "torch.nn.Conv2d",
    "Conv3d": "torch.nn.Conv3d",
    "MultiheadAttention": "torch.nn.MultiheadAttention",
}
TRANSFORMERS_CONV1D = "transformers.pytorch_utils.Conv1D"

# Names the generated code uses itself (locals, parameters, imports) or that the expressions of this kind define;
# an attribute or dim may not take them.
RESERVED = frozenset(
    {
        "x", "A", "B", "r", "scaling", "dropout", "torch", "F", "nn", "math", "self", "base_layer", "weight",
        "weight_A", "weight_B", "dtype", "device", "cast_to_fp32", "output_tensor", "result", "lora_A", "lora_B",
        "lora_output", "adapter", "adapter_name", "active_adapter", "config", "kwargs", "args", "in_features",
        "out_features", "delta_weight", "sub_batch", "warnings", "Any", "Optional", "LoraLayer", "LoraConfig",
        "check_adapters_to_merge", "orig_weight", "parameters", "lora_alpha", "r_", "torch_result_dtype",
    }
)  # fmt: skip
_BUILTINS = frozenset(dir(builtins))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_local_name(name: str, what: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not an identifier (letters, digits, `_`; no leading `_`)")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ValueError(f"{what} {name!r} is a Python keyword")
    if name in RESERVED or name in _BUILTINS:
        raise ValueError(f"{what} {name!r} is a name the generated code uses itself")


def _check_literal(value: Any, where: str) -> None:
    """Literal values copied into generated code: numbers, bools, None, plain strings, lists of them."""
    if isinstance(value, list):
        for item in value:
            _check_literal(item, where)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, str):
        check_text(value, one_line=True, literal=True)
        return
    if value is not None and not isinstance(value, (bool, int, float)):
        raise ValueError(f"{where}: only numbers, booleans, null, strings and lists of them are allowed")


class Check(_Strict):
    """A condition on the base layer, checked when the LoRA layer is created (a `ValueError` otherwise)."""

    condition: str = Field(description="expression over `attributes` and `dims` that must hold, e.g. `groups == 1`")
    message: str = Field(description="why the layer is refused (one line)")

    @field_validator("message")
    @classmethod
    def _check_message(cls, value: str) -> str:
        check_text(value, one_line=True, literal=True)
        if not value.strip():
            raise ValueError("may not be empty")
        return value


class Example(_Strict):
    """The tiny base layer and input the generated tests and example use."""

    args: list[Any] = Field(default_factory=list, description="positional constructor arguments of the base layer")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword constructor arguments")
    input_shape: list[int] = Field(min_length=1, max_length=6, description="shape of the input (batch first)")
    input_high: int = Field(default=10, ge=1, description="indices are drawn from [0, input_high) (input: indices)")

    @field_validator("args")
    @classmethod
    def _check_args(cls, value: list[Any]) -> list[Any]:
        for index, item in enumerate(value):
            _check_literal(item, f"args[{index}]")
        return value

    @field_validator("kwargs")
    @classmethod
    def _check_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) or key.startswith("_"):
                raise ValueError(f"keyword {key!r} is not an identifier")
            _check_literal(item, key)
        return value

    @field_validator("input_shape")
    @classmethod
    def _check_shape(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("sizes must be positive")
        if value[0] < 2:
            raise ValueError("the batch (first) size must be at least 2, for the mixed-batch test")
        return value


Expr = str | int


class LoraLayerSpec(_Strict):
    """A LoRA layer type for one base layer class (`kind: lora_layer`)."""

    kind: Literal["lora_layer"]
    name: str = Field(description="module name: src/peft/tuners/lora/<name>.py in a tree, lora_<name>.py with --out")
    base_layer: str = Field(description="dotted path of the base layer class, e.g. torch.nn.ConvTranspose2d")
    class_name: str | None = Field(default=None, description="the generated class (default: the base class's name)")
    title: str | None = Field(default=None, description="one line; default `LoRA for <base class>`")
    summary: str = Field(default="", description="docstring text of the generated class")
    input: Literal["float", "indices"] = Field(
        default="float",
        description="what the layer takes: float tensors (cast to the adapter dtype; dropout allowed) or integer "
        "indices (embedding-like: no cast, no dropout)",
    )
    attributes: list[str] = Field(
        default_factory=list, description="attributes of the base layer the expressions may read"
    )
    dims: dict[str, Expr] = Field(
        default_factory=dict, description="named values computed from attributes (and earlier dims), in order"
    )
    in_features: Expr = Field(description="columns of the canonical (out_features, in_features) view")
    out_features: Expr = Field(description="rows of the canonical view")
    checks: list[Check] = Field(default_factory=list)
    delta_weight: str = Field(description="the adapter's update in the layout of the base layer's weight")
    forward: str | None = Field(
        default=None, description="the adapter's contribution to the output (default: the base op with the delta)"
    )
    example: Example

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _MODULE_NAME.match(value):
            raise ValueError("must be a lowercase identifier (letters, digits, `_`), e.g. convtranspose2d")
        if keyword.iskeyword(value):
            raise ValueError(f"{value!r} is a Python keyword")
        if value in LORA_MODULES:
            raise ValueError(f"{value!r} is a module of PEFT's LoRA package (src/peft/tuners/lora/{value}.py)")
        return value

    @field_validator("base_layer", "class_name", "title", "summary")
    @classmethod
    def _check_text_field(cls, value: str | None, info: ValidationInfo) -> str | None:
        checks = {
            "base_layer": check_base_path,
            "class_name": check_class_name,
            "title": lambda text: check_text(text, one_line=True, literal=True),
            "summary": check_text,
        }
        return None if value is None else checks[str(info.field_name)](value)

    @field_validator("attributes")
    @classmethod
    def _check_attributes(cls, value: list[str]) -> list[str]:
        seen = set()
        for name in value:
            _check_local_name(name, "attribute")
            if name in seen:
                raise ValueError(f"attribute {name!r} is listed twice")
            seen.add(name)
        return value

    @field_validator("dims")
    @classmethod
    def _check_dims(cls, value: dict[str, Expr]) -> dict[str, Expr]:
        for name in value:
            try:
                _check_local_name(str(name), "dim")
            except ValueError as exc:
                raise FieldError(str(name), str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_cross(self) -> LoraLayerSpec:
        clash = set(self.attributes) & set(self.dims)
        if clash:
            name = sorted(clash)[0]
            raise FieldError(f"dims.{name}", f"{name!r} is also listed in `attributes`")
        return self

    @property
    def base_class(self) -> str:
        return self.base_layer.rpartition(".")[2]

    @property
    def layer_class(self) -> str:
        return self.class_name or self.base_class

    @property
    def display_title(self) -> str:
        return self.title or f"LoRA for {self.base_class}"


def check_class_name(value: str) -> str:
    if not _CLASS_NAME.match(value):
        raise ValueError("must be CamelCase (a letter, then letters and digits), e.g. ConvTranspose2d")
    if value in LORA_CLASSES:
        raise ValueError(f"{value!r} is already a class of PEFT's LoRA package")
    return value


def check_base_path(value: str) -> str:
    """Static checks of the base layer's dotted path (importability is checked in a subprocess, `base_type.py`)."""
    if not isinstance(value, str) or not _DOTTED.match(value):
        raise ValueError(
            f"must be the dotted path of a class, e.g. torch.nn.ConvTranspose2d (got {value!r})"
            if isinstance(value, str) and len(value) <= 80
            else "must be the dotted path of a class, e.g. torch.nn.ConvTranspose2d"
        )
    parts = value.split(".")
    for part in parts:
        if part.startswith("_"):
            raise ValueError(f"`{part}` is private; name a public class")
        if keyword.iskeyword(part):
            raise ValueError(f"`{part}` is a Python keyword")
    last = parts[-1]
    if not last[:1].isupper():
        raise ValueError(f"`{last}` does not name a class (class names start with a capital letter)")
    if parts[0] == "torch" and last in SUPPORTED_BY_LORA:
        raise ValueError(
            f"PEFT's LoRA already supports {SUPPORTED_BY_LORA[last]} (dispatch_default in tuners/lora/layer.py); "
            "a lora_layer is for base layer types it does not cover"
        )
    if value == TRANSFORMERS_CONV1D or (parts[0] == "transformers" and last == "Conv1D"):
        raise ValueError("PEFT's LoRA already supports transformers' Conv1D (dispatch_default)")
    return value
