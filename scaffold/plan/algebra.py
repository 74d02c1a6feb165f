"""What the generator can tell about a spec's tensor expressions from their shape alone, without evaluating them.

Two questions are answered here, both on the parsed `ast` of an expression:

- *Can `delta_weight` be applied factor by factor?* A product such as `B @ A * s` or
  `(lb[:, None] * B) @ (ld[:, None] * A)` is a chain of `@` whose operands are computed per call (they are small:
  rank-sized), times scalar, per-row (`v[:, None]`) or per-column (`v[None, :]`, or a 1-D `v`) factors. Such a
  delta is applied as `x -> x A^T -> ... -> B`, never building the (out_features, in_features) matrix
  (`factorise`).
- *How do several adapters compose?* `merge`/`unmerge` decide it (`composition`): `weight + delta_weight` adds
  (each adapter's forward adds its own output), `weight * v[:, None]` scales the output rows (the forward scales
  the output, so two adapters chain like two merges), `weight * v[None, :]` scales the input columns (the forward
  scales the input), `weight @ M` multiplies the weight by a square matrix on the input side (the forward
  transforms the input, last merged adapter first), `M @ weight` on the output side (the forward transforms the
  output, first merged adapter first). Anything else cannot be matched by a forward, and is refused.

Ranks are inferred conservatively: an expression whose rank cannot be told is not factored (it materialises).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


# Ranks a broadcast factor can have against a 2-D (out_features, in_features) matrix.
Rank = Literal["scalar", "vector", "row", "col", "matrix"]


def rank_of(node: ast.expr, ranks: Mapping[str, int]) -> Rank | None:
    """The broadcast role of `node`, from the ranks of the names it reads (None: cannot tell).

    `vector` is a 1-D tensor (it broadcasts over the last dim, like a `col`); `row` is `v[:, None]`, shape
    (n, 1); `col` is `v[None, :]`, shape (1, n).
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return "scalar"
    if isinstance(node, ast.Name):
        return _from_int(ranks.get(node.id))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return rank_of(node.operand, ranks)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
        return _broadcast(rank_of(node.left, ranks), rank_of(node.right, ranks))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        left, right = rank_of(node.left, ranks), rank_of(node.right, ranks)
        return "matrix" if left == right == "matrix" else None
    if isinstance(node, ast.Subscript):
        return _indexed(rank_of(node.value, ranks), node.slice)
    if isinstance(node, ast.Call):
        return _called(node, ranks)
    return None


_BY_NDIM: dict[int, Rank] = {0: "scalar", 1: "vector", 2: "matrix"}


def _from_int(rank: int | None) -> Rank | None:
    return None if rank is None else _BY_NDIM.get(rank)


_ORDER: dict[Rank, int] = {"scalar": 0, "vector": 1, "row": 2, "col": 2, "matrix": 3}


def _broadcast(left: Rank | None, right: Rank | None) -> Rank | None:
    if left is None or right is None:
        return None
    if left == right:
        return left
    if "scalar" in (left, right):
        return right if left == "scalar" else left
    if {left, right} == {"vector", "col"}:
        return "col"
    # row x col, or anything with a matrix: a full matrix
    return "matrix"


def _indexed(value: Rank | None, index: ast.expr) -> Rank | None:
    """`v[:, None]` -> row, `v[None, :]` / `v[None]` -> col, for a 1-D `v`."""
    if value != "vector":
        return None
    parts = index.elts if isinstance(index, ast.Tuple) else [index]
    kinds = ["none" if _is_none(p) else "all" if _is_full_slice(p) else "other" for p in parts]
    if kinds == ["all", "none"]:
        return "row"
    if kinds in (["none", "all"], ["none"]):
        return "col"
    return None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_full_slice(node: ast.expr) -> bool:
    return isinstance(node, ast.Slice) and node.lower is None and node.upper is None and node.step is None


_NORMS = {"torch.linalg.norm", "torch.norm", "torch.linalg.matrix_norm"}
_ELEMENTWISE = {"torch.sqrt", "torch.exp", "torch.abs", "torch.sigmoid", "torch.tanh", "torch.rsqrt", "torch.square"}


def _called(node: ast.Call, ranks: Mapping[str, int]) -> Rank | None:
    name = ast.unparse(node.func)
    if name in _NORMS or isinstance(node.func, ast.Attribute) and node.func.attr == "norm" and name not in _NORMS:
        # the norm of the whole tensor is a scalar; with `dim` it is not (we do not follow dims)
        return "scalar" if not node.keywords and len(node.args) <= (1 if name in _NORMS else 0) else None
    if name in _ELEMENTWISE and len(node.args) == 1 and not node.keywords:
        return rank_of(node.args[0], ranks)
    if name == "F.normalize" and node.args and rank_of(node.args[0], ranks) == "matrix":
        return "matrix"
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("float", "contiguous", "detach"):
        return rank_of(node.func.value, ranks)
    return None


@dataclass
class Factorisation:
    """`delta_weight` as `sign * (M_1 @ ... @ M_k) (*|/) factors...`: the operands in order, and the
    scalar, per-row and per-column factors with their operator (`*` or `/`)."""

    chain: list[ast.expr]
    scalars: list[tuple[str, ast.expr]] = field(default_factory=list)
    rows: list[tuple[str, ast.expr]] = field(default_factory=list)
    cols: list[tuple[str, ast.expr]] = field(default_factory=list)
    negative: bool = False

    def operands(self) -> list[ast.expr]:
        """The chain with the row factors folded into the first operand and the column factors into the last
        (both are small: rank-sized), so the product applies as a plain chain times scalars."""
        chain = list(self.chain)
        for op, factor in self.rows:
            chain[0] = ast.BinOp(chain[0], _OPS[op](), factor)
        for op, factor in self.cols:
            chain[-1] = ast.BinOp(chain[-1], _OPS[op](), factor)
        return chain


_OPS: dict[str, type[ast.operator]] = {"*": ast.Mult, "/": ast.Div}


def factorise(node: ast.expr, ranks: Mapping[str, int]) -> Factorisation | None:
    """`node` as a chain of `@` times broadcast factors, or None when it is not one (it then materialises)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        operands = _flatten_matmul(node)
        if any(rank_of(o, ranks) in ("scalar", "vector", "row", "col") for o in operands):
            return None
        return Factorisation(operands)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = factorise(node.operand, ranks)
        if inner is not None:
            inner.negative = not inner.negative
        return inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        op = "*" if isinstance(node.op, ast.Mult) else "/"
        left = factorise(node.left, ranks)
        if left is not None and _add_factor(left, op, node.right, ranks):
            return left
        if op == "*":
            right = factorise(node.right, ranks)
            if right is not None and _add_factor(right, "*", node.left, ranks, prepend=True):
                return right
    return None


def _flatten_matmul(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return _flatten_matmul(node.left) + _flatten_matmul(node.right)
    return [node]


def _add_factor(
    product: Factorisation, op: str, factor: ast.expr, ranks: Mapping[str, int], prepend: bool = False
) -> bool:
    rank = rank_of(factor, ranks)
    target = {"scalar": product.scalars, "row": product.rows, "col": product.cols, "vector": product.cols}.get(
        rank or "matrix"
    )
    if target is None:
        return False
    target.insert(0, (op, factor)) if prepend else target.append((op, factor))
    return True


# -- composition ------------------------------------------------------------------------------------------------

Composition = Literal["additive", "output", "input", "selected", "input_matrix", "output_matrix"]
# How a matrix merge is undone: with the exact inverse (`torch.linalg.inv(M)`), or with the transpose, which the
# spec author declares to be the inverse (M orthogonal, e.g. a Householder product) by writing it.
Inverse = Literal["inv", "transpose"]


@dataclass
class MergeForm:
    """How the spec's `merge` composes adapters: `additive`, or scaling of the `output` rows / `input` columns of
    the canonical weight by `scale` (a 1-D expression: shape (out_features,) or (in_features,)), or `selected`:
    one of several scaling forms, chosen per adapter and layer by a condition (`branches`); or multiplying it by the
    square matrix `scale` on the input side (`weight @ M`, M of shape (in_features, in_features)) or the output side
    (`M @ weight`, (out_features, out_features)), undone as `inverse` says."""

    composition: Composition
    scale: ast.expr | None = None
    inverse: Inverse | None = None
    # selected: (condition, form) in order; the last condition is None (the `else`)
    branches: list[tuple[ast.expr | None, MergeForm]] = field(default_factory=list)

    def input_condition(self) -> ast.expr | None:
        """selected: the condition under which an adapter scales the input (None: never)."""
        terms: list[ast.expr] = []
        earlier: list[ast.expr] = []
        for test, form in self.branches:
            if form.composition == "input":
                parts = [ast.UnaryOp(ast.Not(), e) for e in earlier] + ([test] if test is not None else [])
                if not parts:
                    terms.append(ast.Constant(True))
                else:
                    terms.append(parts[0] if len(parts) == 1 else ast.BoolOp(ast.And(), parts))
            if test is not None:
                earlier.append(test)
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else ast.BoolOp(ast.Or(), terms)

    def selected_scale(self) -> ast.expr:
        """selected: the vector of the branch an adapter takes, as one conditional expression."""
        expr = self.branches[-1][1].scale
        assert expr is not None
        if all(ast.dump(form.scale) == ast.dump(expr) for _, form in self.branches if form.scale is not None):
            return expr  # one vector, used as rows or columns
        for test, form in reversed(self.branches[:-1]):
            assert test is not None and form.scale is not None
            expr = ast.IfExp(test=test, body=form.scale, orelse=expr)
        return expr


class CompositionError(ValueError):
    """`merge`/`unmerge` have a form no forward can match; `field` is the spec field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_SUPPORTED = (
    "supported: `weight + delta_weight` (additive), `weight * v[:, None]` (scales the output), "
    "`weight * v[None, :]` (scales the input), `weight @ M` / `M @ weight` (a square matrix on the input / output "
    "side)"
)


def merge_form(merge: ast.expr, unmerge: ast.expr, ranks: Mapping[str, int] | None = None) -> MergeForm:
    """Classify `merge` and check that `unmerge` is its inverse (same update, opposite operation). `ranks` (of the
    names the expressions read) tell a square matrix from a broadcast vector (`v[:, None] @ weight` is no rotation)."""
    if isinstance(merge, ast.IfExp):
        return _selected_form(merge, unmerge)
    additive = _additive(merge, ast.Add)
    if additive is not None:
        if not _is_name(additive, "delta_weight"):
            raise CompositionError("merge", f"an additive merge must add `delta_weight` ({_SUPPORTED})")
        undo = _additive(unmerge, ast.Sub)
        if undo is None or not _is_name(undo, "delta_weight"):
            raise CompositionError("unmerge", "must undo the additive merge: `weight - delta_weight`")
        return MergeForm("additive")
    matrix = _matrix_side(merge)
    if matrix is not None and rank_of(matrix[1], ranks or {}) in (None, "matrix"):
        return _matrix_form(*matrix, unmerge)
    scaled = _scaled(merge, ast.Mult)
    if scaled is None:
        raise CompositionError("merge", f"no forward can compose adapters the way it does ({_SUPPORTED})")
    side, scale = scaled
    undo_scaled = _scaled(unmerge, ast.Div)
    if undo_scaled is None or undo_scaled[0] != side or ast.dump(undo_scaled[1]) != ast.dump(scale):
        shown = ast.unparse(scale)
        index = "[:, None]" if side == "output" else "[None, :]"
        raise CompositionError("unmerge", f"must undo the merge: `weight / {shown}{index}`")
    return MergeForm(side, scale)


def _selected_form(merge: ast.IfExp, unmerge: ast.expr) -> MergeForm:
    """`merge_a if cond else merge_b` (nested in the `else` for more): a scaling form per branch, chosen per adapter
    and layer. Input and output scalings commute, so adapters still chain like their merges whatever they chose."""
    branches: list[tuple[ast.expr | None, MergeForm]] = []
    node: ast.expr = merge
    undo: ast.expr = unmerge
    while isinstance(node, ast.IfExp):
        if not isinstance(undo, ast.IfExp) or ast.dump(undo.test) != ast.dump(node.test):
            raise CompositionError(
                "unmerge",
                f"must select with the same condition as `merge`: `... if {ast.unparse(node.test)} else ...`",
            )
        branches.append((node.test, _scaling_branch(node.body, undo.body)))
        node, undo = node.orelse, undo.orelse
    if isinstance(undo, ast.IfExp):
        raise CompositionError("unmerge", "selects between more forms than `merge`")
    branches.append((None, _scaling_branch(node, undo)))
    return MergeForm("selected", branches=branches)


def _scaling_branch(merge: ast.expr, unmerge: ast.expr) -> MergeForm:
    try:
        form = merge_form(merge, unmerge)
    except CompositionError as exc:
        raise CompositionError(exc.field, f"in the branch `{ast.unparse(merge)}`: {exc}") from None
    if form.composition not in ("input", "output"):
        raise CompositionError(
            "merge",
            f"a conditional merge selects between scalings (`weight * v[:, None]`, `weight * v[None, :]`), not "
            f"`{ast.unparse(merge)}`: a forward could not order additive updates against input scalings",
        )
    return form


def bias_scaling(merge_bias: ast.expr, unmerge_bias: ast.expr, form: MergeForm) -> bool:
    """Check `merge_bias`/`unmerge_bias` against a scaling merge; whether the bias is scaled.

    The merged layer computes `W' x + b'`; the forward scales the layer's output, so `b'` must be the bias scaled
    like the rows (`bias * v`, with `v` the output scaling's vector) or the bias unchanged (`bias`). With a
    conditional merge, `merge_bias` selects with the same conditions; input-scaling branches leave the bias alone.
    """
    if form.composition == "additive":
        raise CompositionError("merge_bias", "applies to a scaling `merge`; an additive update uses `delta_bias`")
    if form.composition == "input_matrix":
        raise CompositionError("merge_bias", "`merge` multiplies the input, which leaves the bias alone: remove it")
    if form.composition == "output_matrix":
        return _bias_rotation(merge_bias, unmerge_bias, form)
    if form.composition == "input":
        raise CompositionError("merge_bias", "`merge` scales the input, which leaves the bias alone: remove it")
    branches = form.branches if form.composition == "selected" else [(None, form)]
    scaled: set[bool] = set()
    node, undo = merge_bias, unmerge_bias
    for index, (test, branch) in enumerate(branches):
        if test is not None:
            if not isinstance(node, ast.IfExp) or ast.dump(node.test) != ast.dump(test):
                raise CompositionError(
                    "merge_bias", f"must select like `merge`: `... if {ast.unparse(test)} else ...`"
                )
            if not isinstance(undo, ast.IfExp) or ast.dump(undo.test) != ast.dump(test):
                raise CompositionError(
                    "unmerge_bias", f"must select like `merge`: `... if {ast.unparse(test)} else ...`"
                )
            this, this_undo, node, undo = node.body, undo.body, node.orelse, undo.orelse
        else:
            this, this_undo = node, undo
        if _is_name(this, "bias"):
            if not _is_name(this_undo, "bias"):
                raise CompositionError("unmerge_bias", "must leave the bias alone where `merge_bias` does (`bias`)")
            if branch.composition == "output":
                scaled.add(False)
            continue
        assert branch.scale is not None
        shown = ast.unparse(branch.scale)
        if branch.composition == "input":
            raise CompositionError("merge_bias", "the branch scaling the input must leave the bias alone (`bias`)")
        if not _bias_scaled(this, ast.Mult, branch.scale):
            raise CompositionError(
                "merge_bias", f"must be `bias` or `bias * {shown}` (the bias scaled like the weight's rows)"
            )
        if not _bias_scaled(this_undo, ast.Div, branch.scale):
            raise CompositionError("unmerge_bias", f"must undo `merge_bias`: `bias / {shown}`")
        scaled.add(True)
    if len(scaled) > 1:
        raise CompositionError("merge_bias", "must scale the bias on every output-scaling branch or on none")
    return scaled == {True}


def _bias_rotation(merge_bias: ast.expr, unmerge_bias: ast.expr, form: MergeForm) -> bool:
    """An output-side matrix merge `M @ weight`: the bias is left alone (`bias`) or multiplied by the same matrix
    (`M @ bias`), undone like the weight (`torch.linalg.inv(M) @ bias`, or `M.T @ bias` when `unmerge` uses `M.T`);
    whether it is multiplied."""
    assert form.scale is not None
    shown = ast.unparse(form.scale)
    if _is_name(merge_bias, "bias"):
        if not _is_name(unmerge_bias, "bias"):
            raise CompositionError("unmerge_bias", "must leave the bias alone where `merge_bias` does (`bias`)")
        return False
    if not (
        isinstance(merge_bias, ast.BinOp)
        and isinstance(merge_bias.op, ast.MatMult)
        and _is_name(merge_bias.right, "bias")
        and ast.dump(merge_bias.left) == ast.dump(form.scale)
    ):
        raise CompositionError(
            "merge_bias", f"must be `bias` or `{shown} @ bias` (the bias multiplied like the weight)"
        )
    expected = f"torch.linalg.inv({shown}) @ bias" if form.inverse == "inv" else f"{shown}.T @ bias"
    undo = unmerge_bias
    ok = isinstance(undo, ast.BinOp) and isinstance(undo.op, ast.MatMult) and _is_name(undo.right, "bias")
    if ok:
        assert isinstance(undo, ast.BinOp)
        inverse = undo.left
        if form.inverse == "inv":
            ok = (
                isinstance(inverse, ast.Call)
                and ast.unparse(inverse.func) == "torch.linalg.inv"
                and len(inverse.args) == 1
                and not inverse.keywords
                and ast.dump(inverse.args[0]) == ast.dump(form.scale)
            )
        else:
            ok = (
                isinstance(inverse, ast.Attribute)
                and inverse.attr in ("T", "mT")
                and ast.dump(inverse.value) == ast.dump(form.scale)
            )
    if not ok:
        raise CompositionError("unmerge_bias", f"must undo `merge_bias` as `unmerge` undoes `merge`: `{expected}`")
    return True


def _bias_scaled(node: ast.expr, op: type[ast.operator], scale: ast.expr) -> bool:
    """`bias <op> scale` (or `scale * bias`)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, op)):
        return False
    if _is_name(node.left, "bias"):
        other = node.right
    elif op is ast.Mult and _is_name(node.right, "bias"):
        other = node.left
    else:
        return False
    return ast.dump(other) == ast.dump(scale)


def _matrix_side(node: ast.expr) -> tuple[Composition, ast.expr] | None:
    """`weight @ M` -> ("input_matrix", M); `M @ weight` -> ("output_matrix", M)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)):
        return None
    if _is_name(node.left, "weight") and not reads(node.right, "weight"):
        return "input_matrix", node.right
    if _is_name(node.right, "weight") and not reads(node.left, "weight"):
        return "output_matrix", node.left
    return None


def _matrix_form(side: Composition, matrix: ast.expr, unmerge: ast.expr) -> MergeForm:
    """`unmerge` must multiply by the inverse on the same side: `torch.linalg.inv(M)`, or `M.T` (`M.mT`), which
    declares M orthogonal."""
    shown = ast.unparse(matrix)
    expected = (
        f"`weight @ torch.linalg.inv({shown})`" if side == "input_matrix" else f"`torch.linalg.inv({shown}) @ weight`"
    )
    undo = _matrix_side(unmerge)
    if undo is None or undo[0] != side:
        raise CompositionError(
            "unmerge", f"must undo the merge on the same side: {expected} (or `{shown}.T` for an orthogonal matrix)"
        )
    inverse = undo[1]
    target = ast.dump(matrix)
    if (
        isinstance(inverse, ast.Call)
        and ast.unparse(inverse.func) == "torch.linalg.inv"
        and len(inverse.args) == 1
        and not inverse.keywords
        and ast.dump(inverse.args[0]) == target
    ):
        return MergeForm(side, matrix, "inv")
    if isinstance(inverse, ast.Attribute) and inverse.attr in ("T", "mT") and ast.dump(inverse.value) == target:
        return MergeForm(side, matrix, "transpose")
    raise CompositionError(
        "unmerge",
        f"must undo the merge with the inverse of `{shown}`: {expected}, or `({shown}).T` when it is orthogonal",
    )


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _additive(node: ast.expr, op: type[ast.operator]) -> ast.expr | None:
    """`weight <op> X` (or `X + weight`) -> X."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, op):
        if _is_name(node.left, "weight"):
            return node.right
        if op is ast.Add and _is_name(node.right, "weight"):
            return node.left
    return None


def _scaled(node: ast.expr, op: type[ast.operator]) -> tuple[Composition, ast.expr] | None:
    """`weight <op> v[:, None]` -> ("output", v); `weight <op> v[None, :]` -> ("input", v); `*` commutes."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, op)):
        return None
    if _is_name(node.left, "weight"):
        other = node.right
    elif op is ast.Mult and _is_name(node.right, "weight"):
        other = node.left
    else:
        return None
    if not isinstance(other, ast.Subscript):
        return None
    parts = other.slice.elts if isinstance(other.slice, ast.Tuple) else [other.slice]
    if len(parts) == 2 and _is_full_slice(parts[0]) and _is_none(parts[1]):
        return "output", other.value
    if len(parts) == 2 and _is_none(parts[0]) and _is_full_slice(parts[1]):
        return "input", other.value
    return None


def reads(node: ast.expr, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))
