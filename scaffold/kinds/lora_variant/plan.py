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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_variant.spec import LoraVariantSpec
from scaffold.spec.expressions import Expression, ExpressionError, parse_expression


# ---------------------------------------------------------------------------------------------------------------------
# How each LoRA layer class spells the canonical names: jinja2 macros, templates/lora_variant/layers/<layer>.j2.


class LayerView:
    """The macros of one LoRA layer class (`weight()`, `from_layout(w)`, `lora_A_call(a, x)`, `layer_op(x, w)`, ...),
    called with code; `a` is the adapter-name variable."""

    def __init__(self, layer: str, templates: Path | None = None) -> None:
        from scaffold.render.templates import environment

        conv = layer.startswith("Conv")
        template = environment(str(templates) if templates else None).get_template(
            f"lora_variant/layers/{'conv' if conv else layer.lower()}.j2"
        )
        self.layer = layer
        self._macros = template.make_module({"n": int(layer[4]) if conv else 0})
        self.has_dropout = bool(getattr(self._macros, "has_dropout"))
        self.refuses_groups = bool(getattr(self._macros, "refuses_groups"))

    def code(self, macro: str, *args: str) -> str:
        """The macro's code for `args` (each parenthesized unless it is an atom)."""
        return str(getattr(self._macros, macro)(*(_parenthesize(arg) for arg in args))).strip()

    def expr(self, macro: str, *args: str) -> str:
        """`code`, normalized (for a result that is itself an argument or a statement's right-hand side)."""
        return ast.unparse(ast.parse(self.code(macro, *args), mode="eval"))


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
class Bind:
    """`name = code`, or, with `cache_key`, `name = _constant(module, f"<cache_key>", _stamp(<stamp>), lambda: <code>)`
    (a constant cached while no gradient is needed)."""

    name: str
    code: str
    cache_key: str = ""
    stamp: list[str] = field(default_factory=list)


@dataclass
class InitPlan:
    base_layer: bool  # bind `base_layer = module.get_base_layer()` first
    refuses_groups: bool  # a conv layer: refuse groups > 1, which the canonical view does not cover
    bindings: list[Bind]
    inits: dict[str, str]  # weight -> its initial value
    like: str  # the tensor whose dtype and device the new weights take


@dataclass
class GetterPlan:
    name: str
    doc: str
    base_layer: bool
    bindings: list[Bind]
    result: str


@dataclass
class ForwardPlan:
    base_layer: bool
    bindings: list[Bind]
    base: (
        str  # how `base` is bound: "" (not read), "result" (no dropout on this layer), "dropout" (reused or computed)
    )
    base_reused: str  # `base` from `result` (and `bias`)
    base_dropped: str  # `base` for the dropped-out input
    dropout: bool  # bind `dropout` (read by the expression)
    result: str


@dataclass
class WeightUpdatePlan:
    """`merge` or `unmerge`: the new weight from `orig_weight`, in the canonical view and back."""

    base_layer: bool
    bindings: list[Bind]  # inside `torch.no_grad()`
    replays: bool  # values read the base weight as `forward` sees it: `module._unmerged_base_weight` (PEFT >= 0.21)
    replayed_weight: str  # with `replays`: the canonical `weight` from `base_weight`
    base_weight: str  # without `replays`, when values read the base weight: the canonical `weight`
    values: list[Bind]  # after `weight` is bound
    stored: list[tuple[str, str]]  # (cache key, value) kept for unmerge
    weight: str
    new_weight: str
    result: str


@dataclass
class VariantClassPlan:
    layer: str  # PEFT's LoRA layer class, e.g. "Linear"
    class_name: str  # e.g. "RefDoraLinearVariant"
    init: InitPlan
    getters: list[GetterPlan]
    forward: ForwardPlan
    merge: WeightUpdatePlan | None
    unmerge: WeightUpdatePlan | None


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


def build_plan(
    spec: LoraVariantSpec, source: str = "spec", *, replays_merged: bool = True, templates: Path | None = None
) -> VariantPlan:
    """`templates`: the `--templates` directory, whose `lora_variant/layers/*.j2` shadow the built-in macros."""
    return _Planner(spec, source, replays_merged, templates).build()


class _Planner:
    def __init__(self, spec: LoraVariantSpec, source: str, replays_merged: bool, templates: Path | None) -> None:
        self.spec = spec
        self.source = source
        self.replays_merged = replays_merged
        self.templates = templates

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
        # what the templates print (the classes, and the weights' shapes in `init`), to decide the imports
        code = "\n".join(_strings([classes, [w.shape for w in self.weights.values()]]))
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
        calls = {name: _function(f"math.{name}") for name in ("sqrt", "log", "exp", "ceil", "floor")}
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
        """The values `names` need (directly or through other values, constants included), in spec order."""
        return self.needed_values(names, through_constants=True)

    def closure_names(self, names: Iterable[str]) -> set[str]:
        """`names` plus every name read by the values they need."""
        out = set(names)
        for value in self.value_closure(names):
            out |= self.values[value].expr.names
        return out

    def depends_on_weights(self, expr: Expression) -> bool:
        return bool(self.closure_names(expr.names) & set(self.spec.weights))

    # -- code -------------------------------------------------------------------------------------------------
    def needed_values(self, names: Iterable[str], through_constants: bool = False) -> list[str]:
        """The values a computation reading `names` binds, in spec order. A constant is obtained whole (from its
        getter, the forward cache or what merge stored), so the values it reads are not needed here, unless
        `through_constants`."""
        needed: set[str] = set()
        todo = [n for n in names if n in self.values]
        while todo:
            name = todo.pop()
            if name in needed:
                continue
            needed.add(name)
            if through_constants or not self.values[name].constant:
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

    def bind_direct(self, view: LayerView, a: str, names: set[str], weight_code: str | None) -> list[Bind]:
        """Bindings of the canonical names in `names` as locals (`weight` only when `weight_code` is given)."""
        names = set(names)
        if "delta_weight" in names:
            names |= {"lora_A", "lora_B", "scaling"}
        binds = []
        if "lora_A" in names:
            binds.append(Bind("lora_A", view.code("lora_A", a)))
        if "lora_B" in names:
            binds.append(Bind("lora_B", view.code("lora_B", a)))
        if "scaling" in names:
            binds.append(Bind("scaling", f"module.scaling[{a}]"))
        if "r" in names:
            binds.append(Bind("r", f"module.r[{a}]"))
        binds += [Bind(dim, f"module.{dim}") for dim in ("in_features", "out_features") if dim in names]
        binds += [Bind(name, f"module.{w.attr}[{a}]") for name, w in self.weights.items() if name in names]
        if "weight" in names and weight_code is not None:
            binds.append(Bind("weight", weight_code))
        if "delta_weight" in names:
            binds.append(Bind("delta_weight", "lora_B @ lora_A * scaling"))
        return binds

    def bind_values(self, view: LayerView, class_name: str, a: str, values: list[str], constants: str) -> list[Bind]:
        """Bindings of `values`. Constants come from their getter ("getter"), the forward cache ("cache") or what
        merge stored ("merged")."""
        binds = []
        for value in values:
            plan = self.values[value]
            if not plan.constant:
                binds.append(Bind(value, render(plan.expr, {}, {})))
            elif constants == "getter":
                binds.append(Bind(value, f"{class_name}.{plan.getter}(module, {a}, weight)"))
            elif constants == "merged":
                binds.append(Bind(value, f'module._cache_pop(f"{self.merged_key(a, value)}")'))
            else:
                binds.append(self.cached_constant(view, class_name, a, plan))
        return binds

    def merged_key(self, a: str, value: str) -> str:
        return f"{{{a}}}-{self.spec.name}-{value}-merged"

    def canonical_weight(self, view: LayerView, a: str) -> str:
        """The canonical base weight in the adapter's dtype (what `forward` computes with)."""
        return f"{view.code('weight')}.to({view.code('lora_A_param', a)}.dtype)"

    def variant_class(self, layer: str) -> VariantClassPlan:
        view = LayerView(layer, self.templates)
        class_name = f"{self.spec.class_name}{layer}Variant"
        getters = [self.getter(view, class_name, value) for value in self.values.values() if value.constant]
        merge = unmerge = None
        if self.merge is not None:
            merge = self.merge_plan(view, class_name)
            unmerge = self.unmerge_plan(view, class_name)
        return VariantClassPlan(
            layer=layer,
            class_name=class_name,
            init=self.init_plan(view, class_name),
            getters=getters,
            forward=self.forward_plan(view, class_name, self.forwards[layer]),
            merge=merge,
            unmerge=unmerge,
        )

    def cached_constant(self, view: LayerView, class_name: str, a: str, value: ValuePlan) -> Bind:
        reads = self.closure_names(value.expr.names)
        stamp = []
        if "weight" in reads:
            stamp.append("base_layer.weight")
        if reads & {"lora_A", "delta_weight"}:
            stamp.append(view.code("lora_A_param", a))
        if reads & {"lora_B", "delta_weight"}:
            stamp.append(view.code("lora_B_param", a))
        stamp += [f"module.{w.attr}[{a}]" for n, w in self.weights.items() if n in reads]
        if reads & {"scaling", "delta_weight"}:
            stamp.append(f"module.scaling[{a}]")
        compute = f"{class_name}.{value.getter}(module, {a}, {self.canonical_weight(view, a)})"
        return Bind(value.name, compute, cache_key=f"{{{a}}}-{self.spec.name}-{value.name}", stamp=stamp)

    def getter(self, view: LayerView, class_name: str, value: ValuePlan) -> GetterPlan:
        a = "adapter_name"
        values = self.needed_values(value.expr.names)
        direct = self.direct_names(value.expr.names, values, getters=True) - {"weight"}
        binds = self.bind_direct(view, a, direct, None) + self.bind_values(view, class_name, a, values, "getter")
        result = render(value.expr, {}, {})
        doc = (
            f"`{value.name}` for the canonical base `weight`, as a constant (no gradient): `{_doc(value.expr.source)}`"
        )
        return GetterPlan(value.getter, doc, _reads_base_layer(binds, result), binds, result)

    def init_plan(self, view: LayerView, class_name: str) -> InitPlan:
        a = "adapter_name"
        names: set[str] = set()
        for weight in self.weights.values():
            names |= weight.init.names
        names -= set(self.weights)  # earlier weights are the tensors just created
        values = self.needed_values(names)
        direct = self.direct_names(names, values, getters=True)
        like = view.code("lora_A_param", a)
        binds: list[Bind] = []
        if self.weights:
            binds = self.bind_direct(view, a, direct, f"{view.code('weight')}.to({like}.device)")
            binds += self.bind_values(view, class_name, a, values, "getter")
        inits = {name: render(weight.init, {}, {}) for name, weight in self.weights.items()}
        base_layer = view.refuses_groups or _reads_base_layer(binds, *inits.values())
        return InitPlan(base_layer, view.refuses_groups, binds, inits, like)

    def forward_plan(self, view: LayerView, class_name: str, expr: Expression) -> ForwardPlan:
        a = "active_adapter"
        names = set(expr.names) - FORWARD_NAMES
        values = self.needed_values(names)
        direct = self.direct_names(names, values, getters=False)
        binds = self.bind_direct(view, a, direct, self.canonical_weight(view, a))
        binds += self.bind_values(view, class_name, a, values, "cache")
        calls: dict[str, Callable[..., str]] = {
            "lora_A": lambda h: view.expr("lora_A_call", a, h),
            "lora_B": lambda h: view.expr("lora_B_call", a, h),
            "per_output": lambda v: view.expr("per_output", v),
            "layer_op": lambda h, w: view.expr("layer_op", h, w),
            "dropout": _function("dropout") if view.has_dropout else (lambda h: h),
        }
        base, reused, dropped_base, dropped = "", "", "", None
        if "base" in expr.names:
            if not view.has_dropout:  # no dropout on this layer: the base output is `result`
                base = "result"
            else:
                base, dropped = "dropout", "dropped"  # `dropout(x)` is `dropped` from there on
                reused = view.code("base_reuse")
                weight = "weight" if "weight" in direct else self.canonical_weight(view, a)
                dropped_base = view.expr("layer_op", "dropped", weight)
        uses_dropout = not base and expr.uses("dropout") and view.has_dropout
        out = render(expr, {}, calls, dropped_x=dropped)
        if "result" not in expr.names:
            out = f"result + {_parenthesize(out)}"
        base_layer = base == "dropout" or _reads_base_layer(binds, dropped_base, out)
        return ForwardPlan(base_layer, binds, base, reused, dropped_base, uses_dropout, out)

    def merge_plan(self, view: LayerView, class_name: str) -> WeightUpdatePlan:
        assert self.merge is not None and self.unmerge is not None
        a = "active_adapter"
        stored = [v for v in self.needed_values(self.unmerge.names) if self.values[v].constant]
        merge_values = self.needed_values(set(self.merge.names) | set(stored))
        direct = self.direct_names(self.merge.names, merge_values, getters=True)
        reads_base = "weight" in self.direct_names((), merge_values, getters=True)
        replays = reads_base and self.replays_merged
        binds = self.bind_direct(view, a, direct - {"weight"}, None)
        values = self.bind_values(view, class_name, a, merge_values, "getter")
        replayed = view.expr("from_layout", "base_weight") if replays else ""
        base_weight = (
            view.expr("from_layout", "dequantize_module_weight(base_layer)") if reads_base and not replays else ""
        )
        return self.weight_update(view, self.merge, binds, replays, replayed, base_weight, values, stored, a)

    def unmerge_plan(self, view: LayerView, class_name: str) -> WeightUpdatePlan:
        assert self.unmerge is not None
        a = "active_adapter"
        values = self.needed_values(self.unmerge.names)
        direct = self.direct_names(self.unmerge.names, values, getters=False) - {"weight"}
        binds = self.bind_direct(view, a, direct, None) + self.bind_values(view, class_name, a, values, "merged")
        return self.weight_update(view, self.unmerge, binds, False, "", "", [], [], a)

    def weight_update(
        self,
        view: LayerView,
        expr: Expression,
        binds: list[Bind],
        replays: bool,
        replayed: str,
        base_weight: str,
        values: list[Bind],
        stored: list[str],
        a: str,
    ) -> WeightUpdatePlan:
        weight = view.expr("from_layout", "orig_weight")
        new_weight = render(expr, {}, {})
        result = view.code("to_layout", "new_weight")
        base_layer = replays or _reads_base_layer(binds, values, replayed, base_weight, weight, result)
        kept = [(self.merged_key(a, value), value) for value in stored]
        return WeightUpdatePlan(
            base_layer, binds, replays, replayed, base_weight, values, kept, weight, new_weight, result
        )


# ---------------------------------------------------------------------------------------------------------------------
# Rendering expressions


class _Substitute(ast.NodeTransformer):
    def __init__(
        self, names: Mapping[str, str], calls: Mapping[str, Callable[..., str]], dropped_x: str | None = None
    ) -> None:
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
            args = [ast.unparse(self.visit(arg)) for arg in node.args]
            return ast.parse(self.calls[node.func.id](*args), mode="eval").body
        self.generic_visit(node)
        return node


def render(
    expr: Expression, names: Mapping[str, str], calls: Mapping[str, Callable[..., str]], dropped_x: str | None = None
) -> str:
    """`expr` as source, with names replaced by code and spec-level calls by the code their function returns for the
    arguments' code; `dropout(x)` becomes `dropped_x` when given."""
    tree = _Substitute(names, calls, dropped_x).visit(copy.deepcopy(expr.tree))
    return ast.unparse(ast.fix_missing_locations(tree))


def _function(name: str) -> Callable[[str], str]:
    """A spec-level call printed as a call of `name`."""
    return lambda arg: f"{name}({arg})"


def _strings(value: Any) -> list[str]:
    """Every piece of code in a plan (dataclasses, lists, dicts), for deciding the module's imports."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Bind) and value.cache_key:
        return ["_constant(", value.code, *value.stamp]
    if isinstance(value, WeightUpdatePlan) and value.replays:
        return ["dequantize_module_weight(", *_strings(vars(value))]
    if hasattr(value, "__dataclass_fields__"):
        return _strings([v for k, v in vars(value).items() if k != "doc"])
    if isinstance(value, dict):
        return [s for item in value.items() for s in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def _reads_base_layer(*parts: Any) -> bool:
    """Whether the code in `parts` (bindings, code) reads `base_layer`, which is then bound first."""
    return any(re.search(r"\bbase_layer\b", code) for code in _strings(list(parts)))


def _parenthesize(code: str) -> str:
    node = ast.parse(code, mode="eval").body
    return code if isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript, ast.Constant)) else f"({code})"


def _check_arity(planner: _Planner, where: str, expr: Expression) -> None:
    for node in ast.walk(expr.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALL_ARITY:
            wanted = _CALL_ARITY[node.func.id]
            if len(node.args) != wanted or node.keywords:
                raise planner.fail(where, f"`{node.func.id}` takes {wanted} positional argument(s)")


def _doc(text: str) -> str:
    return " ".join(text.split()).replace("\\", "")
