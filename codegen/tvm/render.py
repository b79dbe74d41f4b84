"""Render a lowered Expr as TVMScript (TensorIR) statements and one result expression.

Names in the text: ``b``, ``h``, ``q``, ``kv`` (int32 scalars bound by the kernel) and ``score`` (float32),
and per loaded tensor T (see ``Expr.tensors()``) a buffer ``T`` of int32 (``int``), float32 (``float``) or
int8 (``bool``: a load is ``T[...] != 0``) whose dims are bound by the kernel.

- Division: :func:`lower_division` runs first, as for Triton, so ``//`` and ``%`` (TVM's floordiv and
  floormod) only see operands proven non-negative; the rest become ``T.truncdiv``/``T.truncmod`` with an
  explicit correction. TVM 0.27's simplifier miscompiles some floordiv of a possibly negative dividend
  inside a buffer index (``tb[(5 - kv) // 3]`` read the wrong element), which this avoids.
- ``==`` and ``!=`` between two bools compare them as int32 (LLVM has no float compare of ``i1``).
- A 0-d tensor is passed as a 1-element buffer and read as ``T[0]``.
- Logic is ``T.And``/``T.Or``/``T.Not``; ``where`` is ``T.if_then_else``, which evaluates only the
  chosen branch. A load outside a bounded extent reads 0: ``T.if_then_else(<in range>, T[...], 0)``.
- Every load and every subexpression used more than once is bound once to a local (``<prefix>0``,
  ``<prefix>1``, ...), so the statements read like the Triton functions' bodies; :func:`render_tvm_row`
  keeps the locals in row buffers instead, for a whole tile row in ``T.vectorized`` loops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from maskir.codegen.common import printer
from maskir.codegen.common.division import lower_division
from maskir.codegen.common.expr import Expr, TensorRef, topo

_CALLS = {
    "min": "T.min",
    "max": "T.max",
    "abs": "T.abs",
    "exp": "T.exp",
    "exp2": "T.exp2",
    "log": "T.log",
    "tanh": "T.tanh",
    "sqrt": "T.sqrt",
    "sin": "T.sin",
    "cos": "T.cos",
    "tdiv": "T.truncdiv",
    "trem": "T.truncmod",
    "and": "T.And",
    "or": "T.Or",
    "not": "T.Not",
    "where": "T.if_then_else",
}
BUFFER_DTYPES = {"bool": "int8", "int": "int32", "float": "float32"}
"""The buffer dtype a runtime tensor is passed in, by the dtype its loads yield."""
_SCALAR = {"bool": "T.bool", "int": "T.int32", "float": "T.float32"}


def _constant(value: bool | int | float, dtype: str) -> printer.Text:
    """A typed literal: ``T.float32(0.5)``, ``T.float32("-inf")``, ``T.int32(3)``, ``T.bool(True)``."""
    if dtype == "float":
        value = float(value)
        text = f'"{value}"' if value != value or abs(value) == float("inf") else repr(value)
        return f"T.float32({text})", printer.ATOM
    return f"{_SCALAR[dtype]}({value!r})", printer.ATOM


def _float(arg: printer.Text, dtype: str) -> printer.Text:
    return arg if dtype == "float" else (f'T.Cast("float32", {arg[0]})', printer.ATOM)


def _load(ref: TensorRef, indices: list[printer.Text]) -> printer.Text:
    index = ", ".join(text for text, _ in indices) or "0"
    value = f"{ref.name}[{index}]"
    checks = []
    for (text, precedence), extent in zip(indices, ref.shape):
        if extent is not None:
            wrapped = printer.wrap((text, precedence), printer.COMPARE + 1)
            checks += [f"{wrapped} >= 0", f"{wrapped} < {extent}"]
    if checks:
        condition = checks[0] if len(checks) == 1 else f"T.And({', '.join(checks[:2])})"
        for check in checks[2:]:
            condition = f"T.And({condition}, {check})"
        value = f"T.if_then_else({condition}, {value}, {'T.int8(0)' if ref.dtype == 'bool' else _zero(ref.dtype)})"
    if ref.dtype == "bool":
        return f"{value} != T.int8(0)", printer.COMPARE
    return value, printer.ATOM


def _zero(dtype: str) -> str:
    return "T.float32(0)" if dtype == "float" else "T.int32(0)"


def _node_text(node: Expr, args: list[printer.Text]) -> printer.Text:
    """TVMScript text of one node given its arguments' texts."""
    op = node.op
    if op == "const":
        return _constant(node.value, node.dtype)
    if op == "var":
        return node.value, printer.ATOM
    if op == "load":
        return _load(node.value, args)
    if op == "truediv":
        left, right = (_float(a, arg.dtype) for a, arg in zip(args, node.args))
        return printer.infix("truediv", [left, right])
    if op == "to_float":
        return f'T.Cast("float32", {args[0][0]})', printer.ATOM
    if op == "neg":
        return printer.prefix(op, args[0])
    if op in ("eq", "ne") and node.args[0].dtype == "bool":
        return printer.infix(op, [(f'T.Cast("int32", {text})', printer.ATOM) for text, _ in args])
    if op in ("floordiv", "mod", "add", "sub", "mul", "lt", "le", "gt", "ge", "eq", "ne"):
        return printer.infix(op, args)
    if op in ("exp", "exp2", "log", "tanh", "sqrt", "sin", "cos"):
        args = [_float(a, arg.dtype) for a, arg in zip(args, node.args)]
    return printer.call(_CALLS[op], args)


def _uses(expr: Expr) -> Counter:
    uses: Counter = Counter()
    for node in topo(expr):
        for arg in node.args:
            uses[arg] += 1
    return uses


_ROW_DTYPES = {"bool": "int8", "int": "int32", "float": "float32"}
"""The dtype of a row buffer holding a local of each Expr dtype (bools as int8 0/1)."""


@dataclass(frozen=True)
class RowText:
    """An Expr rendered for a tile, a row at a time, its locals placed by what they vary with:

    - ``tile_lets``: scalar statements for the whole tile (locals of neither the row nor the lane: a
      load of ``h``), before the row loop;
    - ``lane_lines``: locals of the lane alone (and the tile), each stored into ``<name>[lane]`` by the
      caller's ``T.vectorized`` loop before the row loop: evaluated once per tile, not once per row;
    - ``row_lets``: scalar statements of the row alone, at the top of the row loop (outside the lanes'
      loops, where TVM binds a ``let`` correctly);
    - ``lines[i]``: the locals of both, stored into ``<name>[lane]`` per row, each in its own loop;
    ``buffers`` are the lane-indexed locals' (name, dtype) row buffers to declare, ``result`` the value's
    text over all of them."""

    tile_lets: tuple[str, ...]
    lane_lines: tuple[str, ...]
    row_lets: tuple[str, ...]
    lines: tuple[str, ...]
    buffers: tuple[tuple[str, str], ...]
    result: str


def _bindings(
    expr: Expr,
    bind: Callable[[Expr, printer.Text], printer.Text],
    names: Mapping[str, str],
    also: Callable[[Expr], bool] = lambda node: False,
) -> str:
    """Text of ``expr`` (division lowered) with each load and multiply-used node, and each node ``also``
    picks, passed through ``bind`` (which records a local and returns its text) and variables renamed by
    ``names``."""
    expr = lower_division(expr)
    uses = _uses(expr)
    texts: dict[Expr, printer.Text] = {}
    for node in topo(expr):
        if node.op == "var" and node.value in names:
            text = (names[node.value], printer.ATOM)
        else:
            text = _node_text(node, [texts[a] for a in node.args])
        if node is not expr and node.op not in ("const", "var") and (uses[node] > 1 or node.op == "load" or also(node)):
            text = bind(node, text)
        texts[node] = text
    return texts[expr][0]


def render_tvm(expr: Expr, prefix: str) -> tuple[list[str], str]:
    """(statements, result): TVMScript lines binding ``<prefix>0``, ``<prefix>1``, ... and the text of
    ``expr`` over them. The caller indents the lines and uses the result where ``expr``'s value goes."""
    if not prefix.isidentifier():
        raise ValueError(f"render_tvm needs an identifier prefix, got {prefix!r}.")
    lines: list[str] = []

    def bind(node: Expr, text: printer.Text) -> printer.Text:
        local = f"{prefix}{len(lines)}"
        lines.append(f"{local} = {text[0]}")
        return local, printer.ATOM

    return lines, _bindings(expr, bind, {})


_ROW, _LANE = "row", "lane"


def _variation(expr: Expr, row_vars: frozenset[str], lane_vars: frozenset[str]) -> dict[Expr, frozenset[str]]:
    """Per node of ``expr``: which of the row and the lane its value varies with."""
    varies: dict[Expr, frozenset[str]] = {}
    for node in topo(expr):
        if node.op == "var":
            varies[node] = frozenset(
                tag for tag, names in ((_ROW, row_vars), (_LANE, lane_vars)) if node.value in names
            )
        else:
            varies[node] = frozenset().union(*(varies[arg] for arg in node.args))
    return varies


def _parents_vary(expr: Expr, varies: dict[Expr, frozenset[str]]) -> dict[Expr, frozenset[str]]:
    """Per node of ``expr``: what its parents' values vary with, together."""
    parents: dict[Expr, frozenset[str]] = {}
    for node in topo(expr):
        for arg in node.args:
            parents[arg] = parents.get(arg, frozenset()) | varies[node]
    return parents


def render_tvm_row(
    expr: Expr,
    prefix: str,
    lane: str,
    names: Mapping[str, str],
    *,
    row_vars: frozenset[str] = frozenset(),
    lane_vars: frozenset[str] = frozenset(),
) -> RowText:
    """``expr`` for a whole tile, a row at a time, vectorisable: locals varying with the lane live in
    buffers ``<prefix>0[lane]``, ... instead of ``let`` bindings (TVM 0.27 vectorises a ``let`` inside a
    ``T.vectorized`` loop with the wrong lanes); ``names`` renames variables to text (``q`` ->
    ``T.max(QTOK[c], 0)``: the lane's token). ``row_vars``/``lane_vars`` name the variables that vary
    with the row / the lane (``score`` with both): a subexpression of fewer of them is hoisted out of the
    loops it does not vary in (``RowText``), so a PARTIAL tile gathers ``segments_q[b, q]`` once, not once
    per row."""
    if not prefix.isidentifier():
        raise ValueError(f"render_tvm_row needs an identifier prefix, got {prefix!r}.")
    lowered = lower_division(expr)
    varies = _variation(lowered, row_vars, lane_vars)
    parents = _parents_vary(lowered, varies)
    placed: dict[str, list[str]] = {"tile": [], "lane": [], "row": [], "both": []}
    buffers: list[tuple[str, str]] = []
    count = iter(range(len(varies)))

    def bind(node: Expr, text: printer.Text) -> printer.Text:
        local = f"{prefix}{next(count)}"
        where = {frozenset(): "tile", frozenset({_LANE}): "lane", frozenset({_ROW}): "row"}.get(varies[node], "both")
        if where in ("tile", "row"):  # a scalar: let-bound outside every vectorised loop
            placed[where].append(f"{local} = {text[0]}")
            return local, printer.ATOM
        value = f'T.Cast("int8", {text[0]})' if node.dtype == "bool" else text[0]
        placed[where].append(f"{local}[{lane}] = {value}")
        buffers.append((local, _ROW_DTYPES[node.dtype]))
        if node.dtype == "bool":
            return f"{local}[{lane}] != T.int8(0)", printer.COMPARE
        return f"{local}[{lane}]", printer.ATOM

    def hoisted(node: Expr) -> bool:
        """A node worth a local of its own: it varies with less than a parent of it does."""
        return bool(parents.get(node, frozenset()) - varies[node])

    result = _bindings(expr, bind, names, hoisted)
    return RowText(
        tuple(placed["tile"]),
        tuple(placed["lane"]),
        tuple(placed["row"]),
        tuple(placed["both"]),
        tuple(buffers),
        result,
    )
