"""The spec's expression language: small torch expressions, parsed and checked, never evaluated.

A spec writes its math (`delta_weight: B @ A * scaling`) as Python expression syntax. We parse it with `ast`,
walk every node against a whitelist, and keep the tree; the renderer later prints it back with `ast.unparse`
after renaming spec names to the generated code's names. Nothing here ever calls `eval` or `exec`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class ExpressionError(ValueError):
    """An expression broke a rule of the spec language; the message says which."""


# Functions reachable as `torch.<name>`. Pure tensor math only: nothing that touches files, devices or globals.
TORCH_FUNCTIONS = frozenset(
    {
        "abs", "addmm", "bmm", "block_diag", "cat", "clamp", "cos", "cumsum", "diag", "diag_embed", "diagonal",
        "einsum", "exp", "eye", "flatten", "kron", "log", "matmul", "maximum", "mean", "minimum", "mm", "mul",
        "norm", "ones", "ones_like", "outer", "prod", "reshape", "rsqrt", "sigmoid", "sign", "sin", "softmax",
        "sqrt", "square", "stack", "sum", "tanh", "transpose", "where", "zeros", "zeros_like",
        # index tensors: gather and scatter (issue #10)
        "gather", "index_select", "scatter", "scatter_add", "sort", "take", "topk", "unravel_index", "argsort", "full",
        # linear algebra and structured matrices (OFT, HRA): triangles, their indices, ranges
        "arange", "tril", "tril_indices", "triu", "triu_indices",
        # paired columns (HRA's symmetric init)
        "repeat_interleave",
    }
)  # fmt: skip
# Calls that create a float tensor from sizes: the generated code gives them the dtype and device of the adapter's
# weights (the oracle: float64), unless the expression names them.
CREATION_FUNCTIONS = frozenset({"torch.zeros", "torch.ones", "torch.eye", "torch.full"})
# Functions reachable as `torch.fft.<name>`.
TORCH_FFT_FUNCTIONS = frozenset(
    {"fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "fftshift", "ifftshift"}
)
# Functions reachable as `torch.linalg.<name>`.
TORCH_LINALG_FUNCTIONS = frozenset(
    {
        "norm", "vector_norm", "matrix_norm", "qr", "svd",
        "solve", "inv", "matrix_exp", "matrix_power", "householder_product",
    }
)  # fmt: skip
# Functions reachable as `F.<name>` (torch.nn.functional).
F_FUNCTIONS = frozenset(
    {
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "embedding",
        "gelu", "linear", "normalize", "pad", "relu", "sigmoid", "silu", "softmax", "tanh",
    }
)  # fmt: skip
# Tensor methods and attributes, e.g. `A.T`, `W.reshape(...)`.
TENSOR_METHODS = frozenset(
    {
        "T", "mT", "abs", "clamp", "contiguous", "detach", "diag", "exp", "expand", "flatten", "float", "mean",
        "norm", "permute", "reshape", "shape", "sqrt", "squeeze", "sum", "t", "transpose", "unsqueeze", "view",
        "dtype", "device", "to", "numel", "size",
        # index tensors and complex results (FFT)
        "gather", "index_add", "index_put", "index_select", "scatter", "scatter_add", "take", "long", "real", "imag",
        "repeat_interleave",
    }
)  # fmt: skip
# Plain Python math allowed in scalar expressions (derived values, shapes, init arguments).
SCALAR_FUNCTIONS = frozenset({"sqrt", "log", "exp", "min", "max", "abs", "int", "float", "ceil", "floor"})
SCALAR_CONSTANTS = frozenset({"pi", "e"})

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult)
# `**` on Python ints has no size limit (`9 ** 9 ** 9 ** 9` would hang the generated code): an exponent is a constant
# of at most this magnitude, or a name, and powers do not nest.
MAX_EXPONENT = 64
_UNARYOPS = (ast.UAdd, ast.USub, ast.Not)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _describe(node: ast.AST) -> str:
    return {
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.NamedExpr: "an assignment (:=)",
        ast.Await: "await",
        ast.Yield: "yield",
        ast.YieldFrom: "yield",
        ast.JoinedStr: "an f-string",
        ast.Starred: "a starred argument",
        ast.Dict: "a dict literal",
        ast.Set: "a set literal",
    }.get(type(node), f"`{type(node).__name__}` syntax")


@dataclass
class Expression:
    """A checked expression: its source, its tree, and the spec names it reads."""

    source: str
    tree: ast.expr
    names: frozenset[str] = field(default_factory=frozenset)
    # spec-level functions it calls (`dropout`, `layer_op`)
    calls: frozenset[str] = field(default_factory=frozenset)

    def uses(self, name: str) -> bool:
        return name in self.names or name in self.calls


def parse_expression(
    source: object,
    *,
    names: Iterable[str],
    functions: Iterable[str] = (),
    tensor: bool = True,
) -> Expression:
    """Parse `source` and check it against the language.

    `names` are the identifiers the expression may read (hyperparameters, weights, dims, `x`...). `functions`
    are spec-level callables (e.g. `dropout`). With `tensor=True` torch / F functions and tensor methods are
    allowed; with `tensor=False` only scalar Python math is (for derived values, shapes and init arguments).
    """
    if isinstance(source, bool) or not isinstance(source, (str, int, float)):
        raise ExpressionError(f"expected an expression string, got {type(source).__name__}")
    text = str(source).strip()
    if not text:
        raise ExpressionError("expression is empty")
    try:
        module = ast.parse(text, mode="exec")
    except SyntaxError as exc:
        raise ExpressionError(f"not valid expression syntax ({exc.msg})") from None
    if len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
        if not module.body:
            raise ExpressionError("expression is empty (only a comment)")
        if any(isinstance(statement, (ast.Import, ast.ImportFrom)) for statement in module.body):
            raise ExpressionError("imports are not allowed in an expression")
        if len(module.body) > 1:
            raise ExpressionError(f"a single expression is required, got {len(module.body)} statements")
        raise ExpressionError(f"a single expression is required, got a `{type(module.body[0]).__name__}` statement")
    tree = module.body[0].value
    checker = _Checker(frozenset(names), frozenset(functions), tensor)
    checker.visit(tree)
    return Expression(source=text, tree=tree, names=frozenset(checker.used), calls=frozenset(checker.called))


class _Checker(ast.NodeVisitor):
    def __init__(self, names: frozenset[str], functions: frozenset[str], tensor: bool) -> None:
        self.names = names
        self.functions = functions
        self.tensor = tensor
        self.used: set[str] = set()
        self.called: set[str] = set()

    def generic_visit(self, node: ast.AST) -> None:
        raise ExpressionError(f"{_describe(node)} is not allowed in an expression")

    # -- leaves ---------------------------------------------------------------------------------------------
    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and not self.tensor:
            raise ExpressionError("string constants are only allowed in tensor expressions (e.g. einsum)")
        if not isinstance(node.value, (int, float, bool, str, type(None))):
            raise ExpressionError(f"constant {node.value!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("_"):
            raise ExpressionError(f"name `{node.id}` is not allowed (names may not start with `_`)")
        if node.id in self.names:
            self.used.add(node.id)
        elif not self.tensor and node.id in SCALAR_CONSTANTS:
            pass
        elif node.id in self.functions or node.id in ("torch", "F") or node.id in SCALAR_FUNCTIONS:
            raise ExpressionError(f"`{node.id}` can only be called, not used as a value")
        else:
            raise ExpressionError(f"unknown name `{node.id}`{_known(self.names)}")

    # -- operators ------------------------------------------------------------------------------------------
    def visit_BinOp(self, node: ast.BinOp) -> None:
        if not isinstance(node.op, _BINOPS):
            raise ExpressionError(f"operator `{type(node.op).__name__}` is not allowed")
        if isinstance(node.op, ast.MatMult) and not self.tensor:
            raise ExpressionError("`@` is only allowed in tensor expressions")
        if isinstance(node.op, ast.Pow):
            _check_power(node)
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if not isinstance(node.op, _UNARYOPS):
            raise ExpressionError(f"operator `{type(node.op).__name__}` is not allowed")
        self.visit(node.operand)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for value in node.values:
            self.visit(value)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op in node.ops:
            if not isinstance(op, _CMPOPS):
                raise ExpressionError(f"comparison `{type(op).__name__}` is not allowed")
        self.visit(node.left)
        for comparator in node.comparators:
            self.visit(comparator)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self.visit(node.body)
        self.visit(node.orelse)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        for elt in node.elts:
            self.visit(elt)

    def visit_List(self, node: ast.List) -> None:
        for elt in node.elts:
            self.visit(elt)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not self.tensor:
            raise ExpressionError("indexing is only allowed in tensor expressions")
        self.visit(node.value)
        self.visit(node.slice)

    def visit_Slice(self, node: ast.Slice) -> None:
        for part in (node.lower, node.upper, node.step):
            if part is not None:
                self.visit(part)

    # -- attribute access and calls ---------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            raise ExpressionError(f"attribute `{node.attr}` is not allowed (attributes may not start with `_`)")
        if not self.tensor:
            raise ExpressionError(f"attribute access `.{node.attr}` is only allowed in tensor expressions")
        if _dotted(node) is not None:
            raise ExpressionError(f"`{_dotted(node)}` can only be called, not used as a value")
        if node.attr not in TENSOR_METHODS:
            raise ExpressionError(f"tensor attribute `.{node.attr}` is not in the allowed list")
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id.startswith("_"):
                raise ExpressionError(f"function `{func.id}` is not allowed (names may not start with `_`)")
            if func.id in self.functions:
                self.called.add(func.id)
            elif not self.tensor and func.id in SCALAR_FUNCTIONS:
                self.called.add(func.id)
            else:
                raise ExpressionError(f"unknown function `{func.id}`")
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            if func.attr.startswith("_"):
                raise ExpressionError(f"attribute `{func.attr}` is not allowed (attributes may not start with `_`)")
            if not self.tensor:
                raise ExpressionError(f"`{ast.unparse(func)}` is not allowed in a scalar expression")
            if dotted is not None:
                if not _allowed_dotted(dotted):
                    raise ExpressionError(f"function `{dotted}` is not in the allowed list")
            elif func.attr in TENSOR_METHODS:
                self.visit(func.value)
            else:
                raise ExpressionError(f"tensor method `.{func.attr}()` is not in the allowed list")
        elif isinstance(func, ast.Lambda):
            raise ExpressionError(f"{_describe(func)} is not allowed in an expression")
        else:
            raise ExpressionError("only named functions can be called")
        for arg in node.args:
            self.visit(arg)
        for keyword in node.keywords:
            if keyword.arg is None:
                raise ExpressionError("`**kwargs` is not allowed in an expression")
            self.visit(keyword.value)


def _check_power(node: ast.BinOp) -> None:
    """A power's exponent is a small constant or a name, and neither operand holds another power (so its size is
    bounded by the expression's length, never a tower such as `9 ** 9 ** 9 ** 9`)."""
    exponent = node.right
    while isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, (ast.USub, ast.UAdd)):
        exponent = exponent.operand
    small = (
        isinstance(exponent, ast.Constant)
        and isinstance(exponent.value, (int, float))
        and not isinstance(exponent.value, bool)
        and abs(exponent.value) <= MAX_EXPONENT
    )
    if not (small or isinstance(exponent, ast.Name)):
        raise ExpressionError(
            f"the exponent of `**` must be a number of magnitude at most {MAX_EXPONENT} or a name, "
            f"got `{ast.unparse(node.right)}`"
        )
    if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node.left)):
        raise ExpressionError(f"powers may not be nested (`{ast.unparse(node)}`): write one power")


def _dotted(node: ast.AST) -> str | None:
    """`torch.linalg.norm` -> "torch.linalg.norm" when the chain is rooted at `torch` or `F`, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ("torch", "F"):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _allowed_dotted(dotted: str) -> bool:
    root, _, rest = dotted.partition(".")
    if root == "F":
        return rest in F_FUNCTIONS
    if rest.startswith("linalg."):
        return rest.removeprefix("linalg.") in TORCH_LINALG_FUNCTIONS
    if rest.startswith("fft."):
        return rest.removeprefix("fft.") in TORCH_FFT_FUNCTIONS
    return rest in TORCH_FUNCTIONS


def _known(names: frozenset[str]) -> str:
    shown = sorted(n for n in names if n != "x")
    return f" (known: {', '.join(shown)})" if shown else ""


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: Mapping[str, str], call_mapping: Mapping[str, str]) -> None:
        self.mapping = mapping
        self.call_mapping = call_mapping

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.mapping:
            return ast.copy_location(ast.parse(self.mapping[node.id], mode="eval").body, node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in self.call_mapping:
            node.func = ast.copy_location(ast.parse(self.call_mapping[node.func.id], mode="eval").body, node.func)
            node.args = [self.visit(arg) for arg in node.args]
            node.keywords = [self.visit(kw) for kw in node.keywords]
            return node
        self.generic_visit(node)
        return node


class _CreationKwargs(ast.NodeTransformer):
    def __init__(self, reference: str) -> None:
        self.reference = reference

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if ast.unparse(node.func) in CREATION_FUNCTIONS:
            given = {kw.arg for kw in node.keywords}
            for attr in ("dtype", "device"):
                if attr not in given:
                    value = ast.parse(f"{self.reference}.{attr}", mode="eval").body
                    node.keywords.append(ast.keyword(arg=attr, value=value))
        return node


def with_creation_kwargs(expr: Expression, reference: str) -> Expression:
    """`expr` with `dtype=<reference>.dtype, device=<reference>.device` added to the calls that create a float
    tensor from sizes (`torch.zeros(out_features, in_features)`), so that it follows the adapter's weights (half
    precision, GPU). `reference` is a name (or code) the caller binds."""
    import copy

    if not any(isinstance(n, ast.Call) and ast.unparse(n.func) in CREATION_FUNCTIONS for n in ast.walk(expr.tree)):
        return expr
    tree = _CreationKwargs(reference).visit(copy.deepcopy(expr.tree))
    return Expression(source=expr.source, tree=tree, names=expr.names, calls=expr.calls)


def uses_fft(expr: Expression) -> bool:
    """Whether `expr` calls `torch.fft.*`, which has no half-precision kernels for most sizes."""
    return any(isinstance(n, ast.Call) and ast.unparse(n.func).startswith("torch.fft.") for n in ast.walk(expr.tree))


def render(expr: Expression, mapping: Mapping[str, str] | None = None, calls: Mapping[str, str] | None = None) -> str:
    """Print `expr` as Python source, replacing names (and called functions) by the given code snippets."""
    import copy

    tree = copy.deepcopy(expr.tree)
    tree = _Renamer(mapping or {}, calls or {}).visit(tree)
    return ast.unparse(tree)
