"""The method spec: a pydantic model of the YAML a user writes.

This module checks structure and types (unknown fields, wrong types, bounds that contradict the default).
Cross-field meaning, such as which names an expression may use, is checked when the plan is built
(`scaffold.plan`), where the whole spec is known.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


LayerType = Literal["Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d"]
HyperparameterType = Literal["int", "float", "bool", "str", "enum", "list", "modules"]
InitName = Literal[
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "kaiming_uniform",
    "kaiming_normal",
    "xavier_uniform",
    "xavier_normal",
    "orthogonal",
]

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CLASS_PREFIX = re.compile(r"^[A-Z][A-Za-z0-9]*$")

# Fields every generated config has, so a hyperparameter may not take their names.
CONFIG_FIELDS = frozenset(
    {
        "target_modules", "exclude_modules", "modules_to_save", "init_weights", "fan_in_fan_out",
        "layers_to_transform", "layers_pattern", "peft_type", "task_type", "inference_mode",
        "base_model_name_or_path", "revision", "auto_mapping", "peft_version",
    }
)  # fmt: skip
# Names the generated code itself uses inside expressions and methods.
RESERVED_NAMES = frozenset(
    {
        "x", "base", "weight", "torch", "F", "nn", "math", "self", "config", "adapter_name", "result", "layer_op",
        "in_features", "out_features", "num_embeddings", "embedding_dim", "in_channels", "out_channels",
        "kernel_numel", "groups", "active_adapter", "kwargs", "args", "bias",
    }
)  # fmt: skip


class FieldError(ValueError):
    """A validation error about one sub-field of the model that raises it: `field` is appended to the location."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_TRIPLE_QUOTE = '`"""`'


def check_text(value: str, *, one_line: bool = False, literal: bool = False) -> str:
    """Text the generated code quotes: in docstrings (no `\"\"\"`, no backslash), on one line, or inside a string
    or f-string literal (`literal`: no quotes or braces either)."""
    if '"""' in value or "\\" in value:
        raise ValueError('may not contain `"""` or a backslash (it is copied into generated docstrings)')
    if literal and any(c in value for c in "\"'{}"):
        raise ValueError("may not contain quotes or braces (it is copied into generated string literals)")
    if not all(c.isprintable() or (c in "\n\t" and not one_line) for c in value):
        raise ValueError(
            "must be a single line of printable text" if one_line else "may not contain control characters"
        )
    return value


def check_names(names: dict[str, Any], reserved: frozenset[str] = RESERVED_NAMES) -> None:
    """Keys a spec defines (hyperparameters, weights, values...) become Python names in the generated code;
    `reserved` are the names that code uses itself."""
    for key in names:
        if not isinstance(key, str) or not _IDENTIFIER.match(key) or keyword.iskeyword(key):
            raise FieldError(str(key), f"{key!r} is not a valid identifier")
        if key in ("l", "O", "I"):
            raise FieldError(key, f"{key!r} is an ambiguous name (ruff E741); choose a longer one")
        if key in reserved:
            raise FieldError(key, f"{key!r} is reserved by the generated code")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hyperparameter(_Strict):
    """One config field of the generated method."""

    type: HyperparameterType
    default: Any = None
    help: str = ""
    min: float | None = Field(default=None, description="inclusive lower bound (int/float)")
    max: float | None = Field(default=None, description="inclusive upper bound (int/float)")
    gt: float | None = Field(default=None, description="exclusive lower bound (int/float)")
    lt: float | None = Field(default=None, description="exclusive upper bound (int/float)")
    choices: list[str] | None = Field(default=None, description="allowed values (enum)")
    item: Literal["int", "float", "str"] | None = Field(default=None, description="element type (list)")
    nullable: bool = Field(default=False, description="whether None is allowed (typed Optional[...])")
    flag: str | None = Field(
        default=None,
        description="modules: the per-layer boolean, true on the layers the selector matches (like IA3's "
        "`is_feedforward`), that expressions may read",
    )

    @field_validator("help")
    @classmethod
    def _check_help(cls, value: str) -> str:
        return check_text(value)

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, value: list[str] | None) -> list[str] | None:
        for choice in value or ():
            check_text(choice, one_line=True, literal=True)
        return value

    @model_validator(mode="after")
    def _check(self) -> Hyperparameter:
        numeric = self.type in ("int", "float")
        bounds = {k: getattr(self, k) for k in ("min", "max", "gt", "lt") if getattr(self, k) is not None}
        for key, limit in bounds.items():
            if not math.isfinite(limit):
                raise FieldError(key, f"bound {limit!r} is not a finite number")
        if bounds and not numeric:
            raise FieldError(
                next(iter(bounds)), f"bounds ({', '.join(bounds)}) only apply to int/float, not {self.type}"
            )
        if self.type == "enum":
            if not self.choices:
                raise FieldError("choices", "an enum needs `choices`")
        elif self.choices is not None and self.type != "str":
            raise FieldError("choices", f"`choices` only apply to enum/str, not {self.type}")
        if self.item is not None and self.type != "list":
            raise FieldError("item", "`item` only applies to list")
        if self.type == "list" and self.item is None:
            raise FieldError("item", "a list needs `item` (int, float or str)")
        if self.type == "modules":
            # a module selector, typed like PEFT's `feedforward_modules`: None, a regex or a list of name suffixes
            if self.flag is None:
                raise FieldError("flag", "a `modules` selector needs `flag`: the name of its per-layer boolean")
            if self.default is not None:
                raise FieldError("default", "a `modules` selector defaults to None (it selects no module)")
            check_names({self.flag: None})
            return self
        if self.flag is not None:
            raise FieldError("flag", "`flag` only applies to a `modules` selector")
        _check_default(self)
        return self


def _check_default(hp: Hyperparameter) -> None:
    value = hp.default
    if value is None:
        if hp.type == "list":
            return  # PEFT style: a list field defaults to None, meaning "empty"
        if not hp.nullable:
            raise FieldError("default", "`default` is required (or set `nullable: true` to allow None)")
        return
    if not _has_type(value, hp.type, hp.item):
        raise FieldError("default", f"default {value!r} is not of type {hp.type}")
    if hp.type in ("enum", "str") and hp.choices is not None and value not in hp.choices:
        raise FieldError("default", f"default {value!r} is not one of the choices {hp.choices}")
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, float) and not math.isfinite(item) for item in items):
        raise FieldError("default", f"default {value!r} is not a finite number")
    if '"""' in repr(value):
        raise FieldError("default", f"default {value!r} may not contain {_TRIPLE_QUOTE} (copied into docstrings)")
    reason = bound_violation(hp, value)
    if reason:
        raise FieldError("default", f"default {value!r} is out of range: {reason}")


def _has_type(value: Any, type_: str, item: str | None = None) -> bool:
    if type_ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "bool":
        return isinstance(value, bool)
    if type_ in ("str", "enum"):
        return isinstance(value, str)
    if type_ == "list":
        return isinstance(value, list) and all(_has_type(v, item or "str") for v in value)
    return False


def bound_violation(hp: Hyperparameter, value: float) -> str | None:
    """Why `value` breaks the hyperparameter's bounds, or None."""
    if hp.min is not None and value < hp.min:
        return f"must be >= {hp.min:g}"
    if hp.max is not None and value > hp.max:
        return f"must be <= {hp.max:g}"
    if hp.gt is not None and value <= hp.gt:
        return f"must be > {hp.gt:g}"
    if hp.lt is not None and value >= hp.lt:
        return f"must be < {hp.lt:g}"
    return None


class InitCall(_Strict):
    """An initialiser with arguments, e.g. `{name: normal, std: "1 / r"}`. Arguments are scalar expressions."""

    name: InitName
    mean: str | float | None = None
    std: str | float | None = None
    a: str | float | None = None
    b: str | float | None = None
    value: str | float | None = None
    gain: str | float | None = None


Init = InitName | InitCall


# Random draws an init expression may make, named like the initialisers: `kaiming_uniform(*shape, a=...)`,
# `normal(*shape, mean=..., std=...)`; each draws a new fp32 tensor from torch's global RNG (as nn.init does).
RANDOM_DRAWS = {"kaiming_uniform": ("a",), "normal": ("mean", "std")}


def draws_randomly(source: str) -> bool:
    """Whether an init expression calls one of the random draws (then `random_init` may replace it)."""
    try:
        tree = ast.parse(str(source), mode="eval")
    except SyntaxError:
        return False
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in RANDOM_DRAWS for n in ast.walk(tree)
    )


class InitExpr(_Strict):
    """A tensor computed once, when the adapter is created, e.g. `{expr: "torch.linalg.norm(weight, dim=0)"}`:
    a tensor expression over the base weight (`weight`, canonical view), hyperparameters, derived values and dims,
    which may call `randperm(n, seed=...)` (a seeded permutation, for index buffers) and the random draws
    `kaiming_uniform(*shape, a=...)` / `normal(*shape, mean=..., std=...)` (then `random_init` may replace it)."""

    expr: str = Field(description="tensor expression evaluated once in update_layer")


class Weight(_Strict):
    """An adapter tensor, one per adapter and per adapted layer."""

    shape: list[int | str] = Field(min_length=1, max_length=4)
    init: Init | InitExpr = Field(description="used when init_weights=True: the adapter must start as a no-op")
    random_init: Init | None = Field(
        default=None,
        description="used when init_weights=False (tests rely on it to get a non-trivial adapter); "
        "defaults to kaiming_uniform for 2-D and larger, normal for 1-D",
    )
    init_by_layer: dict[LayerType, Init] = Field(
        default_factory=dict,
        description="identity init for specific layer types (e.g. LoRA's embeddings: A zeros, B normal)",
    )
    trainable: bool = Field(default=True, description="False keeps it as a frozen buffer (saved with the adapter)")
    shared: bool = Field(
        default=False,
        description="one tensor per adapter held by the model, sized for the largest targeted layer; each layer uses "
        "the slice its dims need. Frozen (the default for shared weights): initialised from the config's "
        "`projection_prng_key` (VeRA-style); `trainable: true`: a parameter trained by every layer (VB-LoRA-style)",
    )
    dtype: Literal["float", "long"] = Field(
        default="float", description="`long` for index buffers (frozen, computed by an init expression)"
    )
    persistent: bool = Field(
        default=True, description="False: a frozen buffer left out of the state dict (recomputed from the config)"
    )

    @property
    def trains(self) -> bool:
        """Whether the weight is trained: a shared weight only with `trainable: true` written out."""
        return self.trainable and (not self.shared or "trainable" in self.model_fields_set)

    @model_validator(mode="after")
    def _check_shared(self) -> Weight:
        if not self.shared:
            return self
        # frozen unless `trainable: true` is written out: by default a shared weight is a random projection, as in
        # VeRA; a trainable one is a parameter the model holds once, as VB-LoRA's vector bank
        if self.random_init is not None:
            raise FieldError("random_init", "a shared weight is always initialised with `init` from the PRNG key")
        if self.init_by_layer:
            raise FieldError("init_by_layer", "a shared weight is one tensor for all layers; it has a single `init`")
        if isinstance(self.init, InitExpr):
            raise FieldError(
                "init", "a shared weight is drawn from the PRNG key with an initialiser, not an expression"
            )
        if self.dtype != "float":
            raise FieldError("dtype", "a shared weight is a float tensor drawn from the PRNG key")
        if not self.persistent:
            raise FieldError("persistent", "whether shared weights are saved is the config's `save_projection`")
        return self

    @model_validator(mode="after")
    def _check_computed(self) -> Weight:
        computed = isinstance(self.init, InitExpr)
        if isinstance(self.init, InitExpr) and self.random_init is not None and not draws_randomly(self.init.expr):
            # a drawing one (HRA's paired init) may be replaced by a plain draw with init_weights=False
            raise FieldError("random_init", "an init expression is used whatever `init_weights` is; remove this")
        if computed and self.init_by_layer:
            raise FieldError("init_by_layer", "an init expression already sees the layer (its dims, `weight`)")
        if self.dtype == "long" and (self.trainable or not computed):
            raise FieldError("dtype", "a `long` weight is an index buffer: `trainable: false` with an `init: {expr}`")
        if not self.persistent and (self.trainable or not computed):
            raise FieldError(
                "persistent", "only a frozen buffer computed by an `init: {expr}` can be left out of the state dict"
            )
        return self


class TensorValue(_Strict):
    """A named intermediate tensor (`values:`), computed from the adapter's weights, not from the input. Shared by
    the spec kinds: `kind: tuner` and `kind: lora_variant` (which also caches `constant` ones)."""

    expr: str = Field(description="tensor expression")
    constant: bool = Field(
        default=False,
        description="treated as a constant: computed without gradient, cached while no gradient is needed, "
        "stored at merge time for unmerge (lora_variant only)",
    )


def tensor_value(item: str | TensorValue) -> TensorValue:
    """A `values:` entry, written either as the bare expression or as a mapping."""
    return TensorValue(expr=item) if isinstance(item, str) else item


class MethodSpec(_Strict):
    """A PEFT method described in a few lines of YAML; see docs/spec.md."""

    name: str = Field(description="lowercase identifier: PeftType.NAME, prefix `name_`, package tuners/name")
    kind: Literal["tuner"] = "tuner"
    class_prefix: str | None = Field(default=None, description="CamelCase class prefix; defaults to Name")
    title: str | None = None
    paper: str | None = None
    summary: str = ""
    when_to_use: str = Field(default="", description="when to prefer the method over LoRA (docs page, markdown)")
    math: str | None = Field(default=None, description="LaTeX of the update, for docs")
    hyperparameters: dict[str, Hyperparameter] = Field(default_factory=dict)
    derived: dict[str, str | float] = Field(
        default_factory=dict, description="per-adapter scalars computed from hyperparameters, in order"
    )
    dropout: str | None = Field(default=None, description="float hyperparameter used as dropout on the input")
    weights: Annotated[dict[str, Weight], Field(min_length=1)]
    values: dict[str, str | TensorValue] = Field(
        default_factory=dict,
        description="named tensors computed once per call from the weights (in order, each may read earlier ones); "
        "delta_weight, forward, merge and unmerge may read them",
    )
    delta_weight: str | None = Field(
        default=None,
        description="the update as an (out_features, in_features) tensor expression; required unless `delta_bias` "
        "is given (a method that only updates the bias) or `mergeable: false`",
    )
    forward: dict[LayerType, str] = Field(
        default_factory=dict, description="faster forward per layer type; default: base output + x through delta"
    )
    merge: str | None = Field(default=None, description="new weight from `weight` (default: weight + delta)")
    unmerge: str | None = Field(default=None, description="inverse of `merge` (default: weight - delta)")
    merge_bias: str | None = Field(
        default=None, description="new bias from `bias` with a scaling merge (`bias * v`; default: bias unchanged)"
    )
    unmerge_bias: str | None = Field(default=None, description="inverse of `merge_bias` (`bias / v`)")
    delta_bias: str | None = Field(
        default=None, description="an additive bias update, shape (out_features,): added in forward and on merge"
    )
    mergeable: bool = Field(
        default=True,
        description="false: the forward is not a weight update (e.g. nonlinear in the base output), merging raises",
    )
    layers: list[LayerType] = Field(default_factory=lambda: list[LayerType](["Linear"]), min_length=1)
    peft_test_kwargs: dict[LayerType, dict[str, Any]] = Field(
        default_factory=dict,
        description="extra config kwargs for the rows added to PEFT's test matrix, per layer type",
    )
    target_modules: Literal["lora"] | dict[str, list[str]] = Field(
        default="lora", description='"lora" to reuse LoRA\'s defaults, or model_type -> module names'
    )
    license: Literal["Apache-2.0", "MIT"] = Field(
        default="Apache-2.0", description="licence of the package `new --plugin` writes (PEFT's own by default)"
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"{value!r} contains a path separator")
        if keyword.iskeyword(value) or keyword.issoftkeyword(value):
            raise ValueError(f"{value!r} is a Python keyword")
        if not value.isidentifier():
            raise ValueError(f"{value!r} is not a Python identifier")
        if not _METHOD_NAME.match(value) or value.endswith("_"):
            raise ValueError(f"{value!r} must be lowercase letters, digits and `_`, not ending in `_`")
        from scaffold.spec.known_methods import PEFT_METHODS

        if value in PEFT_METHODS:
            raise ValueError(f"{value!r} collides with PEFT's existing method `{value}`")
        return value

    @field_validator("title")
    @classmethod
    def _check_title(cls, value: str | None) -> str | None:
        return value if value is None else check_text(value, one_line=True, literal=True)

    @field_validator("paper", "summary", "when_to_use")
    @classmethod
    def _check_prose(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value is None else check_text(value, one_line=info.field_name == "paper")

    @field_validator("class_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is not None and not _CLASS_PREFIX.match(value):
            raise ValueError(f"{value!r} must be a CamelCase identifier")
        return value

    @field_validator("values")
    @classmethod
    def _check_values(cls, value: dict[str, str | TensorValue]) -> dict[str, str | TensorValue]:
        for key, item in value.items():
            if isinstance(item, TensorValue) and item.constant:
                raise FieldError(
                    f"{key}.constant",
                    "a tuner's values are computed on every call; `constant` is for lora_variant specs",
                )
        return value

    @field_validator("hyperparameters", "derived", "weights", "values")
    @classmethod
    def _check_identifiers(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_names(value)
        for key in value:
            if key in CONFIG_FIELDS:
                raise FieldError(key, f"{key!r} is a field every generated config already has")
        return value

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("layer types are listed more than once")
        return value

    @model_validator(mode="after")
    def _check_cross(self) -> MethodSpec:
        sections: dict[str, dict[str, Any]] = {
            "hyperparameters": self.hyperparameters,
            "derived": self.derived,
            "weights": self.weights,
            "values": self.values,
        }
        seen: dict[str, str] = {}
        for section, names in sections.items():
            for name in names:
                if name in seen:
                    raise FieldError(f"{section}.{name}", f"`{name}` is already a name in `{seen[name]}`")
                seen[name] = section
        for hp_name, hp in self.hyperparameters.items():
            if hp.flag is not None:
                if hp.flag in seen or hp.flag in CONFIG_FIELDS:
                    where = f"hyperparameters.{hp_name}.flag"
                    raise FieldError(where, f"`{hp.flag}` is already a name ({seen.get(hp.flag, 'reserved')})")
                seen[hp.flag] = f"hyperparameters.{hp_name}.flag"
        for layer_type, kwargs in self.peft_test_kwargs.items():
            unknown = set(kwargs) - set(self.hyperparameters)
            if unknown:
                raise FieldError(
                    f"peft_test_kwargs.{layer_type}",
                    f"unknown hyperparameter(s) {', '.join(sorted(map(repr, unknown)))}",
                )
            for key, value in kwargs.items():  # they are written into PEFT's test matrix: same rules as a default
                hp = self.hyperparameters[key]
                try:
                    if value is None and not (hp.nullable or hp.type == "list"):
                        raise FieldError("", "None is not allowed (the hyperparameter is not nullable)")
                    _check_default(hp.model_copy(update={"default": value}))
                except FieldError as exc:
                    where = f"peft_test_kwargs.{layer_type}.{key}"
                    raise FieldError(where, str(exc).removeprefix("default ")) from None
        first_name, first = next(iter(self.weights.items()))
        if first.dtype != "float":
            raise FieldError(f"weights.{first_name}.dtype", "the first weight gives the adapter its dtype: a float")
        if not self.mergeable:
            for field_name in ("merge", "unmerge", "merge_bias", "unmerge_bias", "delta_bias"):
                if getattr(self, field_name) is not None:
                    raise FieldError(field_name, "a method with `mergeable: false` cannot be merged; remove it")
        if (self.merge is None) != (self.unmerge is None):
            missing = "unmerge" if self.unmerge is None else "merge"
            raise FieldError(missing, "`merge` and `unmerge` must be given together")
        if self.mergeable and self.delta_weight is None:
            if self.delta_bias is None:
                raise FieldError(
                    "delta_weight",
                    "is required (a method that only updates the bias gives `delta_bias`; one whose forward is not "
                    "a weight update says `mergeable: false`)",
                )
            if self.merge is not None:
                raise FieldError("merge", "a method without `delta_weight` leaves the weight alone: remove it")
        if (self.merge_bias is None) != (self.unmerge_bias is None):
            missing = "unmerge_bias" if self.unmerge_bias is None else "merge_bias"
            raise FieldError(missing, "`merge_bias` and `unmerge_bias` must be given together")
        return self

    @property
    def class_name(self) -> str:
        return self.class_prefix or self.name.replace("_", " ").title().replace(" ", "")
