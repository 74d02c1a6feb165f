"""The plan of a `kind: lora_layer` spec: every expression checked and every code fragment the templates print.

Expressions use the spec language of `scaffold.spec.expressions` (parsed with `ast`, checked against a whitelist,
never evaluated). Besides the usual math, they may read:

- the base layer's `attributes` the spec lists (printed as `base_layer.<attr>`; nothing else of the base layer is
  reachable, and names starting with `_` are refused by the language itself),
- the spec's `dims`, named values computed from attributes (printed as locals computed first),
- in `delta_weight` and `forward`: `A` (r, in_features), `B` (out_features, r), `scaling`, `r`, and `in_features`
  / `out_features`; in `forward` also `x` and, for float inputs, `dropout(...)`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_layer.spec import LoraLayerSpec
from scaffold.spec.expressions import Expression, ExpressionError, parse_expression, render


FEATURES = ("in_features", "out_features")


@dataclass
class Check:
    condition: str  # code: what must hold
    message: str  # the f-string's text (it may show the values read, as `{...}`)


@dataclass
class ForwardPlan:
    """The spec's `forward`: the body of `_lora_output`."""

    dropout: bool  # bind `dropout` (the expression applies it)
    scaling: bool  # bind `scaling`
    cast_input: bool  # cast `x` to the adapter's dtype (float inputs; not integer indices)
    prelude: list[tuple[str, str]]  # (local, code): `base_layer` and the dims, in order
    result: str


@dataclass
class LoraLayerPlan:
    spec: LoraLayerSpec
    name: str  # the module name in a PEFT tree (tuners/lora/<name>.py)
    class_name: str
    title: str
    base_path: str  # dotted path of the base class
    base_import: str | None  # `import <module>` the tests need for a base class outside torch
    indices_input: bool
    # `_get_in_out_features(base_layer)`: the dims it needs, then (in_features, out_features)
    features_prelude: list[tuple[str, str]]
    features: tuple[str, str]
    check_prelude: list[tuple[str, str]]  # in `__init__`, after LoraLayer.__init__, then the checks
    checks: list[Check]
    delta_prelude: list[tuple[str, str]]  # get_delta_weight: then `output_tensor = <delta>` from weight_A / weight_B
    delta: str
    forward: ForwardPlan | None  # None: the default, the base layer's op with the delta weight
    uses_functional: bool
    example_layer: str  # source of the example base layer
    example_input: str  # source of the example input
    notes: list[str] = field(default_factory=list)

    @property
    def standalone_module(self) -> str:
        """The module name with `--out` (a top-level module, so prefixed to stay clear of other packages)."""
        return f"lora_{self.name}"

    @property
    def base_class(self) -> str:
        return self.spec.base_class

    @property
    def in_torch(self) -> bool:
        return self.base_path.startswith("torch.")


def build_layer_plan(spec: LoraLayerSpec, source: str = "spec") -> LoraLayerPlan:
    return _Planner(spec, source).build()


class _Planner:
    def __init__(self, spec: LoraLayerSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.attributes = set(spec.attributes)
        self.dims: dict[str, Expression] = {}
        self.uses_functional = False

    def fail(self, where: str, reason: str) -> ScaffoldError:
        return ScaffoldError(f"{self.source}: {where}", reason)

    def parse(self, where: str, text: object, names: set[str], functions: set[str] = set()) -> Expression:
        try:
            expr = parse_expression(text, names=names, functions=functions, tensor=True)
        except ExpressionError as exc:
            reason = str(exc)
            if reason.startswith("unknown name"):
                reason += "; base-layer attributes must be listed under `attributes`"
            raise self.fail(where, reason) from None
        if any(isinstance(node, ast.Name) and node.id == "F" for node in ast.walk(expr.tree)):
            self.uses_functional = True
        return expr

    # -- names --------------------------------------------------------------------------------------------------
    def base_names(self) -> set[str]:
        return self.attributes | set(self.dims)

    def needed_dims(self, exprs: list[Expression]) -> list[str]:
        """The dims `exprs` read, directly or through other dims, in spec order."""
        todo = [n for e in exprs for n in e.names if n in self.dims]
        needed: set[str] = set()
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo.extend(n for n in self.dims[name].names if n in self.dims)
        return [n for n in self.dims if n in needed]

    def prelude(self, exprs: list[Expression], base: str | None = "self._base()") -> list[tuple[str, str]]:
        """`base_layer` (when an attribute is read) and the dims the expressions need, as (local, code)."""
        dims = self.needed_dims(exprs)
        reads = {n for e in exprs for n in e.names} | {n for d in dims for n in self.dims[d].names}
        binds = []
        if base is not None and reads & self.attributes:
            binds.append(("base_layer", base))
        binds += [(name, render(self.dims[name], self.attribute_code())) for name in dims]
        return binds

    def attribute_code(self) -> dict[str, str]:
        return {a: f"base_layer.{a}" for a in self.attributes}

    # -- build --------------------------------------------------------------------------------------------------
    def build(self) -> LoraLayerPlan:
        spec = self.spec
        for name, text in spec.dims.items():
            self.dims[name] = self.parse(f"dims.{name}", text, self.base_names())
        features = {f: self.parse(f, getattr(spec, f), self.base_names()) for f in FEATURES}
        in_code, out_code = (render(features[f], self.attribute_code()) for f in FEATURES)
        check_prelude, checks = self.checks()
        delta_prelude, delta = self.delta()
        forward = self.forward()
        base_module = spec.base_layer.rpartition(".")[0]
        return LoraLayerPlan(
            spec=spec,
            name=spec.name,
            class_name=spec.layer_class,
            title=spec.display_title,
            base_path=spec.base_layer,
            base_import=None if spec.base_layer.startswith("torch.") else base_module,
            indices_input=spec.input == "indices",
            features_prelude=self.prelude(list(features.values()), base=None),
            features=(in_code, out_code),
            check_prelude=check_prelude,
            checks=checks,
            delta_prelude=delta_prelude,
            delta=delta,
            forward=forward,
            uses_functional=self.uses_functional,
            example_layer=self.example_layer(),
            example_input=self.example_input(),
        )

    def checks(self) -> tuple[list[tuple[str, str]], list[Check]]:
        names = self.base_names() | set(FEATURES)
        exprs = [self.parse(f"checks[{i}].condition", c.condition, names) for i, c in enumerate(self.spec.checks)]
        if not exprs:
            return [], []
        mapping = {**self.attribute_code(), "in_features": "self.in_features", "out_features": "self.out_features"}
        checks = []
        for check, expr in zip(self.spec.checks, exprs):
            shown = [n for n in _names_in_order(expr.tree) if n in names]
            got = ", ".join(f"{n}={{{render(_name(n), mapping)}}}" for n in shown)
            message = check.message.rstrip(".") + (f" (got {got})" if got else "") + "."
            checks.append(Check(render(expr, mapping), message))
        return self.prelude(exprs), checks

    def adapter_names(self) -> set[str]:
        return self.base_names() | set(FEATURES) | {"A", "B", "scaling", "r"}

    def delta(self) -> tuple[list[tuple[str, str]], str]:
        expr = self.parse("delta_weight", self.spec.delta_weight, self.adapter_names())
        missing = [n for n in ("A", "B") if n not in expr.names]
        if missing:
            raise self.fail("delta_weight", f"must use the LoRA factors A and B (missing: {', '.join(missing)})")
        mapping = {
            **self.attribute_code(),
            "A": "weight_A",
            "B": "weight_B",
            "scaling": "self.scaling[adapter]",
            "r": "self.r[adapter]",
            "in_features": "self.in_features",
            "out_features": "self.out_features",
        }
        return self.prelude([expr]), render(expr, mapping)

    def forward(self) -> ForwardPlan | None:
        text = self.spec.forward
        if text is None:
            return None
        indices = self.spec.input == "indices"
        functions = set() if indices else {"dropout"}
        try:
            expr = self.parse("forward", text, self.adapter_names() | {"x"}, functions)
        except ScaffoldError as exc:
            if indices and "`dropout`" in exc.reason:
                raise self.fail("forward", "`dropout` cannot be applied to integer indices (input: indices)") from None
            raise
        if "x" not in expr.names:
            raise self.fail("forward", "must use the input `x`")
        if not indices and not expr.uses("dropout"):
            raise self.fail("forward", "must apply `dropout(...)` to the input, or LoRA's lora_dropout is ignored")
        mapping = {
            **self.attribute_code(),
            "A": "lora_A.weight",
            "B": "lora_B.weight",
            "r": "self.r[active_adapter]",
            "in_features": "self.in_features",
            "out_features": "self.out_features",
        }
        return ForwardPlan(
            dropout=expr.uses("dropout"),
            scaling="scaling" in expr.names,
            cast_input=not indices,
            prelude=self.prelude([expr]),
            result=render(expr, mapping),
        )

    # -- the example the generated tests build --------------------------------------------------------------------
    def example_layer(self) -> str:
        example = self.spec.example
        args = [repr(a) for a in example.args] + [f"{k}={v!r}" for k, v in example.kwargs.items()]
        return f"{self.spec.base_layer}({', '.join(args)})"

    def example_input(self) -> str:
        example = self.spec.example
        shape = ", ".join(str(s) for s in example.input_shape)
        if self.spec.input == "indices":
            return f"torch.randint(0, {example.input_high}, ({shape}{',' if len(example.input_shape) == 1 else ''}))"
        return f"torch.randn({shape})"


def _names_in_order(tree: ast.AST) -> list[str]:
    """The names an expression reads, in source order."""
    nodes = sorted(
        (node for node in ast.walk(tree) if isinstance(node, ast.Name)), key=lambda n: (n.lineno, n.col_offset)
    )
    return list(dict.fromkeys(node.id for node in nodes))


def _name(name: str) -> Expression:
    return Expression(source=name, tree=ast.Name(id=name, ctx=ast.Load()), names=frozenset({name}))
