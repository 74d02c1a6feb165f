"""Build the generation plan: every name, expression and code fragment the templates need, decided once.

The templates stay logic-free; anything that depends on the spec's meaning is resolved here, and every
cross-field rule of the spec (which names an expression may read, which dims a shape may use) is checked
here, raising `ScaffoldError` with the spec field it concerns.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from scaffold.errors import ScaffoldError
from scaffold.plan.algebra import CompositionError, MergeForm, bias_scaling, factorise, merge_form, reads
from scaffold.plan.layers import (
    DIM_CODE,
    TORCH_CLASSES,
    UNIVERSAL_DIMS,
    LayerFamily,
    dims_available,
    families_for,
    family_of_forward_key,
)
from scaffold.spec.expressions import (
    Expression,
    ExpressionError,
    parse_expression,
    render,
    uses_fft,
    with_creation_kwargs,
)
from scaffold.spec.model import RANDOM_DRAWS, Hyperparameter, InitCall, InitExpr, MethodSpec, Weight, tensor_value


_PY_TYPES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "enum": "str"}
_SCALAR_MATH = {"sqrt": "math.sqrt", "log": "math.log", "exp": "math.exp", "ceil": "math.ceil", "floor": "math.floor"}
_SCALAR_CONST = {"pi": "math.pi", "e": "math.e"}
# Initialisers that need a tensor of at least two dims (they compute fan-in / fan-out).
_NEEDS_2D = {"kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal"}


@dataclass
class HyperparameterPlan:
    name: str
    annotation: str
    default: str  # python source of the default
    help: str
    checks: list[tuple[str, str]]  # (condition that is an error, message) rendered in __post_init__
    spec: Hyperparameter


@dataclass
class ScalarPlan:
    """A per-adapter scalar the layer stores (a hyperparameter or a derived value)."""

    name: str
    attr: str  # e.g. mylora_scaling
    annotation: str
    value_code: str  # how update_layer computes it


@dataclass
class WeightPlan:
    name: str
    attr: str
    shape_code: list[str]
    init_lines: list[str]  # identity init (init_weights=True)
    random_init_lines: list[str]  # init_weights=False
    init_by_class: dict[str, list[str]]  # identity init overrides, keyed by generated layer class
    trainable: bool
    ndim: int
    # `init: {expr}`: the code computing it once in update_layer (init_weights True or False alike)
    init_expr: str | None = None
    dtype: str = "float"  # "long": an index buffer
    persistent: bool = True  # a frozen buffer in the state dict (False: recomputed from the config on load)
    shared: bool = False
    # shared weights only (see `SharedWeightPlan`)
    slice_code: str = ""  # the slice of the model's tensor a layer uses, e.g. `[:, : self.in_features]`


@dataclass
class SharedWeightPlan:
    """A weight held once per adapter by the model (VeRA's `vera_A`/`vera_B`), sized for the largest targeted layer
    and initialised from the config's PRNG key."""

    name: str
    attr: str
    shape_code: list[str]  # in the model's `_find_shared_shapes`: one layer's need, from `in_features`/`out_features`
    init_line: str  # initialises `shared` with `generator` (frozen) or torch's global RNG (trainable)
    dims: tuple[str, ...] = ()  # the layer dims its shape reads
    trainable: bool = False  # a parameter trained through every layer (VB-LoRA's vector bank), always saved


@dataclass
class DeltaPlan:
    """`_canonical_delta`: the spec's `delta_weight`, computed in fp32 on CPU for half-precision weights."""

    bindings: list[tuple[str, str]]  # locals: (name, code)
    dtype_of: str  # the weight whose dtype the delta takes
    fp32_names: list[str]  # weights cast to fp32 for half precision on CPU
    reads_weight: bool
    expression: str
    fp32_everywhere: bool = False  # torch.fft: no half-precision kernels on GPUs either
    # named tensors, bound after the fp32 casts, in the weights' dtype
    value_bindings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MergePlan:
    """`_merged_weight` / `_unmerged_weight` from the spec's `merge` / `unmerge` (canonical view)."""

    bindings: list[tuple[str, str]]
    cast_names: list[str]  # weights cast to the base weight's dtype
    uses_delta: bool
    expression: str


@dataclass
class ValuePlan:
    """A getter `_get_<name>(adapter_name)` for a named tensor of the spec's `values` that an expression reads: it
    binds what the value needs, computes the earlier values it reads as locals, and returns it (in fp32 for
    half-precision weights: linear algebra has no half-precision kernels)."""

    name: str
    method: str
    bindings: list[tuple[str, str]]
    upcast: list[str]  # bound weights cast to fp32 when they are half precision
    steps: list[tuple[str, str]]  # earlier values computed as locals: (name, code)
    expression: str


@dataclass
class ScalePlan:
    """`_scale`: the vector a scaling `merge` multiplies the weight's rows or columns by."""

    bindings: list[tuple[str, str]]
    reads_weight: bool
    expression: str


@dataclass
class BiasPlan:
    """`_delta_bias` (an additive bias update) or `_merged_bias`/`_unmerged_bias` (a scaled bias)."""

    bindings: list[tuple[str, str]]
    reads_weight: bool
    expression: str


@dataclass
class SelectorPlan:
    """A `modules` hyperparameter: the modules whose layers get `flag` = True (matched like PEFT's
    `feedforward_modules`: regex fullmatch for a str, name suffix for a list)."""

    name: str
    flag: str


ForwardKind = Literal[
    "spec",
    "factored",
    "dense",
    "output_scale",
    "input_scale",
    "bias_only",
    "input_matrix",
    "conv_matrix",
    "output_matrix",
]

_FORWARD_SUMMARIES: dict[str, str] = {
    "spec": "the spec's forward",
    "factored": "factored: applies the factors of delta_weight in turn, never builds ΔW",
    "dense": "materialises ΔW (out_features × in_features) on every call: O(out × in) time and memory",
    "output_scale": "scales the output by the merge's vector (adapters chain as their merges do)",
    "input_scale": "scales the input by the merge's vector (adapters chain as their merges do)",
    "bias_only": "adds delta_bias to the output (the weight is left alone)",
    "input_matrix": "multiplies the input by the merge's matrix (adapters chain as their merges do)",
    "conv_matrix": "convolves with the weight multiplied by the merge's matrix: O(out × in × (in or out)) per call",
    "output_matrix": "multiplies the output by the merge's matrix (adapters chain as their merges do)",
}


@dataclass
class LayerClassPlan:
    """One generated layer class, and which forward it gets (the template prints the chosen branch)."""

    family: LayerFamily
    torch_classes: list[str]  # isinstance targets in the model's dispatch
    base_types: list[str]
    forward: ForwardKind
    bindings: list[tuple[str, str]]  # locals bound at the top of `_adapter_forward`: (name, code)
    expression: str  # spec: its expression; factored: the update applied to the input; output_scale: the scale
    x_in: str  # the adapter's input: `dropout(x)` or `x`
    uses_layer_op: bool
    reads_base: bool = False  # spec forward that uses `base`: its value is the output
    # the forward broadcasts a per-channel vector over the output (`family.channel_view`), which differs by conv dim
    uses_channel_view: bool = False
    selected: bool = False  # the merge chooses input or output scaling per adapter (a condition)
    # a non-mergeable forward reading `base` gets it in the adapter's dtype, as `x` (it typically maps `base` through
    # the adapter's weights, which stay fp32 on a half-precision model)
    casts_base: bool = False

    @property
    def forward_summary(self) -> str:
        summary = _FORWARD_SUMMARIES[self.forward]
        if self.selected:
            summary = "scales the input or the output by the merge's vector, as each adapter's condition selects"
        if self.forward == "factored" and self.family.kind == "conv":
            summary += " (a grouped convolution, groups > 1, materialises ΔW)"
        return summary

    @property
    def forward_key(self) -> tuple[object, ...]:
        """What decides the emitted `_adapter_forward`: classes with equal keys share one implementation."""
        key = (self.forward, tuple(self.bindings), self.expression, self.x_in, self.reads_base)
        return (*key, self.family.channel_view) if self.uses_channel_view else key


@dataclass
class MethodPlan:
    spec: MethodSpec
    name: str
    peft_type: str
    prefix: str
    class_name: str
    config_cls: str
    model_cls: str
    layer_cls: str
    title: str
    hyperparameters: list[HyperparameterPlan]
    scalars: list[ScalarPlan]
    derived: list[tuple[str, str]]  # update_layer: derived values computed into locals, (name, code)
    dropout: str | None
    weights: list[WeightPlan]
    delta: DeltaPlan
    merge: MergePlan | None
    unmerge: MergePlan | None
    layer_classes: list[LayerClassPlan]
    target_modules: str | dict[str, list[str]]
    has_conv1d_transformers: bool
    composition: str = "additive"  # "additive" | "output" | "input": how active adapters compose (see algebra)
    scale: ScalePlan | None = None  # a scaling merge's vector (per row or per column)
    matrix: ScalePlan | None = None  # a matrix merge's square matrix (input or output side)
    values: list[ValuePlan] = field(default_factory=list)  # getters of the named tensors expressions read
    caches_base_weight: bool = False  # deltas read `weight`: keep the pre-merge weight while adapters are merged
    selectors: list[SelectorPlan] = field(default_factory=list)  # `modules` hyperparameters and their flags
    # selected composition: when an adapter scales the input, in `_scales_input` and in `update_layer`
    input_condition: str | None = None
    input_condition_update: str | None = None
    input_flags: list[str] = field(default_factory=list)  # the flags that condition reads
    scales_bias: bool = False  # `merge_bias` scales the bias with the output (the forward scales the whole output)
    matrix_inverse: str | None = None  # a matrix merge: how `unmerge` inverts the matrix (`inv` or `transpose`)
    delta_bias: BiasPlan | None = None  # an additive bias update
    imports_math: bool = False
    imports_functional: bool = False
    uses_buffers: bool = False
    computed_reads_weight: bool = False  # an init expression reads `weight`: update_layer binds it
    shared_weights: list[SharedWeightPlan] = field(default_factory=list)
    shared_imports_math: bool = False  # the model's shared-weight init uses `math`
    mergeable: bool = True  # False: merge / get_delta_weight raise (the forward is not a weight update)

    @property
    def shared_trainable(self) -> bool:
        """Whether the shared weights are trainable (then all are: `check_shared`): an `nn.ParameterDict` on the model,
        always saved, without the config's PRNG key and `save_projection`."""
        return any(s.trainable for s in self.shared_weights)

    @property
    def frozen_shared(self) -> bool:
        """Whether the method has frozen shared weights (drawn from the config's `projection_prng_key`)."""
        return bool(self.shared_weights) and not self.shared_trainable

    @property
    def shared_container(self) -> str:
        """The dict class holding shared weights, on the model and (as a reference) on every layer."""
        return "nn.ParameterDict" if self.shared_trainable else "BufferDict"

    @property
    def computed_weights(self) -> list[WeightPlan]:
        """Weights computed once by an init expression in update_layer."""
        return [w for w in self.weights if w.init_expr is not None]

    @property
    def random_init_lines(self) -> list[str]:
        return [line for w in self.weights for line in w.random_init_lines] or ["pass"]

    @property
    def adapter_layer_names(self) -> list[str]:
        return [w.attr for w in self.weights if w.trainable]

    @property
    def other_param_names(self) -> list[str]:
        names = [w.attr for w in self.weights if not w.trainable] + [s.attr for s in self.scalars]
        if self.dropout:
            names.append(f"{self.prefix}dropout")
        return names

    @property
    def conv_forward_shared(self) -> bool:
        """Whether every convolution class has the same forward (then it lives on their shared base class)."""
        forwards = [lc.forward_key for lc in self.layer_classes if lc.family.kind == "conv"]
        return all(key == forwards[0] for key in forwards)

    @property
    def forwards_by_layer_type(self) -> dict[str, str]:
        """For `check`: each listed layer type and the forward its generated class gets."""
        return {t: lc.forward_summary for lc in self.layer_classes for t in lc.base_types}

    @property
    def identity_init_branches(self) -> list[tuple[str | None, list[str]]]:
        """(layer class or None for the rest, init lines) for `reset_<name>_parameters`."""
        classes = [lc.family.class_name for lc in self.layer_classes]
        special = [c for c in classes if any(c in w.init_by_class for w in self.weights)]
        branches: list[tuple[str | None, list[str]]] = [
            (c, [line for w in self.weights for line in w.init_by_class.get(c, w.init_lines)]) for c in special
        ]
        if len(special) < len(classes):
            branches.append((None, [line for w in self.weights for line in w.init_lines] or ["pass"]))
        return branches

    @property
    def shared_dims_unpacking(self) -> str:
        """`in_features, out_features` for the model's `_find_shared_shapes`, `_` for a dim no shared shape reads."""
        used = {d for w in self.shared_weights for d in w.dims}
        return ", ".join(d if d in used else "_" for d in UNIVERSAL_DIMS)

    @property
    def first_weight(self) -> WeightPlan:
        """The weight whose per-layer dict says which adapters a layer has, and whose dtype is the adapter's: the
        first float weight that is not shared (index buffers are integers; the model's shared tensors hold every
        adapter)."""
        return next(w for w in self.weights if w.dtype == "float" and not w.shared)

    @property
    def mapping_constant(self) -> str:
        return f"TRANSFORMERS_MODELS_TO_{self.peft_type}_TARGET_MODULES_MAPPING"

    @property
    def lora_mapping(self) -> bool:
        return self.target_modules == "lora"


def build_plan(spec: MethodSpec, source: str = "spec") -> MethodPlan:
    return _Planner(spec, source).build()


class _Planner:
    def __init__(self, spec: MethodSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.prefix = f"{spec.name}_"
        self.hp = spec.hyperparameters
        self.dims = dims_available(list(spec.layers))
        self.stored: dict[str, None] = {}  # scalars the layer must keep, in first-use order
        self.imports_math = False
        self.imports_functional = False
        self.merge_form = MergeForm("additive")
        # `modules` hyperparameters' per-layer booleans: flag -> hyperparameter
        self.flags = {hp.flag: name for name, hp in self.hp.items() if hp.flag is not None}
        self.computed_reads_weight = False
        self.slices: dict[str, str] = {}  # shared weight -> the slice a layer takes (bindings read it)

    def fail(self, where: str, reason: str) -> ScaffoldError:
        return ScaffoldError(f"{self.source}: {where}", reason)

    # -- expressions ----------------------------------------------------------------------------------------
    def parse(self, where: str, text: Any, names: set[str], functions: set[str] = set(), tensor: bool = True):
        try:
            expr = parse_expression(text, names=names, functions=functions, tensor=tensor)
        except ExpressionError as exc:
            unknown_dim = _unknown_dim(str(exc), self.dims)
            raise self.fail(where, unknown_dim or str(exc)) from None
        if tensor and "F." in ast_dump(expr):
            self.imports_functional = True
        if (
            "kernel_numel" in expr.names
            or not tensor
            and (expr.calls & set(_SCALAR_MATH) or expr.names & set(_SCALAR_CONST))
        ):
            self.imports_math = True
        return expr

    def scalar_names(self, derived_upto: int | None = None) -> set[str]:
        derived = list(self.spec.derived)
        if derived_upto is not None:
            derived = derived[:derived_upto]
        return self.value_hps() | set(derived) | self.dims | set(self.flags)

    def value_hps(self) -> set[str]:
        """Hyperparameters expressions may read (a `modules` selector is read through its flag)."""
        return {n for n, hp in self.hp.items() if hp.type != "modules"}

    def tensor_names(self, values_upto: int | None = None) -> set[str]:
        names = (self.value_hps() - {self.spec.dropout}) | set(self.spec.derived) | set(self.spec.weights) | self.dims
        return names | {"weight"} | set(self.flags) | set(list(self.spec.values)[:values_upto])

    # -- build ----------------------------------------------------------------------------------------------
    def build(self) -> MethodPlan:
        spec = self.spec
        class_name = spec.class_name
        self.check_dropout()
        self.check_shared()
        hyperparameters = [self.hyperparameter(n, h) for n, h in self.hp.items()]
        derived_exprs = self.derived()
        weights_exprs = {n: self.weight_shape(n, w) for n, w in spec.weights.items()}
        self.values = self.parse_values()
        for n, w in spec.weights.items():
            if w.shared:
                self.slices[n] = self.shared_slice(weights_exprs[n])
        # None: a method that only updates the bias (`delta_bias`), whose weight update is zero
        delta = self.parse("delta_weight", spec.delta_weight, self.tensor_names()) if spec.delta_weight else None
        merge = unmerge = None
        if spec.merge is not None and spec.unmerge is not None:
            merge = self.parse("merge", spec.merge, self.tensor_names() | {"delta_weight"})
            unmerge = self.parse("unmerge", spec.unmerge, self.tensor_names() | {"delta_weight"})
            for field_name, expr in (("merge", merge), ("unmerge", unmerge)):
                if "weight" not in expr.names:
                    raise self.fail(field_name, "must compute the new weight from `weight`")
            try:
                self.merge_form = merge_form(merge.tree, unmerge.tree, self.ranks())
            except CompositionError as exc:
                raise self.fail(exc.field, str(exc)) from None
        self.delta = delta
        forwards = self.forwards()
        self.check_composition(forwards)
        scales_bias = self.check_merge_bias()
        delta_bias = self.delta_bias_expr(forwards)
        self.check_non_mergeable(forwards)

        for expr in [delta, merge, unmerge, delta_bias, *forwards.values(), *self.values.values()]:
            if expr is not None:
                self.mark_stored(expr)
        weights = [self.weight(n, w, weights_exprs[n]) for n, w in spec.weights.items()]
        shared_weights = [self.shared_weight(n, w, weights_exprs[n]) for n, w in spec.weights.items() if w.shared]

        derived = [
            (name, render(expr, self.update_layer_names(), _SCALAR_MATH)) for name, expr in derived_exprs.items()
        ]
        families = families_for(list(spec.layers))
        layer_classes = [self.layer_class(f, forwards.get(f.class_name)) for f in families]
        form = self.merge_form
        scale = form.selected_scale() if form.composition == "selected" else form.scale
        matrix_form = form.composition in ("input_matrix", "output_matrix")
        if matrix_form:
            # the merge multiplies the weight being merged: only a matrix that reads `weight` needs the copy
            reads_weight = scale is not None and "weight" in self.closure(_names_in(scale))
        else:
            reads_weight = (delta is not None and "weight" in self.closure(delta.names)) or (
                scale is not None and reads(scale, "weight")
            )
        bias_plan = self.delta_bias_plan(delta_bias) if delta_bias is not None else None
        reads_weight = reads_weight or (bias_plan is not None and bias_plan.reads_weight)
        condition = form.input_condition() if form.composition == "selected" else None
        # a buffer computed from the base weight, for an adapter added while others are merged, reads the weight
        # as it was before any merge too
        reads_weight = reads_weight or self.computed_reads_weight
        # a method that cannot be merged keeps no pre-merge copy of the weight
        reads_weight = spec.mergeable and reads_weight
        exposed = [delta, merge, unmerge, delta_bias, *forwards.values()]
        if scale is not None:
            exposed.append(Expression(ast.unparse(scale), scale, frozenset(_names_in(scale))))
        return MethodPlan(
            spec=spec,
            name=spec.name,
            peft_type=spec.name.upper(),
            prefix=self.prefix,
            class_name=class_name,
            config_cls=f"{class_name}Config",
            model_cls=f"{class_name}Model",
            layer_cls=f"{class_name}Layer",
            title=spec.title or class_name,
            hyperparameters=hyperparameters,
            scalars=[self.scalar_plan(n) for n in self.stored],
            derived=derived,
            dropout=spec.dropout,
            weights=weights,
            delta=self.delta_plan(delta),
            merge=self.merge_plan(merge, "*") if merge else None,
            unmerge=self.merge_plan(unmerge, "/") if unmerge else None,
            layer_classes=layer_classes,
            target_modules=spec.target_modules,
            has_conv1d_transformers="Conv1D" in spec.layers,
            imports_math=self.imports_math,
            imports_functional=self.imports_functional
            or any(
                lc.uses_layer_op or lc.forward in ("factored", "input_matrix", "output_matrix") for lc in layer_classes
            ),
            uses_buffers=any(not w.trainable for w in weights),
            shared_weights=shared_weights,
            shared_imports_math=any("math." in s.init_line for s in shared_weights),
            composition=self.merge_form.composition,
            scale=self.scale_plan(scale) if scale is not None and not matrix_form else None,
            matrix=self.scale_plan(scale) if scale is not None and matrix_form else None,
            values=self.value_plans(exposed),
            caches_base_weight=reads_weight,
            selectors=[SelectorPlan(name, flag) for flag, name in self.flags.items()],
            input_condition=self.condition_code(condition, self.stored_names()) if condition else None,
            input_condition_update=self.condition_code(condition, self.update_layer_names()) if condition else None,
            input_flags=sorted(_names_in(condition) & set(self.flags)) if condition else [],
            scales_bias=scales_bias,
            matrix_inverse=form.inverse,
            delta_bias=bias_plan,
            computed_reads_weight=self.computed_reads_weight,
            mergeable=spec.mergeable,
        )

    def condition_code(self, condition: ast.expr, mapping: dict[str, str]) -> str:
        expr = Expression(source=ast.unparse(condition), tree=condition, names=frozenset(_names_in(condition)))
        return render(expr, mapping, _SCALAR_MATH)

    def check_merge_bias(self) -> bool:
        """Whether `merge_bias` scales the bias (checked against `merge`)."""
        spec = self.spec
        if spec.merge_bias is None or spec.unmerge_bias is None:
            return False
        names = self.tensor_names() | {"bias"}
        merge_bias = self.parse("merge_bias", spec.merge_bias, names)
        unmerge_bias = self.parse("unmerge_bias", spec.unmerge_bias, names)
        try:
            return bias_scaling(merge_bias.tree, unmerge_bias.tree, self.merge_form)
        except CompositionError as exc:
            raise self.fail(exc.field, str(exc)) from None

    def delta_bias_expr(self, forwards: dict[str, Expression]) -> Expression | None:
        """`delta_bias`: an additive update of the base layer's bias (like LoRA's `lora_bias`)."""
        if self.spec.delta_bias is None:
            return None
        expr = self.parse("delta_bias", self.spec.delta_bias, self.tensor_names())
        if self.merge_form.composition != "additive":
            raise self.fail("delta_bias", "adds to the bias, so it needs the additive merge (`weight + delta_weight`)")
        if "Embedding" in self.spec.layers:
            raise self.fail("delta_bias", "an Embedding has no bias to update: remove Embedding from `layers`")
        if self.delta is None and forwards:
            raise self.fail(
                f"forward.{next(iter(forwards))}",
                "a method without `delta_weight` adds `delta_bias`: remove the entry",
            )
        for key, forward in forwards.items():
            if "base" in forward.names:
                raise self.fail(
                    f"forward.{key}",
                    "reads `base`, which would include `delta_bias`: write the forward as an addition",
                )
        return expr

    def delta_bias_plan(self, expr: Expression) -> BiasPlan:
        dims = {d: DIM_CODE[d] for d in self.dims}
        return BiasPlan(self.bindings(set(expr.names)), "weight" in expr.names, render(expr, dims))

    def check_composition(self, forwards: dict[str, Expression]) -> None:
        """With a scaling `merge`, the forward is derived from it (so that several active adapters give what
        merging them in order gives): a hand-written forward could not be checked against it."""
        form = self.merge_form
        if form.composition == "additive":
            return
        for key in forwards:
            raise self.fail(
                f"forward.{key}",
                f"`merge` scales the {form.composition}, so the forward is derived from it (adapters then chain "
                "like their merges); remove this entry",
            )
        if form.composition in ("input_matrix", "output_matrix") and self.spec.dropout:
            raise self.fail(
                "dropout",
                "a matrix merge's forward multiplies by the matrix exactly as merging does; there is no adapter "
                "branch to apply dropout to",
            )
        if form.composition == "input_matrix" and "Embedding" in self.spec.layers:
            raise self.fail(
                "layers",
                "a matrix on the input side (merge `weight @ M`) cannot apply to Embedding, whose input is indices; "
                "transform its output instead (`M @ weight`)",
            )
        if form.composition == "input":
            others = [t for t in self.spec.layers if t not in ("Linear", "Conv1D")]
            if others:
                raise self.fail(
                    "layers",
                    f"scaling the input (merge `weight * v[None, :]`) applies to Linear and Conv1D only, not "
                    f"{', '.join(others)}",
                )

    def check_non_mergeable(self, forwards: dict[str, Expression]) -> None:
        """Without `delta_weight` there is no forward to derive: every listed layer class needs its own."""
        if self.spec.mergeable or self.spec.delta_weight is not None:
            return
        missing = [f.class_name for f in families_for(list(self.spec.layers)) if f.class_name not in forwards]
        if missing:
            raise self.fail(
                "forward",
                f"a method with `mergeable: false` and no `delta_weight` needs a forward for every listed layer "
                f"type: add {', '.join(f'`{key}`' for key in missing)} (or remove those layer types from `layers`)",
            )

    def check_dropout(self) -> None:
        name = self.spec.dropout
        if name is None:
            return
        if name not in self.hp:
            raise self.fail("dropout", f"names no hyperparameter ({name!r})")
        if self.hp[name].type != "float":
            raise self.fail("dropout", f"hyperparameter `{name}` must be a float, not {self.hp[name].type}")

    def hyperparameter(self, name: str, hp: Hyperparameter) -> HyperparameterPlan:
        if hp.type == "modules":
            # typed like PEFT's `target_modules` / IA3's `feedforward_modules`
            help_text = hp.help or f"The modules whose layers get `{hp.flag}` set"
            return HyperparameterPlan(name, "Optional[Union[list[str], set[str], str]]", "None", help_text, [], hp)
        if hp.type == "list":
            annotation = f"Optional[list[{hp.item}]]"
        else:
            annotation = _PY_TYPES[hp.type]
            if hp.nullable:
                annotation = f"Optional[{annotation}]"
        default = repr(hp.default)
        checks: list[tuple[str, str]] = []
        guard = f"self.{name} is not None and " if hp.nullable else ""
        bounds = [("min", "<", ">="), ("max", ">", "<="), ("gt", "<=", ">"), ("lt", ">=", "<")]
        for attr, bad_op, good_op in bounds:
            limit = getattr(hp, attr)
            if limit is not None:
                shown = _num(limit, hp.type)
                checks.append(
                    (
                        f"{guard}self.{name} {bad_op} {shown}",
                        f"`{name}` must be {good_op} {shown}, got {{self.{name}}}",
                    )
                )
        if hp.choices is not None:
            checks.append(
                (
                    f"{guard}self.{name} not in {tuple(hp.choices)!r}",
                    f"`{name}` must be one of {hp.choices}, got {{self.{name}!r}}",
                )
            )
        return HyperparameterPlan(name, annotation, default, hp.help or name.replace("_", " "), checks, hp)

    def derived(self) -> dict[str, Expression]:
        exprs = {}
        for index, (name, text) in enumerate(self.spec.derived.items()):
            exprs[name] = self.parse(f"derived.{name}", text, self.scalar_names(index), tensor=False)
        return exprs

    def weight_shape(self, name: str, weight: Weight) -> list[Expression]:
        exprs = []
        for index, entry in enumerate(weight.shape):
            where = f"weights.{name}.shape[{index}]"
            if isinstance(entry, int) and entry <= 0:
                raise self.fail(where, f"a dimension must be positive, got {entry}")
            exprs.append(self.parse(where, entry, self.scalar_names(), tensor=False))
        return exprs

    def forwards(self) -> dict[str, Expression]:
        # a method that cannot be merged and has no `delta_weight` has no delta to read
        no_delta = not self.spec.mergeable and self.delta is None
        names = self.tensor_names() | {"x", "base"} | (set() if no_delta else {"delta_weight"})
        functions = {"layer_op"} | ({"dropout"} if self.spec.dropout else set())
        exprs: dict[str, Expression] = {}
        for key, text in self.spec.forward.items():
            family = family_of_forward_key(key)
            if family is None:
                raise self.fail(f"forward.{key}", "Conv1D layers share the `Linear` forward; use the key `Linear`")
            if not any(t in self.spec.layers for t in family.base_types):
                raise self.fail(f"forward.{key}", f"layer type not listed in `layers` ({', '.join(self.spec.layers)})")
            exprs[key] = self.parse(f"forward.{key}", text, names, functions)
        return exprs

    def parse_values(self) -> dict[str, Expression]:
        """The spec's named tensors, in order: each reads weights, scalars, dims, `weight` and earlier values."""
        exprs: dict[str, Expression] = {}
        for index, (name, item) in enumerate(self.spec.values.items()):
            exprs[name] = self.parse(f"values.{name}", tensor_value(item).expr, self.tensor_names(index))
        return exprs

    def closure(self, names: Any) -> set[str]:
        """`names` and every name the values among them read, through earlier values."""
        out = set(names)
        for name in reversed(list(self.values)):
            if name in out:
                out |= self.values[name].names
        return out

    def value_plans(self, exprs: list[Expression | None]) -> list[ValuePlan]:
        """A getter per value an expression reads directly; the values those read are computed inside it."""
        read = set().union(*(e.names for e in exprs if e is not None))
        plans = []
        dims = {d: DIM_CODE[d] for d in self.dims}
        for name in [n for n in self.values if n in read]:
            needed = self.closure({name})
            steps = [n for n in self.values if n in needed and n != name]
            direct = needed - set(self.values)
            # tensors created from sizes (torch.zeros(...)) follow the adapter's first float weight it reads
            floats = [n for n, w in self.spec.weights.items() if w.dtype == "float"]
            reference = next((n for n in floats if n in direct), floats[0])
            direct.add(reference)
            # a shared weight reads the model's tensor (`attr`), cut to this layer's slice
            bindings = [
                (n, f"self.{self.attr(n)}[adapter_name]{self.slices.get(n, '')}")
                for n in self.spec.weights
                if n in direct
            ] + [(n, f"self.{self.prefix}{n}[adapter_name]") for n in self.stored if n in direct]
            if "weight" in direct:
                bindings.append(("weight", "self._canonical_weight()"))
            upcast = [n for n in floats if n in direct]

            def code(value: str) -> str:
                return render(with_creation_kwargs(self.values[value], reference), dims)

            plans.append(ValuePlan(name, f"_get_{name}", bindings, upcast, [(n, code(n)) for n in steps], code(name)))
        return plans

    def mark_stored(self, expr: Expression) -> None:
        for name in sorted(expr.names):
            if name in self.hp or name in self.spec.derived or name in self.flags:
                self.stored.setdefault(name, None)

    # -- rendering helpers ----------------------------------------------------------------------------------
    def update_layer_names(self) -> dict[str, str]:
        """How spec names read inside `update_layer` (config values, derived locals, dims)."""
        mapping = {n: f"config.{n}" for n in self.hp}
        mapping.update({flag: flag for flag in self.flags})  # update_layer's own arguments
        mapping.update({d: DIM_CODE[d] for d in self.dims})
        mapping.update(_SCALAR_CONST)
        return mapping

    def stored_names(self) -> dict[str, str]:
        """How scalar names read in per-adapter methods once stored on the layer."""
        mapping = {n: f"self.{self.prefix}{n}[adapter_name]" for n in self.stored}
        mapping.update({d: DIM_CODE[d] for d in self.dims})
        mapping.update(_SCALAR_CONST)
        return mapping

    def scalar_plan(self, name: str) -> ScalarPlan:
        if name in self.flags:
            return ScalarPlan(name, f"{self.prefix}{name}", "bool", name)
        if name in self.hp:
            hp = self.hp[name]
            annotation = f"list[{hp.item}]" if hp.type == "list" else _PY_TYPES[hp.type]
            if hp.nullable or hp.type == "list":
                annotation = f"Optional[{annotation}]"
            return ScalarPlan(name, f"{self.prefix}{name}", annotation, f"config.{name}")
        source = str(self.spec.derived[name]).strip()
        # `int(...)` makes an integer (a count or a size tensor functions take); anything else may be a float
        annotation = "int" if source.startswith("int(") and source.endswith(")") else "float"
        return ScalarPlan(name, f"{self.prefix}{name}", annotation, name)

    def weight(self, name: str, weight: Weight, shape: list[Expression]) -> WeightPlan:
        mapping = self.update_layer_names()
        shape_code = []
        for expr in shape:
            code = render(expr, mapping, _SCALAR_MATH)
            simple = expr.tree.__class__.__name__ in ("Name", "Constant") and (
                not expr.names
                or all(
                    n in UNIVERSAL_DIMS or self.hp.get(n, None) is not None and self.hp[n].type == "int"
                    for n in expr.names
                )
            )
            shape_code.append(code if simple else f"int({code})")
        if any(x.calls & set(_SCALAR_MATH) for x in shape):
            self.imports_math = True
        ndim = len(weight.shape)
        attr = self.attr(name)
        target = f"self.{attr}[adapter_name]"
        if isinstance(weight.init, InitExpr):
            return WeightPlan(
                name=name,
                attr=attr,
                shape_code=shape_code,
                init_lines=[],
                # a drawing init expression (HRA's paired columns) may be replaced by a plain draw
                random_init_lines=self.init_lines(f"weights.{name}.random_init", weight.random_init, target, ndim)
                if weight.random_init is not None
                else [],
                init_by_class={},
                trainable=weight.trainable,
                ndim=ndim,
                init_expr=self.init_expr(name, weight.init.expr),
                dtype=weight.dtype,
                persistent=weight.persistent,
            )
        random_init = weight.random_init or ("kaiming_uniform" if ndim >= 2 else "normal")
        if weight.shared:
            # initialised once by the model (see `shared_weight`), whatever `init_weights` says
            init_lines: list[str] = []
            random_init_lines: list[str] = []
        else:
            init_lines = self.init_lines(f"weights.{name}.init", weight.init, target, ndim)
            random_init_lines = self.init_lines(f"weights.{name}.random_init", random_init, target, ndim)
        return WeightPlan(
            name=name,
            attr=attr,
            shape_code=shape_code,
            init_lines=init_lines,
            random_init_lines=random_init_lines,
            init_by_class=self.init_overrides(name, weight, target, ndim),
            trainable=weight.trains,
            ndim=ndim,
            shared=weight.shared,
            slice_code=self.slices.get(name, ""),
        )

    def init_expr(self, name: str, text: str) -> str:
        """The code of an `init: {expr}`, evaluated once in update_layer (names: config values, derived locals,
        dims, `weight`); `randperm(n, seed=s)` becomes torch's seeded permutation."""
        where = f"weights.{name}.init.expr"
        expr = self.parse(where, text, self.scalar_names() | {"weight"}, {"randperm", *RANDOM_DRAWS})
        tree = copy.deepcopy(expr.tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RANDOM_DRAWS:
                self.random_draw(where, node)
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "randperm":
                seed = [kw.value for kw in node.keywords if kw.arg == "seed"]
                if len(node.args) + len(seed) != 2 or len(node.keywords) != len(seed) or len(node.args) > 2:
                    raise self.fail(where, "`randperm` takes the size and a seed: `randperm(n, seed=...)`")
                size, seed_node = node.args[0], (node.args[1] if len(node.args) == 2 else seed[0])
                # a CPU generator of its own, as PEFT's FourierFT: the same permutation on every device and run
                generator = ast.parse("torch.Generator().manual_seed(SEED)", mode="eval").body
                assert isinstance(generator, ast.Call)
                generator.args = [seed_node]
                node.func = ast.parse("torch.randperm", mode="eval").body
                node.args = [size]
                node.keywords = [ast.keyword(arg="generator", value=generator)]
        if _may_alias(tree):
            # `weight` itself (or a view of it) would alias the base weight, which merging changes
            tree = ast.Call(func=ast.Attribute(value=tree, attr="clone", ctx=ast.Load()), args=[], keywords=[])
        expr = Expression(source=expr.source, tree=tree, names=expr.names, calls=expr.calls)
        expr = with_creation_kwargs(expr, "weight")
        if "weight" in expr.names or ast.unparse(expr.tree) != ast.unparse(tree):
            self.computed_reads_weight = True
        return render(expr, self.update_layer_names(), _SCALAR_MATH)

    def random_draw(self, where: str, node: ast.Call) -> None:
        """`kaiming_uniform(rows, cols, a=...)` -> `nn.init.kaiming_uniform_(torch.empty(rows, cols), a=...)`, in
        place: a new fp32 CPU tensor drawn from torch's global RNG, as PEFT's own inits draw (HRA's half_u)."""
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        allowed = RANDOM_DRAWS[name]
        wrong = [kw.arg for kw in node.keywords if kw.arg not in allowed]
        if not node.args or wrong:
            args = ", ".join(f"{a}=..." for a in allowed)
            raise self.fail(where, f"`{name}` takes the shape and keywords: `{name}(rows, cols, {args})`")
        empty = ast.Call(func=ast.parse("torch.empty", mode="eval").body, args=node.args, keywords=[])
        node.func = ast.parse(f"nn.init.{name}_", mode="eval").body
        node.args = [empty]

    def init_overrides(self, name: str, weight: Weight, target: str, ndim: int) -> dict[str, list[str]]:
        overrides = {}
        for layer_type, init in weight.init_by_layer.items():
            where = f"weights.{name}.init_by_layer.{layer_type}"
            family = family_of_forward_key(layer_type)
            if family is None:
                raise self.fail(where, "Conv1D layers share the `Linear` class; use the key `Linear`")
            if layer_type not in self.spec.layers:
                raise self.fail(where, f"layer type not listed in `layers` ({', '.join(self.spec.layers)})")
            overrides[family.class_name] = self.init_lines(where, init, target, ndim)
        return overrides

    # -- shared weights --------------------------------------------------------------------------------------------
    def check_shared(self) -> None:
        """Shared weights: what the generated model can size, slice and initialise once per adapter."""
        shared = [n for n, w in self.spec.weights.items() if w.shared]
        if not shared:
            return
        if len(shared) == len(self.spec.weights):
            raise self.fail(
                f"weights.{shared[0]}.shared",
                "at least one weight must be per layer (not shared): it holds the layer's adapters",
            )
        trained = [n for n in shared if self.spec.weights[n].trains]
        if trained and len(trained) < len(shared):
            frozen = next(n for n in shared if n not in trained)
            raise self.fail(
                f"weights.{frozen}.trainable",
                f"shared weights are all trainable or all frozen, but {trained[0]} is trainable and {frozen} is not "
                "(the model holds them in one kind of dict, saved or drawn from the key alike)",
            )
        for name in SHARED_CONFIG_FIELDS if not trained else ():
            if name in self.hp:
                raise self.fail(
                    f"hyperparameters.{name}", f"`{name}` is a field the generated config adds for shared weights"
                )
        allowed = set(self.hp) | set(UNIVERSAL_DIMS)
        for name in shared if not trained else ():
            if self.prefix in f"shared_{name}":
                raise self.fail(
                    f"weights.{name}.shared",
                    f"its attribute `shared_{name}` contains the method's prefix `{self.prefix}`, which PEFT would read "
                    "as a per-layer weight; rename the weight or the method",
                )
            for index, entry in enumerate(self.spec.weights[name].shape):
                where = f"weights.{name}.shape[{index}]"
                expr = self.parse(where, entry, self.scalar_names(), tensor=False)
                other = sorted(expr.names - allowed)
                if other:
                    raise self.fail(
                        where,
                        f"a shared weight's shape may use hyperparameters, in_features and out_features only, not "
                        f"{', '.join(other)} (the model sizes it before any layer exists)",
                    )

    def shared_slice(self, shape: list[Expression]) -> str:
        """`[...]` taking one layer's part of a shared tensor: entries that read the layer's dims are cut to them
        (`[:, : self.in_features]`), the others are whole (they are the same for every layer of an adapter)."""
        entries = []
        for expr in shape:
            if expr.names & set(UNIVERSAL_DIMS):
                self.mark_stored(expr)
                entries.append(f":{_int_code(render(expr, self.stored_names(), _SCALAR_MATH), expr, self.hp)}")
            else:
                entries.append(":")
        while entries and entries[-1] == ":":
            entries.pop()
        return f"[{', '.join(entries)}]" if entries else ""

    def shared_weight(self, name: str, weight: Weight, shape: list[Expression]) -> SharedWeightPlan:
        mapping = {n: f"config.{n}" for n in self.hp}
        mapping.update({d: d for d in UNIVERSAL_DIMS})
        mapping.update(_SCALAR_CONST)
        shape_code = [_int_code(render(expr, mapping, _SCALAR_MATH), expr, self.hp) for expr in shape]
        where = f"weights.{name}.init"
        assert not isinstance(weight.init, InitExpr)  # refused for shared weights by the spec model
        call = weight.init if isinstance(weight.init, InitCall) else InitCall(name=weight.init)
        imports_math = self.imports_math  # the line goes to the model, not the layer
        line = self.init_lines(where, call, "shared", len(weight.shape), names=set(self.hp), mapping=mapping)[0]
        self.imports_math = imports_math
        if call.name not in ("zeros", "ones", "constant") and not weight.trains:
            line = line[:-1] + ", generator=generator)"
        dims = tuple(d for d in UNIVERSAL_DIMS if any(d in expr.names for expr in shape))
        return SharedWeightPlan(
            name=name, attr=self.attr(name), shape_code=shape_code, init_line=line, dims=dims, trainable=weight.trains
        )

    def attr(self, name: str) -> str:
        """The attribute holding a weight: `<prefix><name>`; a shared one `shared_<name>`, outside the method's prefix
        (like VeRA's `vera_A` outside `vera_lambda_`), so that PEFT does not take the layers' references to the model's
        tensor for per-layer weights (missing from a checkpoint, which holds the tensor once)."""
        weight = self.spec.weights[name]
        # a trainable shared weight keeps the prefix, as VB-LoRA's `vblora_vector_bank`: PEFT trains and saves the
        # method's parameters by their prefix (the layers' references are filled in on load, see the model)
        return f"shared_{name}" if weight.shared and not weight.trains else f"{self.prefix}{name}"

    def init_lines(
        self,
        where: str,
        init: Any,
        target: str,
        ndim: int,
        names: set[str] | None = None,
        mapping: dict[str, str] | None = None,
    ) -> list[str]:
        """`names`/`mapping`: what the arguments may read and how (default: scalars stored on the layer)."""
        call = init if isinstance(init, InitCall) else InitCall(name=init)
        if call.name in _NEEDS_2D and ndim < 2:
            raise self.fail(where, f"`{call.name}` needs a weight with at least 2 dims (this one has {ndim})")
        given = {k: v for k, v in call.model_dump(exclude={"name"}).items() if v is not None}
        allowed = {
            "zeros": (),
            "ones": (),
            "constant": ("value",),
            "normal": ("mean", "std"),
            "uniform": ("a", "b"),
            "kaiming_uniform": ("a",),
            "kaiming_normal": ("a",),
            "xavier_uniform": ("gain",),
            "xavier_normal": ("gain",),
            "orthogonal": ("gain",),
        }[call.name]
        extra = set(given) - set(allowed)
        if extra:
            raise self.fail(where, f"`{call.name}` takes no argument {', '.join(sorted(extra))}")
        if call.name == "constant" and "value" not in given:
            raise self.fail(where, "`constant` needs `value`")
        args = []
        for key in allowed:
            if key in given:
                expr = self.parse(
                    f"{where}.{key}", given[key], self.scalar_names() if names is None else names, tensor=False
                )
                if mapping is None:
                    self.mark_stored(expr)
                keyword = "val" if key == "value" else key  # torch's nn.init.constant_(tensor, val)
                args.append(f"{keyword}={render(expr, mapping or self.stored_names(), _SCALAR_MATH)}")
        if call.name == "kaiming_uniform" and "a" not in given:
            # nn.Linear's own default, so an adapter factor is initialised like the layer it mirrors
            args.append("a=math.sqrt(5)")
            self.imports_math = True
        return [f"nn.init.{call.name}_({', '.join([target, *args])})"]

    def bindings(self, names: set[str], value_cast: str = "") -> list[tuple[str, str]]:
        """Locals for the weights, stored scalars and values among `names`: (name, code reading this adapter's
        value; values cast with `value_cast`, e.g. `.to(x.dtype)`); a shared weight reads the slice this layer
        needs."""
        bound = [
            (
                n,
                f"self.{self.attr(n) if n in self.spec.weights else self.prefix + n}[adapter_name]{self.slices.get(n, '')}",
            )
            for n in [*self.spec.weights, *self.stored]
            if n in names
        ]
        return bound + [(n, f"self._get_{n}(adapter_name){value_cast}") for n in self.values if n in names]

    def delta_plan(self, delta: Expression | None) -> DeltaPlan:
        floats = [n for n, w in self.spec.weights.items() if w.dtype == "float"]
        if delta is None:
            # `_canonical_delta` returns zeros of the weight's shape
            return DeltaPlan([], floats[0], [], False, "")
        used_weights = [n for n in floats if n in delta.names] or floats[:1]
        # the dtype comes from a per-layer weight where there is one (a shared tensor is cast by whichever layer
        # moved it last)
        used_weights.sort(key=lambda n: self.spec.weights[n].shared)
        dims = {d: DIM_CODE[d] for d in self.dims}
        names = set(delta.names) - set(self.values)
        return DeltaPlan(
            value_bindings=[
                (n, f"self._get_{n}(adapter_name).to({used_weights[0]}.dtype)")
                for n in self.values
                if n in delta.names
            ],
            bindings=self.bindings(names | set(used_weights[:1])),
            dtype_of=used_weights[0],
            fp32_names=used_weights,
            reads_weight="weight" in delta.names,
            expression=render(with_creation_kwargs(delta, used_weights[0]), dims),
            fp32_everywhere=uses_fft(delta),
        )

    def merge_plan(self, expr: Expression, op: str) -> MergePlan:
        form = self.merge_form
        if form.composition in ("input_matrix", "output_matrix"):
            matrix = "self._matrix(adapter_name)"
            if op == "/":  # unmerge: the inverse, or the transpose the spec declares to be it (see `merge_form`)
                matrix = f"torch.linalg.inv({matrix})" if form.inverse == "inv" else f"{matrix}.T"
            matrix = f"{matrix}.to(weight.dtype)"
            code = f"weight @ {matrix}" if form.composition == "input_matrix" else f"{matrix} @ weight"
            return MergePlan([], [], False, code)
        if self.merge_form.composition == "selected":
            condition = self.merge_form.input_condition()
            scale = [("scale", "self._scale(adapter_name).to(orig_weight.dtype)")]
            if condition is None:
                return MergePlan(scale, [], False, f"weight {op} scale[:, None]")
            indexed = "(scale[None, :] if self._scales_input(adapter_name) else scale[:, None])"
            return MergePlan(scale, [], False, f"weight {op} {indexed}")
        if self.merge_form.composition != "additive":
            # the merge's vector is computed by `_scale`, which the forward uses too
            index = "[:, None]" if self.merge_form.composition == "output" else "[None, :]"
            return MergePlan([], [], False, f"weight {op} self._scale(adapter_name){index}.to(weight.dtype)")
        dims = {d: DIM_CODE[d] for d in self.dims}
        return MergePlan(
            bindings=self.bindings(set(expr.names)),
            cast_names=[n for n in [*self.spec.weights, *self.values] if n in expr.names],
            uses_delta="delta_weight" in expr.names,
            expression=render(expr, dims),
        )

    def scale_plan(self, scale: ast.expr) -> ScalePlan:
        """The merge's vector, computed like the delta (`weight` is the pre-merge weight)."""
        expr = Expression(source=ast.unparse(scale), tree=scale, names=frozenset(_names_in(scale)))
        dims = {d: DIM_CODE[d] for d in self.dims}
        return ScalePlan(self.bindings(set(expr.names)), "weight" in expr.names, render(expr, dims))

    def ranks(self) -> dict[str, int]:
        """Tensor rank of every name a delta may read (a `[1]`-shaped weight broadcasts like a scalar)."""
        ranks = {n: 0 for n in self.scalar_names() if n not in self.hp or self.hp[n].type != "list"}
        ranks.update({n: 0 if w.shape == [1] else len(w.shape) for n, w in self.spec.weights.items()})
        ranks["weight"] = 2
        return ranks

    def layer_class(self, family: LayerFamily, forward: Expression | None) -> LayerClassPlan:
        plan = self._layer_class(family, forward)
        plan.uses_channel_view = plan.forward == "output_scale" or self.spec.delta_bias is not None
        return plan

    def _layer_class(self, family: LayerFamily, forward: Expression | None) -> LayerClassPlan:
        dims = {d: DIM_CODE[d] for d in self.dims}
        torch_classes, base_types = self.torch_classes(family), self.base_types(family)
        # dropout on an embedding's integer indices makes no sense (PEFT's LoRA skips it there too)
        use_dropout = bool(self.spec.dropout) and family.kind != "embedding"
        x_in = "dropout(x)" if use_dropout else "x"
        dropout = [("dropout", f"self.{self.prefix}dropout[adapter_name]")] if use_dropout else []
        composition = self.merge_form.composition
        if composition in ("input_matrix", "output_matrix"):
            # a convolution's input cannot be multiplied by a matrix on its (in_channels x kernel) view, nor (grouped)
            # its output: it convolves with the transformed weight instead
            matrix_kind: ForwardKind = "input_matrix" if composition == "input_matrix" else "output_matrix"
            if family.kind == "conv":
                matrix_kind = "conv_matrix"
            return LayerClassPlan(family, torch_classes, base_types, matrix_kind, [], "", "x", False)
        if composition == "selected":
            # input-scaling adapters are applied by the shared forward; the class scales the output
            return LayerClassPlan(family, torch_classes, base_types, "output_scale", [], "", "x", False, selected=True)
        if composition != "additive":
            kind: ForwardKind = "output_scale" if composition == "output" else "input_scale"
            return LayerClassPlan(family, torch_classes, base_types, kind, [], "", "x", False)
        if self.delta is None and self.spec.mergeable:
            return LayerClassPlan(family, torch_classes, base_types, "bias_only", [], "", "x", False)
        if forward is not None:
            names = set(forward.names)
            bindings = self.bindings(names, ".to(x.dtype)")
            if forward.uses("dropout"):
                bindings.append(("dropout", f"self.{self.prefix}dropout[adapter_name]"))
            if "weight" in names:
                bindings.append(("weight", "self._canonical_weight()"))
            if "delta_weight" in names:
                bindings.append(("delta_weight", "self._canonical_delta(adapter_name)"))
            code = render(forward, dims, {"layer_op": "self._layer_op"})
            return LayerClassPlan(
                family, torch_classes, base_types, "spec", bindings, code, x_in, forward.uses("layer_op"),
                reads_base="base" in names, casts_base="base" in names and not self.spec.mergeable,
            )  # fmt: skip
        assert self.delta is not None  # check_non_mergeable: every class without a forward has a delta
        product = factorise(self.delta.tree, self.ranks())
        if product is None:
            # by linearity, base(x) + op(x, delta) for the layer's own op (linear, embedding, conv)
            return LayerClassPlan(family, torch_classes, base_types, "dense", dropout, "", x_in, True)
        bindings = self.bindings(set(self.delta.names), ".to(x.dtype)") + dropout
        if "weight" in self.delta.names:
            bindings.append(("weight", "self._canonical_weight()"))
        tree = _apply_factors(family, product, ast.parse(x_in, mode="eval").body)
        expr = Expression(source=ast.unparse(tree), tree=tree, names=self.delta.names)
        uses_layer_op = family.kind != "linear"  # Linear applies its factors with F.linear directly
        return LayerClassPlan(
            family, torch_classes, base_types, "factored", bindings, render(expr, dims), x_in, uses_layer_op
        )

    def base_types(self, family: LayerFamily) -> list[str]:
        return [t for t in family.base_types if t in self.spec.layers]

    def torch_classes(self, family: LayerFamily) -> list[str]:
        return [TORCH_CLASSES[t] for t in family.base_types if t in self.spec.layers]


def ast_dump(expr: Expression) -> str:
    return ast.unparse(expr.tree)


def _names_in(node: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _call(func: str, *args: ast.expr) -> ast.expr:
    return ast.Call(func=ast.parse(func, mode="eval").body, args=list(args), keywords=[])


def _apply_factors(family: LayerFamily, product: Any, x_in: ast.expr) -> ast.expr:
    """The update `M_1 @ ... @ M_k * factors` applied to the input without building it: the last factor the
    way the base layer applies its weight (F.linear, an embedding lookup, a convolution with the base layer's
    kernel, stride, padding...), each earlier one as a linear map on the features (a 1x1 convolution for convs,
    as PEFT's LoRA does), then the scalars."""
    operands = product.operands()
    first = operands[-1]
    out = _call("F.linear", x_in, first) if family.kind == "linear" else _call("self._layer_op", x_in, first)
    for operand in reversed(operands[:-1]):
        if family.kind == "conv":
            kernel = ast.Subscript(
                value=operand,
                slice=ast.Tuple(elts=[ast.Slice(), ast.Slice(), *[ast.Constant(None)] * family.spatial_dims]),
            )
            out = _call(family.conv_fn or "", out, kernel)
        else:
            out = _call("F.linear", out, operand)
    for op, factor in product.scalars:
        out = ast.BinOp(out, ast.Mult() if op == "*" else ast.Div(), factor)
    if product.negative:
        out = ast.UnaryOp(ast.USub(), out)
    return out


# Tensor methods and attributes whose result may share memory with their input.
_VIEWS = {"T", "mT", "real", "imag", "reshape", "view", "transpose", "t", "flatten", "squeeze", "unsqueeze"}
_VIEWS |= {"contiguous", "detach", "to", "expand", "permute", "float"}


def _may_alias(node: ast.expr) -> bool:
    """Whether the value of `node` may be (a view of) a tensor it reads, rather than a new one."""
    if isinstance(node, (ast.Name, ast.Subscript)):
        return True
    if isinstance(node, ast.Attribute):
        return node.attr in _VIEWS
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _VIEWS:
        return _may_alias(node.func.value)
    return False


SHARED_CONFIG_FIELDS = ("projection_prng_key", "save_projection")


def _int_code(code: str, expr: Expression, hp: dict[str, Hyperparameter]) -> str:
    """`code` as an int: bare names of dims and int hyperparameters already are."""
    simple = isinstance(expr.tree, (ast.Name, ast.Constant)) and all(
        n in UNIVERSAL_DIMS or n in hp and hp[n].type == "int" for n in expr.names
    )
    return code if simple else f"int({code})"


def _num(value: float, type_: str) -> str:
    if type_ == "int" and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _unknown_dim(message: str, available: set[str]) -> str | None:
    from scaffold.plan.layers import ALL_DIMS

    for dim in ALL_DIMS:
        if f"unknown name `{dim}`" in message and dim not in available:
            return f"dim `{dim}` is not defined for every layer type in `layers`"
    return None
