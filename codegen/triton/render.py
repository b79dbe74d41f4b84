"""Render a lowered Expr as Triton source text.

Names in the text: ``b`` and ``h`` (scalars), ``q`` ([BLOCK_M, 1] int32), ``kv`` ([1, BLOCK_N] int32),
``score`` ([BLOCK_M, BLOCK_N] float32), and per loaded tensor T (see ``Expr.tensors()``) a pointer
``T_ptr`` and strides ``T_stride0``, ``T_stride1``, ... The value broadcasts to [BLOCK_M, BLOCK_N].

- Division: :func:`lower_division` runs first, so ``//`` and ``%`` only see non-negative operands or are
  the truncating tdiv/trem (Triton's own semantics) with an explicit correction.
- A load is ``tl.load(T_ptr + i0 * T_stride0 + ..., mask=<each bounded index in range>, other=0)``, then
  ``.to(tl.int32)``, ``.to(tl.float32)`` or ``!= 0`` by the tensor's dtype.
- Only functions that triton 3.6 and 3.9 both have: ``tl.where``, ``tl.minimum``, ``tl.maximum``,
  ``tl.abs``, ``tl.exp``, ``tl.exp2``, ``tl.log``, ``tl.sqrt``, ``tl.sin``, ``tl.cos``; no libdevice. tanh(x)
  is ``1 - 2 / (exp(2 x) + 1)`` (exact at both infinities, ~1e-7 absolute error near 0).
- A constant result is ``tl.full([1, 1], value, dtype)`` so that it is still a tensor.
- A scalar bool (one that depends only on b and h) never meets a block bool in ``&``, ``|`` or a bool
  ``where`` branch: it becomes the condition of a ``tl.where`` instead (``tl.where(h >= 1, kv <= q,
  False)``), and a load's in-range mask is ``tl.where(<scalar checks>, <block checks>, False)``. Triton
  3.9's interpreter broadcasts a scalar int1 into int32 data, which a load rejects as a mask ("mask has
  unsupported dtype") and which ``~`` turns into -2; the GPU compiler treats both forms alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from maskir.codegen.common import expr as E  # noqa: N812 (the builders read as E.where, E.eq)
from maskir.codegen.common import printer
from maskir.codegen.common.division import lower_division
from maskir.codegen.common.expr import Expr, TensorRef, topo
from maskir.codegen.common.simplify import split_offset

_CALLS = {
    "where": "tl.where",
    "min": "tl.minimum",
    "max": "tl.maximum",
    "abs": "tl.abs",
    "exp": "tl.exp",
    "exp2": "tl.exp2",
    "log": "tl.log",
    "sqrt": "tl.sqrt",
    "sin": "tl.sin",
    "cos": "tl.cos",
}
_TRUNCATING = {"tdiv": ("floordiv", "//"), "trem": ("mod", "%")}
"""tdiv/trem are Triton's own // and % (C semantics): same spelling and precedence as floordiv/mod."""
_TL_DTYPE = {"bool": "tl.int1", "int": "tl.int32", "float": "tl.float32"}


def tensor_args(expr: Expr) -> tuple[str, ...]:
    """The parameters the tensors of ``expr`` need: ``T_ptr, T_stride0, ...`` for each, sorted by name."""
    return tuple(arg for ref in expr.tensors() for arg in _pointer_args(ref))


def _pointer_args(ref: TensorRef) -> tuple[str, ...]:
    return (f"{ref.name}_ptr", *(f"{ref.name}_stride{d}" for d in range(ref.ndim)))


def _block_shaped(nodes: list[Expr]) -> dict[Expr, bool]:
    """Whether each node varies over the tile (depends on q, kv or score) rather than being a scalar."""
    block: dict[Expr, bool] = {}
    for node in nodes:
        block[node] = node.op == "var" and node.value in ("q", "kv", "score") or any(block[a] for a in node.args)
    return block


def _bool_where(condition: Expr, a: Expr, b: Expr, a_block: bool, b_block: bool) -> Expr:
    """where(condition, a, b) on bools with a block condition, rewritten so scalar branches are conditions."""
    if a_block and b_block:
        return E.where(condition, a, b)
    if b_block:  # a scalar: a ? (c | b) : (~c & b)
        return E.where(a, condition | b, ~condition & b)
    if a_block:  # b scalar: b ? (~c | a) : (c & a)
        return E.where(b, ~condition | a, condition & a)
    return E.where(a, E.where(b, True, condition), E.where(b, ~condition, False))


def scalar_bools_as_conditions(expr: Expr) -> Expr:
    """An equal expression where no scalar bool meets a block-shaped bool in & or | or as a where branch
    (see the module docstring)."""
    nodes = topo(expr)
    block = _block_shaped(nodes)
    done: dict[Expr, Expr] = {}
    for node in nodes:
        args = tuple(done[a] for a in node.args)
        flags = [block[a] for a in node.args]
        if node.op in ("and", "or") and flags[0] != flags[1]:
            scalar, tensor = args if flags[1] else args[::-1]
            done[node] = E.where(scalar, tensor, False) if node.op == "and" else E.where(scalar, True, tensor)
        elif node.op == "where" and node.dtype == "bool" and flags[0]:
            done[node] = _bool_where(*args, *flags[1:])
        else:
            done[node] = E.rebuild(node, args)
    return done[expr]


_BOUNDS = {"le": (0, 1, 0), "lt": (0, 1, 1), "ge": (1, 0, 0), "gt": (1, 0, 1)}
"""op -> (index of the smaller side, of the larger side, gap): small + gap <= large on ints."""


def _bound(node: Expr) -> tuple[Expr, Expr, int] | None:
    """An int comparison as (small, large, gap) with small + gap <= large, or None for anything else."""
    if node.op not in _BOUNDS or any(a.dtype != "int" for a in node.args):
        return None
    small, large, gap = _BOUNDS[node.op]
    return node.args[small], node.args[large], gap


def _width(low: Expr, high: Expr) -> int | None:
    """high - low when it is a constant (the same base plus constants), else None."""
    if low.is_const and high.is_const:
        return high.value - low.value
    (low_base, low_offset), (high_base, high_offset) = split_offset(low), split_offset(high)
    return high_offset - low_offset if low_base == high_base else None


def _paired_bounds(conjuncts: list[Expr]) -> list[Expr]:
    """The conjuncts with each pair lo <= x, x <= lo + w (w >= 0 a constant) replaced by in_range(x, lo, w).

    Bound i bounds its larger side x from below (lo = small + gap); bound j its smaller side x from above
    (hi = large - gap)."""
    bounds = [_bound(c) for c in conjuncts]
    out, used = [], set()
    for i, lower in enumerate(bounds):
        if i in used or lower is None:
            continue
        x, low = lower[1], E.add(lower[0], lower[2])
        for j, upper in enumerate(bounds):
            if j in used or j == i or upper is None or upper[0] != x:
                continue
            width = _width(low, E.sub(upper[1], upper[2]))
            if width is not None and width >= 0:
                out.append(E.in_range(x, low, width))
                used |= {i, j}
                break
    return out + [c for k, c in enumerate(conjuncts) if k not in used]


def range_checks(expr: Expr) -> Expr:
    """An equal expression where each pair of int bounds on one value within a conjunction (lo <= x and
    x <= lo + w, w >= 0 a constant; <, >, >= read as <=) is one ``in_range`` node, which Triton tests as
    (x - lo) reinterpreted unsigned <= w: two tile-wide ops instead of three. Nested & are flattened
    through nodes used once."""
    uses = Counter(arg for node in topo(expr) for arg in node.args)
    done: dict[Expr, Expr] = {}

    def conjuncts(node: Expr) -> list[Expr]:
        found, stack = [], list(node.args[::-1])
        while stack:
            item = stack.pop()
            if item.op == "and" and uses[item] == 1:
                stack += item.args[::-1]
            else:
                found.append(done[item])
        return found

    for node in topo(expr):
        if node.op == "and":
            parts = _paired_bounds(conjuncts(node))
            result = parts[0]
            for part in parts[1:]:
                result = result & part
            done[node] = result
        else:
            done[node] = E.rebuild(node, tuple(done[a] for a in node.args))
    return done[expr]


def _load(ref: TensorRef, indices: list[printer.Text], block: list[bool]) -> printer.Text:
    pointer = " + ".join(
        [f"{ref.name}_ptr"]
        + [f"{printer.wrap(i, printer.PRODUCT)} * {ref.name}_stride{d}" for d, i in enumerate(indices)]
    )
    checks: dict[bool, list[str]] = {False: [], True: []}
    for i, extent, is_block in zip(indices, ref.shape, block):
        if extent is not None:
            index = printer.wrap(i, printer.COMPARE + 1)
            checks[is_block] += [f"({index} >= 0)", f"({index} < {extent})"]
    scalar, tensor = (" & ".join(checks[flag]) for flag in (False, True))
    mask = f"tl.where({scalar}, {tensor}, False)" if scalar and tensor else scalar or tensor
    text = f"tl.load({pointer}, mask={mask}, other=0)" if mask else f"tl.load({pointer})"
    if ref.dtype == "bool":
        return f"{text} != 0", printer.COMPARE
    return f"{text}.to({_TL_DTYPE[ref.dtype]})", printer.ATOM


def _node_text(node: Expr, args: list[printer.Text], block: dict[Expr, bool]) -> printer.Text:
    """Triton text of one node given its arguments' texts (``block``: which nodes are block-shaped)."""
    op = node.op
    if op == "const":
        return printer.constant(node.value)
    if op == "var":
        return node.value, printer.ATOM
    if op == "load":
        return _load(node.value, args, [block[a] for a in node.args])
    if op == "in_range":
        difference = printer.infix("sub", args)[0]
        return f"({difference}).to(tl.uint32, bitcast=True) <= {node.value}", printer.COMPARE
    if op in _TRUNCATING:
        like, symbol = _TRUNCATING[op]
        return printer.infix(like, args, symbol)
    if op in printer.INFIX:
        return printer.infix(op, args)
    if op in printer.PREFIX:
        return printer.prefix(op, args[0])
    if op == "to_float":
        return f"{printer.wrap(args[0], printer.ATOM)}.to(tl.float32)", printer.ATOM
    if op == "tanh":
        doubled = f"2.0 * {printer.wrap(args[0], printer.UNARY)}"
        return f"1.0 - 2.0 / (tl.exp({doubled}) + 1.0)", printer.SUM
    return printer.call(_CALLS[op], args)


def _broadcastable(expr: Expr, text: str) -> str:
    """A constant result becomes a [1, 1] tensor; everything else already is a tensor."""
    if expr.is_const:
        return f"tl.full([1, 1], {printer.constant(expr.value)[0]}, {_TL_DTYPE[expr.dtype]})"
    return text


def _prepare(expr: Expr) -> Expr:
    """The passes before rendering: C-semantics division, scalar bools kept as conditions, then range checks."""
    expr = lower_division(expr)
    return range_checks(scalar_bools_as_conditions(expr))


def render_triton(expr: Expr) -> str:
    """One Triton expression computing ``expr`` (shared subexpressions are repeated)."""
    expr = _prepare(expr)
    nodes = topo(expr)
    block = _block_shaped(nodes)
    texts: dict[Expr, printer.Text] = {}
    for node in nodes:
        texts[node] = _node_text(node, [texts[a] for a in node.args], block)
    return _broadcastable(expr, texts[expr][0])


def _uses(expr: Expr) -> Counter:
    """How often each node's text appears in its parents' texts (a bounded load index twice)."""
    uses: Counter = Counter()
    for node in topo(expr):
        for d, arg in enumerate(node.args):
            bounded = node.op == "load" and node.value.shape[d] is not None
            uses[arg] += 2 if bounded else 1
    return uses


def render_triton_function(name: str, expr: Expr, args: Sequence[str]) -> str:
    """Source of ``@triton.jit def name(*args)`` returning ``expr``.

    ``args`` are the parameter names in order: the variables ``expr`` uses (``b, h, q, kv``, ``score``)
    and :func:`tensor_args`; others are allowed and ignored. A subexpression used more than once and every
    load is computed once into a local ``e0``, ``e1``, ...
    """
    args = list(args)
    if not name.isidentifier() or not all(isinstance(a, str) and a.isidentifier() for a in args):
        raise ValueError(f"render_triton_function needs identifiers for name and args, got {name!r}, {args!r}.")
    expr = _prepare(expr)
    nodes = topo(expr)
    block = _block_shaped(nodes)
    needed = [n.value for n in nodes if n.op == "var"] + list(tensor_args(expr))
    missing = [a for a in needed if a not in args]
    if missing:
        raise ValueError(f"args of {name} lack {missing}: pass args={[*args, *missing]} (got {args}).")
    uses = _uses(expr)
    texts: dict[Expr, printer.Text] = {}
    lines = []
    for node in nodes:
        text = _node_text(node, [texts[a] for a in node.args], block)
        if node is not expr and node.op not in ("const", "var") and (uses[node] > 1 or node.op == "load"):
            local = f"e{len(lines)}"
            if local in args:
                raise ValueError(f"args of {name} may not use the local name {local!r}.")
            lines.append(f"    {local} = {text[0]}")
            text = (local, printer.ATOM)
        texts[node] = text
    body = "\n".join([*lines, f"    return {_broadcastable(expr, texts[expr][0])}"])
    return f"@triton.jit\ndef {name}({', '.join(args)}):\n{body}\n"
