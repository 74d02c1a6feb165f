"""Plan a LoRA variant: check every expression against the names its context offers, and compute each code fragment
the template prints (the template itself has no method-specific logic).

A spec writes its math once, against a canonical view of each LoRA layer:

    weight        the base weight as an (out_features, in_features) matrix
    lora_A        LoRA's A as an (r, in_features) matrix; lora_B as (out_features, r)
    delta_weight  lora_B @ lora_A * scaling
    x, result     the layer input, and the output so far (the base layer's, plus earlier adapters')
    base          the base layer's output for dropout(x), without its bias (reused from `result` when dropout is
                  the identity, as PEFT's DoRA does)
    lora_A(h), lora_B(h), dropout(h), per_output(v), layer_op(h, W)
                  LoRA's own modules, its dropout, a per-output-feature vector shaped to broadcast over the layer's
                  output, and `W` applied the way the base layer applies its weight

`_VIEWS` says how each LoRA layer class (Linear, Embedding, Conv1d/2d/3d) spells these.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_variant.spec import LoraVariantSpec
from scaffold.spec.expressions import Expression, ExpressionError, parse_expression


# ---------------------------------------------------------------------------------------------------------------------
# How each LoRA layer class spells the canonical names. `{a}` is the adapter-name variable; ARG0/ARG1 are the
# arguments of a spec-level call.


@dataclass(frozen=True)
class LayerView:
    layer: str  # PEFT's LoRA layer class
    weight: str  # the canonical base weight
    from_layout: str  # ARG0 (a weight in the base layer's layout) -> canonical
    to_layout: str  # ARG0 (canonical) -> the layout of `orig_weight`
    lora_A_param: str  # the tensors behind lora_A / lora_B (what a cached value depends on)
    lora_B_param: str
    lora_A: str  # canonical matrices
    lora_B: str
    lora_A_call: str
    lora_B_call: str
    layer_op: str
    per_output: str
    base_reuse: str | None  # `base` from `result` (and `bias`); None: this layer has no dropout (always reused)
    uses_bias: bool
    has_dropout: bool
    check_init: tuple[str, ...] = ()  # lines refusing layers the canonical view does not cover


def _conv(n: int) -> LayerView:
    ones = ", ".join(["1"] * n)
    return LayerView(
        layer=f"Conv{n}d",
        weight="dequantize_module_weight(base_layer).flatten(1)",
        from_layout="ARG0.flatten(1)",
        to_layout="ARG0.reshape(orig_weight.shape)",
        lora_A_param="module.lora_A[{a}].weight",
        lora_B_param="module.lora_B[{a}].weight",
        lora_A="module.lora_A[{a}].weight.flatten(1)",
        lora_B="module.lora_B[{a}].weight.flatten(1)",
        lora_A_call="module.lora_A[{a}](ARG0)",
        lora_B_call="module.lora_B[{a}](ARG0)",
        layer_op=(
            f"F.conv{n}d(ARG0, ARG1.reshape(base_layer.weight.shape), stride=base_layer.stride, "
            "padding=base_layer.padding, dilation=base_layer.dilation, groups=base_layer.groups)"
        ),
        per_output=f"ARG0.view(1, -1, {ones})",
        base_reuse=f"result if bias is None else result - bias.view(1, -1, {ones})",
        uses_bias=True,
        has_dropout=True,
        check_init=(
            "if base_layer.groups > 1:",
            '    raise ValueError(f"{type(module).__name__} layers with groups > 1 are not supported by {TITLE}.")',
        ),
    )


_VIEWS: dict[str, LayerView] = {
    "Linear": LayerView(
        layer="Linear",
        weight="transpose(dequantize_module_weight(base_layer), module.fan_in_fan_out)",
        from_layout="transpose(ARG0, module.fan_in_fan_out)",
        to_layout="transpose(ARG0, module.fan_in_fan_out)",
        lora_A_param="module.lora_A[{a}].weight",
        lora_B_param="module.lora_B[{a}].weight",
        lora_A="module.lora_A[{a}].weight",
        lora_B="module.lora_B[{a}].weight",
        lora_A_call="module.lora_A[{a}](ARG0)",
        lora_B_call="module.lora_B[{a}](ARG0)",
        layer_op="F.linear(ARG0, ARG1)",
        per_output="ARG0",
        base_reuse="result if bias is None else result - bias",
        uses_bias=True,
        has_dropout=True,
    ),
    "Embedding": LayerView(
        layer="Embedding",
        weight="dequantize_module_weight(base_layer).T",
        from_layout="ARG0.T",
        to_layout="ARG0.T",
        lora_A_param="module.lora_embedding_A[{a}]",
        lora_B_param="module.lora_embedding_B[{a}]",
        lora_A="module.lora_embedding_A[{a}]",
        lora_B="module.lora_embedding_B[{a}]",
        lora_A_call="module._embed(ARG0, module.lora_embedding_A[{a}].T)",
        lora_B_call="ARG0 @ module.lora_embedding_B[{a}].T",
        layer_op="module._embed(ARG0, ARG1.T)",
        per_output="ARG0",
        base_reuse=None,
        uses_bias=False,
        has_dropout=False,
    ),
    "Conv1d": _conv(1),
    "Conv2d": _conv(2),
    "Conv3d": _conv(3),
}

# Names every expression may read (besides the spec's weights and values), and those only `forward` may read.
COMMON_NAMES = frozenset({"weight", "lora_A", "lora_B", "delta_weight", "scaling", "r", "in_features", "out_features"})
FORWARD_NAMES = frozenset({"x", "result", "base"})
FORWARD_FUNCTIONS = frozenset({"lora_A", "lora_B", "dropout", "per_output", "layer_op"})
SHAPE_NAMES = frozenset({"in_features", "out_features", "r"})
_CALL_ARITY = {"lora_A": 1, "lora_B": 1, "dropout": 1, "per_output": 1, "layer_op": 2}


# ---------------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class WeightPlan:
    name: str
    attr: str  # the layer attribute holding it per adapter: lora_<variant>_<weight>
    shape: list[str]  # code, in `init`
    init: Expression
    trainable: bool
    container: str  # nn.ParameterDict: frozen weights are parameters too (with requires_grad=False), which PEFT's
    # low_cpu_mem_usage loading handles (it creates them on the meta device and assigns the saved ones)
    names_tuple: str  # "adapter_layer_names" (trained for the active adapters) / "other_param_names" (frozen)


@dataclass
class ValuePlan:
    name: str
    expr: Expression
    constant: bool
    getter: str = ""  # the staticmethod computing a constant: get_<name>


@dataclass
class VariantClassPlan:
    layer: str  # PEFT's LoRA layer class, e.g. "Linear"
    class_name: str  # e.g. "RefDoraLinearVariant"
    init: list[str]
    getters: list[tuple[str, str, list[str]]]  # (method name, docstring, body lines)
    forward: list[str]
    merge: list[str] | None
    unmerge: list[str] | None


@dataclass
class VariantPlan:
    spec: LoraVariantSpec
    name: str
    switch: str  # use_<name>
    title: str
    class_prefix: str
    module: str  # the module name inside peft/tuners/lora: <name>
    weights: list[WeightPlan]
    values: list[ValuePlan]
    classes: list[VariantClassPlan]
    help: str
    imports_math: bool
    imports_functional: bool
    imports_transpose: bool
    imports_dequantize: bool
    uses_constant_cache: bool
    replays_merged: bool  # PEFT >= 0.21: constants at merge time come from `module._unmerged_base_weight`

    @property
    def layer_classes(self) -> list[str]:
        return [c.layer for c in self.classes]

    @property
    def mapping_entries(self) -> dict[str, str]:
        """LoRA layer class -> the variant class its `lora_variants` mapping gets for `(use_<name>,)`."""
        return {c.layer: c.class_name for c in self.classes}


def build_plan(spec: LoraVariantSpec, source: str = "spec", *, replays_merged: bool = True) -> VariantPlan:
    return _Planner(spec, source, replays_merged).build()


class _Planner:
    def __init__(self, spec: LoraVariantSpec, source: str, replays_merged: bool) -> None:
        self.spec = spec
        self.source = source
        self.replays_merged = replays_merged

    def fail(self, where: str, reason: str) -> ScaffoldError:
        return ScaffoldError(f"{self.source}: {where}", reason)

    def parse(
        self, where: str, text: Any, names: Iterable[str], functions: Iterable[str] = (), tensor: bool = True
    ) -> Expression:
        try:
            expr = parse_expression(text, names=names, functions=functions, tensor=tensor)
        except ExpressionError as exc:
            raise self.fail(where, str(exc)) from None
        _check_arity(self, where, expr)
        return expr

    # -- build ------------------------------------------------------------------------------------------------
    def build(self) -> VariantPlan:
        spec = self.spec
        weight_names = list(spec.weights)
        value_names = list(spec.values)

        self.values: dict[str, ValuePlan] = {}
        for name in value_names:
            value = spec.value(name)
            names = COMMON_NAMES | set(weight_names) | (set(value_names) - {name})
            expr = self.parse(f"values.{name}", value.expr, names)
            self.values[name] = ValuePlan(name, expr, value.constant, f"get_{name}" if value.constant else "")
        self.values = {name: self.values[name] for name in self.value_order()}

        self.weights: dict[str, WeightPlan] = {}
        for index, (name, weight) in enumerate(spec.weights.items()):
            shape = [self.shape_entry(f"weights.{name}.shape[{i}]", e) for i, e in enumerate(weight.shape)]
            free_values = [v for v in value_names if not self.depends_on_weights(self.values[v].expr)]
            names = COMMON_NAMES | set(weight_names[:index]) | set(free_values)
            init = self.parse(f"weights.{name}.init", weight.init, names)
            attr = f"lora_{spec.name}_{name}"
            self.weights[name] = WeightPlan(
                name=name,
                attr=attr,
                shape=shape,
                init=init,
                trainable=weight.trainable,
                container="nn.ParameterDict({})",
                names_tuple="adapter_layer_names" if weight.trainable else "other_param_names",
            )

        all_names = COMMON_NAMES | set(weight_names) | set(value_names)
        self.forwards = {
            layer: self.parse(
                "forward" if isinstance(spec.forward, str) else f"forward.{layer}",
                spec.forward_for(layer),
                all_names | FORWARD_NAMES,
                FORWARD_FUNCTIONS,
            )
            for layer in spec.layers
        }
        self.merge = self.unmerge = None
        if spec.merge is not None and spec.unmerge is not None:
            self.merge = self.parse("merge", spec.merge, all_names)
            self.unmerge = self.parse("unmerge", spec.unmerge, all_names)
            for where, expr in (("merge", self.merge), ("unmerge", self.unmerge)):
                if "weight" not in expr.names:
                    raise self.fail(where, "must compute the new weight from `weight`")
            for name in self.needed_values(self.unmerge.names):
                planned = self.values[name]
                reads = self.direct_names(planned.expr.names, self.needed_values(planned.expr.names), getters=False)
                if not planned.constant and "weight" in reads:
                    raise self.fail(
                        f"values.{name}",
                        "reads `weight` and is used by `unmerge`, which only sees the merged weight: mark it "
                        "`constant: true` so that it is computed at merge time and kept for unmerge",
                    )

        classes = [self.variant_class(layer) for layer in spec.layers]
        code = "\n".join(
            line
            for c in classes
            for lines in (c.init, c.forward, c.merge or [], c.unmerge or [], *[g[2] for g in c.getters])
            for line in lines
        )
        return VariantPlan(
            spec=spec,
            name=spec.name,
            switch=spec.switch,
            title=spec.title or spec.class_name,
            class_prefix=spec.class_name,
            module=spec.name,
            weights=list(self.weights.values()),
            values=list(self.values.values()),
            classes=classes,
            help=spec.help or spec.summary or f"Enable the {spec.title or spec.class_name} LoRA variant.",
            imports_math=re.search(r"\bmath\.", code) is not None,
            imports_functional=re.search(r"\bF\.", code) is not None,
            imports_transpose=re.search(r"\btranspose\(", code) is not None,
            imports_dequantize="dequantize_module_weight(" in code,
            uses_constant_cache="_constant(" in code,
            replays_merged=self.replays_merged,
        )

    def shape_entry(self, where: str, entry: int | str) -> str:
        if isinstance(entry, int):
            return str(entry)
        expr = self.parse(where, entry, SHAPE_NAMES, tensor=False)
        names = {
            "in_features": "module.in_features",
            "out_features": "module.out_features",
            "r": "module.r[adapter_name]",
        }
        calls = {name: f"math.{name}(ARG0)" for name in ("sqrt", "log", "exp", "ceil", "floor")}
        return render(expr, {**names, "pi": "math.pi", "e": "math.e"}, calls)

    # -- dependencies -----------------------------------------------------------------------------------------
    def value_order(self) -> list[str]:
        """The values in an order where each comes after those it reads (the spec's order where it can);
        a cycle is an error."""
        order: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                cycle = " -> ".join([*visiting[visiting.index(name) :], name])
                raise self.fail(f"values.{name}", f"values read each other in a cycle ({cycle})")
            visiting.append(name)
            for dep in sorted(self.values[name].expr.names & set(self.values)):
                visit(dep)
            visiting.pop()
            order.append(name)

        for name in self.values:
            visit(name)
        return order

    def value_closure(self, names: Iterable[str]) -> list[str]:
        """The values `names` need (directly or through other values), in spec order."""
        needed: set[str] = set()
        todo = [n for n in names if n in self.values]
        while todo:
            name = todo.pop()
            if name in needed:
                continue
            needed.add(name)
            todo.extend(n for n in self.values[name].expr.names if n in self.values)
        return [n for n in self.values if n in needed]

    def closure_names(self, names: Iterable[str]) -> set[str]:
        """`names` plus every name read by the values they need."""
        out = set(names)
        for value in self.value_closure(names):
            out |= self.values[value].expr.names
        return out

    def depends_on_weights(self, expr: Expression) -> bool:
        return bool(self.closure_names(expr.names) & set(self.spec.weights))

    # -- code -------------------------------------------------------------------------------------------------
    def needed_values(self, names: Iterable[str]) -> list[str]:
        """The values a computation reading `names` binds, in spec order. A constant is obtained whole (from its
        getter, the forward cache or what merge stored), so the values it reads are not needed here."""
        needed: set[str] = set()
        todo = [n for n in names if n in self.values]
        while todo:
            name = todo.pop()
            if name in needed:
                continue
            needed.add(name)
            if not self.values[name].constant:
                todo.extend(n for n in self.values[name].expr.names if n in self.values)
        return [n for n in self.values if n in needed]

    def direct_names(self, names: Iterable[str], values: list[str], getters: bool) -> set[str]:
        """The non-value names to bind: `names`, those the non-constant `values` read, and `weight` when constants
        come from their getters (which take the weight)."""
        out = set(names)
        for value in values:
            plan = self.values[value]
            if not plan.constant:
                out |= plan.expr.names
            elif getters:
                out.add("weight")
        return out - set(self.values)

    def bind_direct(self, view: LayerView, a: str, names: set[str], weight_code: str | None) -> list[str]:
        """Lines binding the canonical names in `names` as locals (`weight` only when `weight_code` is given)."""
        names = set(names)
        if "delta_weight" in names:
            names |= {"lora_A", "lora_B", "scaling"}
        lines = []
        if "lora_A" in names:
            lines.append(f"lora_A = {view.lora_A.format(a=a)}")
        if "lora_B" in names:
            lines.append(f"lora_B = {view.lora_B.format(a=a)}")
        if "scaling" in names:
            lines.append(f"scaling = module.scaling[{a}]")
        if "r" in names:
            lines.append(f"r = module.r[{a}]")
        for dim in ("in_features", "out_features"):
            if dim in names:
                lines.append(f"{dim} = module.{dim}")
        for name, weight in self.weights.items():
            if name in names:
                lines.append(f"{name} = module.{weight.attr}[{a}]")
        if "weight" in names and weight_code is not None:
            lines.append(f"weight = {weight_code}")
        if "delta_weight" in names:
            lines.append("delta_weight = lora_B @ lora_A * scaling")
        return lines

    def bind_values(self, view: LayerView, class_name: str, a: str, values: list[str], constants: str) -> list[str]:
        """Lines binding `values`. Constants come from their getter ("getter"), the forward cache ("cache") or
        what merge stored ("merged")."""
        lines = []
        for value in values:
            plan = self.values[value]
            if not plan.constant:
                lines.append(f"{value} = {render(plan.expr, {}, {})}")
            elif constants == "getter":
                lines.append(f"{value} = {class_name}.{plan.getter}(module, {a}, weight)")
            elif constants == "merged":
                lines.append(f'{value} = module._cache_pop(f"{{{a}}}-{self.spec.name}-{value}-merged")')
            else:
                lines.extend(self.cached_constant(view, class_name, a, plan))
        return lines

    def canonical_weight(self, view: LayerView, a: str) -> str:
        """The canonical base weight in the adapter's dtype (what `forward` computes with)."""
        return f"{view.weight}.to({view.lora_A_param.format(a=a)}.dtype)"

    def variant_class(self, layer: str) -> VariantClassPlan:
        view = _VIEWS[layer]
        class_name = f"{self.spec.class_name}{layer}Variant"
        getters = [
            (value.getter, self.getter_doc(value), _with_base_layer(self.getter_lines(view, class_name, value)))
            for value in self.values.values()
            if value.constant
        ]
        merge = unmerge = None
        if self.merge is not None:
            merge = _with_base_layer(self.merge_lines(view, class_name))
            unmerge = _with_base_layer(self.unmerge_lines(view, class_name))
        return VariantClassPlan(
            layer=layer,
            class_name=class_name,
            init=_with_base_layer(self.init_lines(view, class_name)),
            getters=getters,
            forward=_with_base_layer(self.forward_lines(view, class_name, self.forwards[layer])),
            merge=merge,
            unmerge=unmerge,
        )

    def getter_doc(self, value: ValuePlan) -> str:
        return (
            f"`{value.name}` for the canonical base `weight`, as a constant (no gradient): `{_doc(value.expr.source)}`"
        )

    def cached_constant(self, view: LayerView, class_name: str, a: str, value: ValuePlan) -> list[str]:
        reads = self.closure_names(value.expr.names)
        stamp = []
        if "weight" in reads:
            stamp.append("base_layer.weight")
        if reads & {"lora_A", "delta_weight"}:
            stamp.append(view.lora_A_param.format(a=a))
        if reads & {"lora_B", "delta_weight"}:
            stamp.append(view.lora_B_param.format(a=a))
        stamp += [f"module.{w.attr}[{a}]" for n, w in self.weights.items() if n in reads]
        if reads & {"scaling", "delta_weight"}:
            stamp.append(f"module.scaling[{a}]")
        return [
            f"{value.name} = _constant(",
            "    module,",
            f'    f"{{{a}}}-{self.spec.name}-{value.name}",',
            f"    _stamp({', '.join(stamp)}),",
            f"    lambda: {class_name}.{value.getter}(module, {a}, {self.canonical_weight(view, a)}),",
            ")",
        ]

    def getter_lines(self, view: LayerView, class_name: str, value: ValuePlan) -> list[str]:
        a = "adapter_name"
        values = self.needed_values(value.expr.names)
        direct = self.direct_names(value.expr.names, values, getters=True) - {"weight"}
        lines = ["with torch.no_grad():"]
        body = self.bind_direct(view, a, direct, None) + self.bind_values(view, class_name, a, values, "getter")
        lines += ["    " + line for line in body]
        lines.append(f"    return {render(value.expr, {}, {})}")
        return lines

    def init_lines(self, view: LayerView, class_name: str) -> list[str]:
        a = "adapter_name"
        lines = [line.replace("{TITLE}", self.spec.title or self.spec.class_name) for line in view.check_init]
        for weight in self.weights.values():
            lines += [
                f'if not hasattr(module, "{weight.attr}"):',
                "    # the first adapter of this variant on this layer: register the container of its weights",
                f"    module.{weight.attr} = {weight.container}",
                f'    module.{weight.names_tuple} = module.{weight.names_tuple}[:] + ("{weight.attr}",)',
            ]
        if not self.weights:
            return lines
        names: set[str] = set()
        for weight in self.weights.values():
            names |= weight.init.names
        names -= set(self.weights)  # earlier weights are the tensors just created
        values = self.needed_values(names)
        direct = self.direct_names(names, values, getters=True)
        lora_a = view.lora_A_param.format(a=a)
        body = self.bind_direct(view, a, direct, f"{view.weight}.to({lora_a}.device)")
        body += self.bind_values(view, class_name, a, values, "getter")
        lines.append("with torch.no_grad():")
        lines += ["    " + line for line in body]
        for weight in self.weights.values():
            shape = ", ".join(weight.shape)
            init = render(weight.init, {}, {})
            lines.append(f"    {weight.name} = torch.as_tensor({init}).to({lora_a}).expand({shape}).clone()")
        for weight in self.weights.values():
            frozen = "" if weight.trainable else ", requires_grad=False"
            lines.append(f"module.{weight.attr}[{a}] = nn.Parameter({weight.name}{frozen})")
        return lines

    def forward_lines(self, view: LayerView, class_name: str, expr: Expression) -> list[str]:
        a = "active_adapter"
        names = set(expr.names) - FORWARD_NAMES
        values = self.needed_values(names)
        direct = self.direct_names(names, values, getters=False)
        lines = self.bind_direct(view, a, direct, self.canonical_weight(view, a))
        lines += self.bind_values(view, class_name, a, values, "cache")
        calls = {
            "lora_A": view.lora_A_call.format(a=a),
            "lora_B": view.lora_B_call.format(a=a),
            "per_output": view.per_output,
            "layer_op": view.layer_op,
            "dropout": "dropout(ARG0)" if view.has_dropout else "ARG0",
        }
        dropped = None
        if "base" in expr.names:
            if view.base_reuse is None:  # no dropout on this layer: the base output is `result`
                lines.append("base = result")
            else:
                weight = "weight" if "weight" in direct else self.canonical_weight(view, a)
                lines += [
                    f"dropout = module.lora_dropout[{a}]",
                    "if isinstance(dropout, nn.Identity) or not module.training:",
                    "    # the base layer's output for this input is in `result` already: reuse it, without the bias",
                    "    bias = base_layer.bias",
                    "    dropped = x",
                    f"    base = {view.base_reuse}",
                    "else:",
                    "    dropped = dropout(x)",
                    f"    base = {_substitute(view.layer_op, ['dropped', weight])}",
                ]
                dropped = "dropped"  # `dropout(x)` is `dropped` from here on
        elif expr.uses("dropout") and view.has_dropout:
            lines.append(f"dropout = module.lora_dropout[{a}]")
        out = render(expr, {}, calls, dropped_x=dropped)
        if "result" not in expr.names:
            out = f"result + {_parenthesize(out)}"
        lines.append(f"return {out}")
        return lines

    def merge_lines(self, view: LayerView, class_name: str) -> list[str]:
        assert self.merge is not None and self.unmerge is not None
        a = "active_adapter"
        stored = [v for v in self.needed_values(self.unmerge.names) if self.values[v].constant]
        merge_values = self.needed_values(set(self.merge.names) | set(stored))
        direct = self.direct_names(self.merge.names, merge_values, getters=True)
        reads_base = "weight" in self.direct_names((), merge_values, getters=True)
        values = self.bind_values(view, class_name, a, merge_values, "getter")
        lines = ["with torch.no_grad():"]
        lines += ["    " + line for line in self.bind_direct(view, a, direct - {"weight"}, None)]
        if reads_base and self.replays_merged:
            lines += [
                "    # computed from the base weight as `forward` sees it: without the adapters merged into it",
                "    with module._unmerged_base_weight(safe_merge=safe_merge) as base_weight:",
                f"        weight = {_substitute(view.from_layout, ['base_weight'])}",
            ]
            lines += ["        " + line for line in values]
            lines += [
                "    if safe_merge:",
                "        # `orig_weight` was copied before the merged adapters were replayed: go on from the replayed weight",
                "        orig_weight = dequantize_module_weight(base_layer)",
            ]
        elif reads_base:
            base = "dequantize_module_weight(base_layer)"
            lines.append(f"    weight = {_substitute(view.from_layout, [base])}")
            lines += ["    " + line for line in values]
        else:
            lines += ["    " + line for line in values]
        for value in stored:
            lines += [
                "    # unmerge needs it too, and cannot compute it from the merged weight",
                f'    module._cache_store(f"{{{a}}}-{self.spec.name}-{value}-merged", {value})',
            ]
        lines += [
            f"    weight = {_substitute(view.from_layout, ['orig_weight'])}",
            f"    new_weight = {render(self.merge, {}, {})}",
            f"return {_substitute(view.to_layout, ['new_weight'])}.to(orig_weight.dtype)",
        ]
        return lines

    def unmerge_lines(self, view: LayerView, class_name: str) -> list[str]:
        assert self.unmerge is not None
        a = "active_adapter"
        values = self.needed_values(self.unmerge.names)
        direct = self.direct_names(self.unmerge.names, values, getters=False) - {"weight"}
        lines = ["with torch.no_grad():"]
        body = self.bind_direct(view, a, direct, None) + self.bind_values(view, class_name, a, values, "merged")
        lines += ["    " + line for line in body]
        lines += [
            f"    weight = {_substitute(view.from_layout, ['orig_weight'])}",
            f"    new_weight = {render(self.unmerge, {}, {})}",
            f"return {_substitute(view.to_layout, ['new_weight'])}.to(orig_weight.dtype)",
        ]
        return lines


# ---------------------------------------------------------------------------------------------------------------------
# Rendering expressions


class _Substitute(ast.NodeTransformer):
    def __init__(self, names: Mapping[str, str], calls: Mapping[str, str], dropped_x: str | None = None) -> None:
        self.names = names
        self.calls = calls
        self.dropped_x = dropped_x

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.names:
            return ast.copy_location(ast.parse(self.names[node.id], mode="eval").body, node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        is_dropout_of_x = (
            isinstance(node.func, ast.Name)
            and node.func.id == "dropout"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "x"
        )
        if self.dropped_x is not None and is_dropout_of_x:
            return ast.copy_location(ast.Name(self.dropped_x, ast.Load()), node)
        if isinstance(node.func, ast.Name) and node.func.id in self.calls:
            args = [self.visit(arg) for arg in node.args]
            template = ast.parse(self.calls[node.func.id], mode="eval").body
            return _Placeholders(args).visit(template)
        self.generic_visit(node)
        return node


class _Placeholders(ast.NodeTransformer):
    def __init__(self, args: list[ast.AST]) -> None:
        self.args = args

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id.startswith("ARG") and node.id[3:].isdigit():
            return copy.deepcopy(self.args[int(node.id[3:])])
        return node


def render(expr: Expression, names: Mapping[str, str], calls: Mapping[str, str], dropped_x: str | None = None) -> str:
    """`expr` as source, with names replaced by code and spec-level calls by their templates (ARG0, ARG1...);
    `dropout(x)` becomes `dropped_x` when given."""
    tree = _Substitute(names, calls, dropped_x).visit(copy.deepcopy(expr.tree))
    return ast.unparse(ast.fix_missing_locations(tree))


def _substitute(template: str, args: list[str]) -> str:
    nodes = [ast.parse(arg, mode="eval").body for arg in args]
    return ast.unparse(_Placeholders(nodes).visit(ast.parse(template, mode="eval").body))  # type: ignore[arg-type]


def _parenthesize(code: str) -> str:
    node = ast.parse(code, mode="eval").body
    return code if isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript, ast.Constant)) else f"({code})"


def _check_arity(planner: _Planner, where: str, expr: Expression) -> None:
    for node in ast.walk(expr.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALL_ARITY:
            wanted = _CALL_ARITY[node.func.id]
            if len(node.args) != wanted or node.keywords:
                raise planner.fail(where, f"`{node.func.id}` takes {wanted} positional argument(s)")


def _with_base_layer(lines: list[str]) -> list[str]:
    """Bind `base_layer` first when the method uses it."""
    if any(re.search(r"\bbase_layer\b", line) for line in lines):
        return ["base_layer = module.get_base_layer()", *lines]
    return lines


def _doc(text: str) -> str:
    return " ".join(text.split()).replace("\\", "")
