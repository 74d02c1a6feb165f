"""A reference interpreter of the spec language, independent of the generated code.

Given a `kind: tuner` spec, a base layer and adapter weight values, it computes what the generated method must
compute: the canonical delta, the merged and unmerged weight, and the forward. It walks the same whitelisted AST
that `scaffold.spec.expressions` produces, node by node, with torch (in float64): no `eval`, no `exec`, no
generated code. It converts between each layer's real weight layout and the canonical (out_features, in_features)
view on its own (docs/spec.md, "Layer dims and the canonical view").

Only tests and `peft-scaffold verify` (in its probe subprocess) use it; generation never imports this module
(it imports torch).

Semantics, for several adapters (PEFT's convention, issue #9):
- each adapter's `delta_weight` (and every `weight` its expressions read) is computed from the base weight as it
  was before any adapter was merged;
- merging adapters in order applies `merge` (default `weight + delta_weight`) to the weight as merged so far;
  unmerging applies `unmerge` (default `weight - delta_weight`) in reverse order;
- with several active adapters, a spec with `merge`/`unmerge` computes what the merged layer computes; otherwise
  each adapter's forward is applied in turn, `base` being the output so far;
- a spec with `mergeable: false` has only a forward (adapters applied in turn, as above): asking for its delta or
  merged weight raises `NotMergeable`.
Dropout is the identity: the oracle describes evaluation mode.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from scaffold.spec.expressions import (
    CREATION_FUNCTIONS,
    F_FUNCTIONS,
    SCALAR_FUNCTIONS,
    TENSOR_METHODS,
    TORCH_FFT_FUNCTIONS,
    TORCH_FUNCTIONS,
    TORCH_LINALG_FUNCTIONS,
    Expression,
    parse_expression,
)
from scaffold.spec.model import InitExpr, MethodSpec, draws_randomly, tensor_value


class OracleUnsupported(Exception):
    """The spec uses something this oracle does not know (a new spec field, say): a gap to close, not a pass."""


class NotMergeable(Exception):
    """The spec says `mergeable: false`: it has no merged weight (nor, without `delta_weight`, a delta)."""


# MethodSpec fields the oracle understands; the first group does not change the math.
_DESCRIPTIVE_FIELDS = frozenset(
    {
        "name", "kind", "class_prefix", "title", "paper", "summary", "math", "when_to_use", "license",
        "target_modules", "peft_test_kwargs",
    }
)  # fmt: skip
_MATH_FIELDS = frozenset(
    {
        "hyperparameters", "derived", "dropout", "weights", "values", "delta_weight", "forward", "merge", "unmerge",
        "layers", "merge_bias", "unmerge_bias", "delta_bias",
        "mergeable",
    }
)  # fmt: skip
KNOWN_SPEC_FIELDS = _DESCRIPTIVE_FIELDS | _MATH_FIELDS
# Weight fields: the oracle takes weight values as given, so initialisers do not matter to it, except an init
# expression (`init: {expr}`), which it evaluates itself from the base weight and the hyperparameters.
KNOWN_WEIGHT_FIELDS = frozenset(
    {"shape", "init", "random_init", "init_by_layer", "trainable", "shared", "dtype", "persistent"}
)

LAYER_TYPES = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d")
# the spec's `forward` key that serves a layer type
FORWARD_KEY = {t: ("Linear" if t == "Conv1D" else t) for t in LAYER_TYPES}

_ALL_DIMS = (
    "in_features", "out_features", "num_embeddings", "embedding_dim", "in_channels", "out_channels", "kernel_numel",
    "groups",
)  # fmt: skip


def unknown_fields(spec: MethodSpec) -> list[str]:
    """Fields of the spec model (and of its weights) the oracle does not know, which this spec sets."""
    found = []
    for name, info in type(spec).model_fields.items():
        if name not in KNOWN_SPEC_FIELDS and getattr(spec, name) != info.get_default(call_default_factory=True):
            found.append(name)
    for weight_name, weight in spec.weights.items():
        for name, info in type(weight).model_fields.items():
            if name not in KNOWN_WEIGHT_FIELDS and getattr(weight, name) != info.get_default(
                call_default_factory=True
            ):
                found.append(f"weights.{weight_name}.{name}")
    return found


# ---------------------------------------------------------------------------------------------------------------------
# The base layer, seen independently of the generated code


@dataclass
class BaseLayer:
    """A base layer's weight and what applying it needs, with its own canonical view."""

    layer_type: str
    weight: torch.Tensor  # real layout
    bias: torch.Tensor | None = None
    stride: tuple[int, ...] = ()
    padding: Any = 0
    dilation: tuple[int, ...] = ()
    groups: int = 1
    kernel_size: tuple[int, ...] = ()

    @classmethod
    def of(cls, layer_type: str, module: Any) -> BaseLayer:
        if layer_type not in LAYER_TYPES:
            raise OracleUnsupported(f"layer type {layer_type!r}")
        weight = module.weight.detach().double().clone()
        bias = None if getattr(module, "bias", None) is None else module.bias.detach().double().clone()
        if layer_type.startswith("Conv") and layer_type != "Conv1D":
            if module.padding_mode != "zeros":
                raise OracleUnsupported(f"padding_mode={module.padding_mode!r}")
            return cls(
                layer_type,
                weight,
                bias,
                tuple(module.stride),
                module.padding,
                tuple(module.dilation),
                module.groups,
                tuple(module.kernel_size),
            )
        if layer_type == "Embedding" and (module.max_norm is not None):
            raise OracleUnsupported("Embedding with max_norm")
        return cls(layer_type, weight, bias)

    # -- the canonical (out_features, in_features) view -----------------------------------------------------------
    def to_canonical(self, weight: torch.Tensor) -> torch.Tensor:
        if self.layer_type == "Linear":
            return weight
        if self.layer_type in ("Conv1D", "Embedding"):  # stored (in, out) / (num_embeddings, embedding_dim)
            return weight.t()
        return weight.reshape(weight.shape[0], -1)  # (out, in / groups, *kernel) -> (out, in / groups * kernel)

    def from_canonical(self, matrix: torch.Tensor) -> torch.Tensor:
        if self.layer_type == "Linear":
            return matrix
        if self.layer_type in ("Conv1D", "Embedding"):
            return matrix.t()
        return matrix.reshape(self.weight.shape)

    @property
    def canonical_weight(self) -> torch.Tensor:
        return self.to_canonical(self.weight)

    def dims(self) -> dict[str, int]:
        out_features, in_features = self.canonical_weight.shape
        dims = {"in_features": int(in_features), "out_features": int(out_features)}
        if self.layer_type == "Embedding":
            dims.update(num_embeddings=int(self.weight.shape[0]), embedding_dim=int(self.weight.shape[1]))
        elif self.layer_type.startswith("Conv") and self.layer_type != "Conv1D":
            dims.update(
                in_channels=int(self.weight.shape[1]) * self.groups,
                out_channels=int(self.weight.shape[0]),
                kernel_numel=math.prod(self.kernel_size),
                groups=self.groups,
            )
        return dims

    # -- applying a canonical matrix the way the layer applies its weight -----------------------------------------
    def apply(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """`layer_op`: x through the canonical `matrix`, no bias."""
        if self.layer_type in ("Linear", "Conv1D"):
            return torch.matmul(x.to(matrix.dtype), matrix.t())
        if self.layer_type == "Embedding":
            return matrix.t()[x]  # rows of the (num_embeddings, embedding_dim) table
        conv = {"Conv1d": F.conv1d, "Conv2d": F.conv2d, "Conv3d": F.conv3d}[self.layer_type]
        kernel = matrix.reshape(matrix.shape[0], -1, *self.kernel_size)
        return conv(x.to(matrix.dtype), kernel, None, self.stride, self.padding, self.dilation, self.groups)

    def output(self, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output with the canonical weight `matrix` (bias included: its own, or `bias`)."""
        result = self.apply(x, matrix)
        bias = self.bias if bias is None else bias
        if bias is None:
            return result
        return self.add_per_channel(result, bias)

    def add_per_channel(self, result: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """`result` plus a vector of out_features, broadcast like a bias."""
        if self.layer_type.startswith("Conv") and self.layer_type != "Conv1D":
            return result + vector.reshape(-1, *([1] * (result.dim() - 2)))
        return result + vector


# ---------------------------------------------------------------------------------------------------------------------
# The expression walker

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.MatMult: operator.matmul,
}
_UNARYOPS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_SCALAR_CALLS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "min": min,
    "max": max,
    "abs": abs,
    "int": int,
    "float": float,
    "ceil": math.ceil,
    "floor": math.floor,
}
_SCALAR_CONSTANTS = {"pi": math.pi, "e": math.e}
assert set(_SCALAR_CALLS) == set(SCALAR_FUNCTIONS)


def _resolve_dotted(node: ast.expr) -> Callable[..., Any] | None:
    """`torch.x`, `torch.linalg.x`, `F.x` -> the function, if whitelisted; None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in ("torch", "F"):
        return None
    dotted = [node.id, *reversed(parts)]
    if dotted[0] == "F" and len(dotted) == 2 and dotted[1] in F_FUNCTIONS:
        return getattr(F, dotted[1])
    if dotted[0] == "torch" and len(dotted) == 2 and dotted[1] in TORCH_FUNCTIONS:
        return getattr(torch, dotted[1])
    if dotted[:2] == ["torch", "linalg"] and len(dotted) == 3 and dotted[2] in TORCH_LINALG_FUNCTIONS:
        return getattr(torch.linalg, dotted[2])
    if dotted[:2] == ["torch", "fft"] and len(dotted) == 3 and dotted[2] in TORCH_FFT_FUNCTIONS:
        return getattr(torch.fft, dotted[2])
    raise OracleUnsupported(f"function `{'.'.join(dotted)}`")


class _Walker:
    def __init__(self, env: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]], scalar: bool) -> None:
        self.env = env
        self.functions = functions
        self.scalar = scalar

    def eval(self, node: ast.expr) -> Any:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise OracleUnsupported(f"`{type(node).__name__}` syntax")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.env:
            return self.env[node.id]
        if self.scalar and node.id in _SCALAR_CONSTANTS:
            return _SCALAR_CONSTANTS[node.id]
        raise OracleUnsupported(f"name `{node.id}` has no value")

    def _BinOp(self, node: ast.BinOp) -> Any:
        return _BINOPS[type(node.op)](self.eval(node.left), self.eval(node.right))

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        return _UNARYOPS[type(node.op)](self.eval(node.operand))

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for operand in node.values:  # Python's short-circuit semantics
            value = self.eval(operand)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def _Compare(self, node: ast.Compare) -> Any:
        left = self.eval(node.left)
        result: Any = True
        for op, comparator in zip(node.ops, node.comparators):
            right = self.eval(comparator)
            value = _CMPOPS[type(op)](left, right)
            result = value if result is True else result & value
            left = right
        return result

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _Tuple(self, node: ast.Tuple) -> Any:
        return tuple(self.eval(elt) for elt in node.elts)

    def _List(self, node: ast.List) -> Any:
        return [self.eval(elt) for elt in node.elts]

    def _Subscript(self, node: ast.Subscript) -> Any:
        return self.eval(node.value)[self.eval(node.slice)]

    def _Slice(self, node: ast.Slice) -> Any:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if part is None else self.eval(part) for part in parts))

    def _Attribute(self, node: ast.Attribute) -> Any:
        if node.attr not in TENSOR_METHODS:
            raise OracleUnsupported(f"attribute `.{node.attr}`")
        return getattr(self.eval(node.value), node.attr)

    def _Call(self, node: ast.Call) -> Any:
        func = node.func
        target: Callable[..., Any]
        if isinstance(func, ast.Name):
            if func.id in self.functions:
                target = self.functions[func.id]
            elif self.scalar and func.id in _SCALAR_CALLS:
                target = _SCALAR_CALLS[func.id]
            else:
                raise OracleUnsupported(f"function `{func.id}`")
        elif isinstance(func, ast.Attribute):
            resolved = _resolve_dotted(func)
            if resolved is not None:
                target = resolved
                if ast.unparse(func) in CREATION_FUNCTIONS:
                    target = _float64(resolved)
            elif func.attr in TENSOR_METHODS:
                target = getattr(self.eval(func.value), func.attr)
            else:
                raise OracleUnsupported(f"method `.{func.attr}()`")
        else:
            raise OracleUnsupported("a call of something unnamed")
        args = [self.eval(arg) for arg in node.args]
        kwargs = {kw.arg: self.eval(kw.value) for kw in node.keywords if kw.arg is not None}
        return target(*args, **kwargs)


def _identity(value: Any) -> Any:
    return value


def _float64(create: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.zeros` and co. in the oracle's precision, unless the expression names a dtype."""

    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dtype", torch.float64)
        return create(*args, **kwargs)

    return call


def _randperm(n: int, seed: int | None = None, **kwargs: Any) -> torch.Tensor:
    """The spec's `randperm(n, seed=s)`: a permutation of range(n) from a generator seeded with `s`."""
    if "seed" in kwargs:
        seed = kwargs.pop("seed")
    if kwargs or seed is None:
        raise OracleUnsupported("randperm takes (n, seed)")
    return torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed)))


def evaluate(expr: Expression, env: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]] = {}) -> Any:
    """The value of a tensor expression with the names in `env` (a tiny interpreter of the whitelisted AST)."""
    return _Walker(env, functions, scalar=False).eval(expr.tree)


def evaluate_scalar(expr: Expression, env: Mapping[str, Any]) -> Any:
    return _Walker(env, {}, scalar=True).eval(expr.tree)


# ---------------------------------------------------------------------------------------------------------------------
# The oracle


@dataclass
class Adapter:
    """One adapter's values: hyperparameters (as in its config) and weights (by spec name, spec shapes; a shared
    weight may be the model's whole tensor, larger than one layer's shape)."""

    hyperparameters: Mapping[str, Any]
    weights: Mapping[str, torch.Tensor]
    # the per-layer booleans of `modules` hyperparameters (`flag`), for this adapter on this layer; default False
    flags: Mapping[str, bool] = field(default_factory=dict)


@dataclass
class Oracle:
    """What a `kind: tuner` spec means, computed directly from its expressions."""

    spec: MethodSpec
    _exprs: dict[str, Expression] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = unknown_fields(self.spec)
        if unknown:
            raise OracleUnsupported(f"spec field(s) unknown to the oracle: {', '.join(unknown)}")
        spec = self.spec
        self._flags = [hp.flag for hp in spec.hyperparameters.values() if hp.flag is not None]
        values = {n for n, hp in spec.hyperparameters.items() if hp.type != "modules"} | set(self._flags)
        names = values | set(spec.derived) | set(spec.weights) | set(_ALL_DIMS) | {"weight"}
        for name, item in spec.values.items():  # named tensors, in order: each may read the earlier ones
            self._exprs[f"values.{name}"] = parse_expression(tensor_value(item).expr, names=names)
            names.add(name)
        tensor_names = names | {"x", "base"} | ({"delta_weight"} if spec.delta_weight or spec.mergeable else set())
        functions = {"dropout", "layer_op"}
        if spec.delta_weight is not None:  # None: the method only updates the bias (a zero weight update)
            self._exprs["delta_weight"] = parse_expression(spec.delta_weight, names=names)
        if spec.merge is not None:
            self._exprs["merge"] = parse_expression(spec.merge, names=names | {"delta_weight"})
        if spec.unmerge is not None:
            self._exprs["unmerge"] = parse_expression(spec.unmerge, names=names | {"delta_weight"})
        for key, text in spec.forward.items():
            self._exprs[f"forward.{key}"] = parse_expression(text, names=tensor_names, functions=functions)
        for field_name, bias_source in (
            ("merge_bias", spec.merge_bias),
            ("unmerge_bias", spec.unmerge_bias),
            ("delta_bias", spec.delta_bias),
        ):
            if bias_source is not None:
                self._exprs[field_name] = parse_expression(bias_source, names=names | {"bias"})
        scalar_names = values | set(_ALL_DIMS)
        for name, source in spec.derived.items():
            self._exprs[f"derived.{name}"] = parse_expression(source, names=scalar_names, tensor=False)
            scalar_names.add(name)
        for name, weight in spec.weights.items():
            # a random draw (HRA's paired init) cannot be recomputed: its value is the adapter's, like a drawn weight's
            if isinstance(weight.init, InitExpr) and not draws_randomly(weight.init.expr):
                self._exprs[f"init.{name}"] = parse_expression(
                    weight.init.expr, names=scalar_names | {"weight"}, functions={"randperm"}
                )
            if weight.shared:  # one tensor for every layer, of which a layer reads the part its shape names
                for index, entry in enumerate(weight.shape):
                    self._exprs[f"shape.{name}.{index}"] = parse_expression(entry, names=scalar_names, tensor=False)

    # -- names ----------------------------------------------------------------------------------------------------
    def _env(self, layer: BaseLayer, adapter: Adapter) -> dict[str, Any]:
        """Every name a tensor expression may read for `adapter` on `layer` (the base weight as it was unmerged)."""
        spec = self.spec
        env: dict[str, Any] = dict(layer.dims())
        for name, hp in spec.hyperparameters.items():
            if hp.type != "modules":  # a selector is read through its flag
                env[name] = adapter.hyperparameters.get(name, hp.default)
        for flag in self._flags:
            env[flag] = bool(adapter.flags.get(flag, False))
        for name in spec.derived:
            env[name] = evaluate_scalar(self._exprs[f"derived.{name}"], env)
        env["weight"] = layer.canonical_weight
        # weights computed by an init expression: evaluated here, from the base weight before any merge (the
        # adapter's own values are not trusted for them)
        computed = {
            name: evaluate(self._exprs[f"init.{name}"], env, {"randperm": _randperm})
            for name in spec.weights
            if f"init.{name}" in self._exprs
        }
        env.pop(spec.dropout or "", None)
        missing = set(spec.weights) - set(adapter.weights) - set(computed)
        if missing:
            raise OracleUnsupported(f"no value for weight(s) {', '.join(sorted(missing))}")
        for name, weight in spec.weights.items():
            value = computed[name] if name in computed else adapter.weights[name].detach()
            if weight.shared:
                # the model's tensor is sized for the largest layer: this layer reads the leading block its own
                # shape (evaluated at its dims) covers
                shape = [int(evaluate_scalar(self._exprs[f"shape.{name}.{i}"], env)) for i in range(len(weight.shape))]
                if any(n > size for n, size in zip(shape, value.shape)):
                    raise ValueError(
                        f"shared weight {name}: {tuple(value.shape)} is smaller than this layer's {shape}"
                    )
                value = value[tuple(slice(0, n) for n in shape)]
            env[name] = value.double() if weight.dtype == "float" else value
        for name in spec.values:
            env[name] = evaluate(self._exprs[f"values.{name}"], env)
        return env

    def computed_weights(self, layer: BaseLayer, adapter: Adapter) -> dict[str, torch.Tensor]:
        """The weights an init expression computes, for `adapter` on `layer` (float ones in float64)."""
        env = self._env(layer, adapter)
        return {name: env[name] for name in self.spec.weights if f"init.{name}" in self._exprs}

    # -- the quantities -------------------------------------------------------------------------------------------
    def _require_mergeable(self) -> None:
        if not self.spec.mergeable:
            raise NotMergeable(f"`{self.spec.name}` has `mergeable: false`: it has no delta or merged weight")

    def delta(self, layer: BaseLayer, adapter: Adapter) -> torch.Tensor:
        """The canonical (out_features, in_features) update."""
        self._require_mergeable()
        return self._delta(self._env(layer, adapter), layer)

    def _delta(self, env: Mapping[str, Any], layer: BaseLayer) -> torch.Tensor:
        if "delta_weight" not in self._exprs:
            return torch.zeros_like(layer.canonical_weight)
        return evaluate(self._exprs["delta_weight"], env)

    def delta_weight(self, layer: BaseLayer, adapter: Adapter) -> torch.Tensor:
        """The update in the base layer's own weight layout (what `get_delta_weight` returns)."""
        return layer.from_canonical(self.delta(layer, adapter))

    def _merge_step(self, which: str, layer: BaseLayer, current: torch.Tensor, adapter: Adapter) -> torch.Tensor:
        self._require_mergeable()
        env = self._env(layer, adapter)
        delta = self._delta(env, layer)
        if which not in self._exprs:
            return current + delta if which == "merge" else current - delta
        # `weight` is the weight merged so far; the values were computed from the unmerged one (they belong to the
        # adapter, like its delta)
        return evaluate(self._exprs[which], {**env, "weight": current, "delta_weight": delta})

    def merged_canonical(self, layer: BaseLayer, adapters: Sequence[Adapter]) -> torch.Tensor:
        self._require_mergeable()
        current = layer.canonical_weight
        for adapter in adapters:
            current = self._merge_step("merge", layer, current, adapter)
        return current

    def merged_weight(self, layer: BaseLayer, adapters: Sequence[Adapter]) -> torch.Tensor:
        """The base weight (real layout) after merging `adapters` in order."""
        return layer.from_canonical(self.merged_canonical(layer, adapters))

    def unmerged_weight(self, layer: BaseLayer, merged: torch.Tensor, adapters: Sequence[Adapter]) -> torch.Tensor:
        """`merged` (real layout, `adapters` merged in order) after unmerging them in reverse order."""
        self._require_mergeable()
        current = layer.to_canonical(merged.detach().double())
        for adapter in reversed(adapters):
            current = self._merge_step("unmerge", layer, current, adapter)
        return layer.from_canonical(current)

    # -- the bias ---------------------------------------------------------------------------------------------------
    def _bias_step(self, which: str, layer: BaseLayer, current: torch.Tensor, adapter: Adapter) -> torch.Tensor:
        env = {**self._env(layer, adapter), "bias": current}
        if "delta_bias" in self._exprs:
            delta = evaluate(self._exprs["delta_bias"], env)
            return current + delta if which == "merge" else current - delta
        if f"{which}_bias" in self._exprs:
            return evaluate(self._exprs[f"{which}_bias"], env)
        return current

    def merged_bias(self, layer: BaseLayer, adapters: Sequence[Adapter]) -> torch.Tensor | None:
        """The base bias after merging `adapters` in order (None: the layer has none)."""
        if layer.bias is None:
            return None
        current = layer.bias
        for adapter in adapters:
            current = self._bias_step("merge", layer, current, adapter)
        return current

    def unmerged_bias(self, layer: BaseLayer, merged: torch.Tensor, adapters: Sequence[Adapter]) -> torch.Tensor:
        current = merged.detach().double()
        for adapter in reversed(adapters):
            current = self._bias_step("unmerge", layer, current, adapter)
        return current

    def forward(self, layer: BaseLayer, x: torch.Tensor, adapters: Sequence[Adapter]) -> torch.Tensor:
        """The adapted layer's output with `adapters` active (evaluation mode)."""
        x = x.detach()
        if x.is_floating_point():
            x = x.double()
        if self.spec.merge is not None and (len(adapters) > 1 or "merge_bias" in self._exprs):
            # non-additive: the active adapters compute what the layer with all of them merged computes (its bias
            # merged too)
            return layer.output(x, self.merged_canonical(layer, adapters), self.merged_bias(layer, adapters))
        result = layer.output(x, layer.canonical_weight)
        key = f"forward.{FORWARD_KEY[layer.layer_type]}"
        for adapter in adapters:
            env = self._env(layer, adapter)
            delta = self._delta(env, layer)
            if "delta_bias" in self._exprs:  # added to the output as it is added to the bias on merge
                result = layer.add_per_channel(result, evaluate(self._exprs["delta_bias"], env))
            if key not in self._exprs:
                result = result + layer.apply(x, delta)
                continue
            expr = self._exprs[key]
            functions: dict[str, Callable[..., Any]] = {"dropout": _identity, "layer_op": layer.apply}
            value = evaluate(expr, {**env, "x": x, "base": result, "delta_weight": delta}, functions)
            result = value if expr.uses("base") else result + value
        return result
