"""Lower a pattern to the bool Expr ``allowed(b, h, q, kv)`` that kernels evaluate on PARTIAL tiles.

q and kv are original flat token indices; coordinates come from the canvas by // and % (row-major).
The expression equals ``maskir.reference`` node by node; only the arithmetic is rearranged so every
division sees non-negative operands (kernels divide with C semantics):

- ``(q - kv) % s == o % s`` (Strided) is ``q % s == (kv + o % s) % s``; Dilated compares ``q % d`` and
  ``kv % d`` the same way.
- Neighborhood's leader is x' itself when the stride is 1 (x' <= L_g - 1 always); the group length
  ceil((L - g) / d) is ``L // d + (g < L % d)`` (how many x < L have x % d == g).
- PerHead is a select on ``h % len``: ``where(h % n == 0, p0, where(h % n == 1, p1, ...))``.
- Global: a static index set, as runs of consecutive indices. Up to ``GLOBAL_INLINE_RUNS`` runs it is
  an OR of range tests on q and on kv (``q <= 63 | kv <= 63`` for the first 64 tokens); more runs read an
  int8 table ``global_table`` (1 at each index; ``_1``, ``_2``... for further sets) attached as
  ``TensorRef.data``: ``load(global_table, q) != 0 | load(global_table, kv) != 0``.
- Segments: ``load(segments_q, b, q) == load(segments_kv, b, kv)`` from the [B, N] id tensors.
- Routing: ``load(routing_map, b, h, q // block, kv // block) != 0`` from the run-time int8 block map
  [B, H, q_blocks, kv_blocks] (one per pattern: Routing nodes with different blocks raise ValueError).
- Predicate: the mask_mod traced once (:mod:`maskir.codegen.common.trace`); tensors it indexes are named
  ``mask_capture_0``, ``mask_capture_1``, ... A non-bool result means ``!= 0``, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, reduce
from math import prod

import torch

from maskir.canvas import Canvas
from maskir.codegen.common import expr as E  # noqa: N812 (the builders read as E.where, E.eq)
from maskir.codegen.common.expr import Expr, TensorRef
from maskir.codegen.common.trace import Captures, trace
from maskir.ir import (
    INT_LIMIT,
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    Pattern,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    Strided,
    Stripes,
    Window,
    check_canvas,
    expand,
)

GLOBAL_INLINE_RUNS = 8
"""A Global set of at most this many runs of consecutive indices is inlined as range tests."""

MASK_MOD_ARGS = ("b", "h", "q", "kv")
"""The variables bound to mask_mod's parameters (b, h, q_idx, kv_idx), in order."""

B, H, Q, KV = (E.var(name) for name in MASK_MOD_ARGS)


def coordinates(index: Expr, canvas: Canvas) -> tuple[Expr, ...]:
    """Row-major coordinates of a flat index: x_d = index // prod(shape[d+1:]) % shape[d] (no % for d = 0)."""
    shape = canvas.shape
    scaled = [index // prod(shape[d + 1 :]) for d in range(len(shape))]
    return (scaled[0], *(x % extent for x, extent in zip(scaled[1:], shape[1:])))


def all_of(terms: list[Expr]) -> Expr:
    return reduce(E.logical_and, terms, E.const(True))


def any_of(terms: list[Expr]) -> Expr:
    return reduce(E.logical_or, terms, E.const(False))


class _Lowering:
    """State of one lowering: canvases, coordinates (built once) and the names of tensors."""

    def __init__(self, canvas: Canvas, kv_canvas: Canvas):
        self.canvas = canvas
        self.kv_canvas = kv_canvas
        self.captures = Captures("mask_capture")
        self.global_tables: dict[tuple[int, ...], TensorRef] = {}
        self.routing_block: int | None = None

    @cached_property
    def q_coords(self) -> tuple[Expr, ...]:
        return coordinates(Q, self.canvas)

    @cached_property
    def kv_coords(self) -> tuple[Expr, ...]:
        return coordinates(KV, self.kv_canvas)

    def pair(self, dim: int | None) -> tuple[Expr, Expr]:
        """(q, kv) as flat indices (dim None) or as their coordinates in ``dim``."""
        return (Q, KV) if dim is None else (self.q_coords[dim], self.kv_coords[dim])

    def extents(self, dim: int | None) -> tuple[int, int]:
        """(q, kv) extents of ``pair(dim)``: token counts (dim None) or the canvases' extents in ``dim``."""
        if dim is None:
            return self.canvas.size, self.kv_canvas.size
        return self.canvas.shape[dim], self.kv_canvas.shape[dim]

    def per_dim(self, node: Pattern, *names: str) -> list[tuple]:
        """Per dim: (q coordinate, kv coordinate, extent, *the node's per-dim arguments)."""
        nd = self.canvas.ndim
        values = [expand(getattr(node, name), nd, type(node).__name__, name) for name in names]
        return list(zip(self.q_coords, self.kv_coords, self.canvas.shape, *values))

    def global_table(self, indices: tuple[int, ...]) -> TensorRef:
        """The int8 membership table of an index set (one per distinct set)."""
        if indices not in self.global_tables:
            count = len(self.global_tables)
            data = torch.zeros(indices[-1] + 1, dtype=torch.int8)
            data[list(indices)] = 1
            name = "global_table" + (f"_{count}" if count else "")
            self.global_tables[indices] = TensorRef(name, "int", (len(data),), data)
        return self.global_tables[indices]


def _neighborhood_1d(x: Expr, y: Expr, extent: int, k: int, d: int, s: int, causal: bool) -> Expr:
    """The NATTEN rule in one dim (``maskir.reference._neighborhood_1d``) for query x and key y."""
    group = x % d
    same_group = E.eq(group, y % d)
    xg, yg = x // d, y // d
    group_len = extent // d + E.where(group < extent % d, 1, 0)
    if causal:
        leader = xg if s == 1 else E.minimum(xg // s * s + (s - 1), group_len - 1)
        return same_group & (yg <= xg) & (leader - yg < k)
    leader = xg if s == 1 else E.minimum(xg // s * s + s // 2, group_len - 1)
    right = k // 2 - (1 - k % 2)
    centre = E.minimum(E.maximum(leader, k // 2), group_len - 1 - right)
    return same_group & (centre - k // 2 <= yg) & (yg <= centre + right)


def _runs(indices: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted distinct indices as maximal runs [lo, hi] of consecutive values."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(lo, hi) for lo, hi in runs]


def _global(node: Global, ctx: _Lowering) -> Expr:
    runs = _runs(node.indices)
    if len(runs) <= GLOBAL_INLINE_RUNS:

        def member(x: Expr) -> Expr:
            return any_of([E.eq(x, lo) if lo == hi else (x >= lo) & (x <= hi) for lo, hi in runs])

    else:
        table = ctx.global_table(node.indices)

        def member(x: Expr) -> Expr:
            return E.ne(E.load(table, x), 0)

    return member(Q) | member(KV)


def _segments(node: Segments, ctx: _Lowering) -> Expr:
    q_ids = TensorRef("segments_q", "int", (None, ctx.canvas.size))
    kv_ids = TensorRef("segments_kv", "int", (None, ctx.kv_canvas.size))
    return E.eq(E.load(q_ids, B, Q), E.load(kv_ids, B, KV))


def _routing(node: Routing, ctx: _Lowering) -> Expr:
    if ctx.routing_block not in (None, node.block):
        raise ValueError(
            f"One routing_map per pattern: Routing block sizes {ctx.routing_block} and {node.block} differ."
        )
    ctx.routing_block = node.block
    blocks = (-(-ctx.canvas.size // node.block), -(-ctx.kv_canvas.size // node.block))
    block_map = TensorRef("routing_map", "int", (None, None, *blocks))
    return E.ne(E.load(block_map, B, H, Q // node.block, KV // node.block), 0)


def _per_head(node: PerHead, ctx: _Lowering) -> Expr:
    choices = [_lower(p, ctx) for p in node.patterns]
    n = len(choices)
    selected = choices[-1]
    for i in reversed(range(n - 1)):
        selected = E.where(E.eq(H % n, i), choices[i], selected)
    return selected


def _predicate(node: Predicate, ctx: _Lowering) -> Expr:
    allowed = trace(node.fn, MASK_MOD_ARGS, ctx.captures, "mask_mod")
    for item in E.topo(allowed):  # the mask_mod's integers are IR integers too: int32 in the kernels
        if item.is_const and item.dtype == "int" and not -INT_LIMIT <= item.value <= INT_LIMIT:
            raise ValueError(
                f"{node}: the integer {item.value} in the mask_mod is outside [-{INT_LIMIT}, {INT_LIMIT}], the "
                "int32 range kernels compute indices with; clamp it to the canvas (a bound past the last token "
                "means the same as one at it)."
            )
    return allowed if allowed.dtype == "bool" else E.ne(allowed, 0)


def _causal(node: Causal, ctx: _Lowering) -> Expr:
    q, kv = ctx.pair(node.dim)
    q_extent, kv_extent = ctx.extents(node.dim)
    offset = min(max(node.offset, -q_extent), kv_extent - 1)  # kv - q lies in [1 - q_extent, kv_extent - 1]
    return kv <= q + offset if q_extent + kv_extent <= INT_LIMIT else kv - q <= offset


def _window(node: Window, ctx: _Lowering) -> Expr:
    q, kv = ctx.pair(node.dim)
    q_extent, kv_extent = ctx.extents(node.dim)
    if q_extent + kv_extent <= INT_LIMIT:
        return (q - node.left <= kv) & (kv <= q + node.right)
    return (kv - q >= -node.left) & (kv - q <= node.right)  # no q + right past int32 on huge canvases


def _dilated(node: Dilated, ctx: _Lowering) -> Expr:
    return (abs(Q - KV) <= node.window * node.dilation) & E.eq(Q % node.dilation, KV % node.dilation)


def _neighborhood(node: Neighborhood, ctx: _Lowering) -> Expr:
    dims = ctx.per_dim(node, "kernel", "dilation", "stride", "causal")
    # a stride of 2 * extent or more puts every query in one stride group with the leader at the group's
    # end (as any larger stride does): clamped so that the leader's arithmetic stays within int32
    return all_of([_neighborhood_1d(x, y, extent, k, d, min(s, 2 * extent), c) for x, y, extent, k, d, s, c in dims])


def _block_of(x: Expr, size: int, shift: int, extent: int) -> Expr:
    """(x + shift) // size for 0 <= shift < size, without x + shift leaving int32 on a huge canvas:
    then x // size + (x % size >= size - shift)."""
    if extent + size <= INT_LIMIT or shift == 0:
        return (x + shift) // size
    return x // size + E.where(x % size >= size - shift, 1, 0)


def _blocks(node: Blocks, ctx: _Lowering) -> Expr:
    dims = ctx.per_dim(node, "size", "offset")
    # (x + offset) // size == (y + offset) // size depends on offset % size only (offset = m * size + r)
    return all_of(
        [
            E.eq(_block_of(x, size, offset % size, extent), _block_of(y, size, offset % size, extent))
            for x, y, extent, size, offset in dims
        ]
    )


def _grid(node: Grid, ctx: _Lowering) -> Expr:
    dims = ctx.per_dim(node, "size")
    return all_of([E.eq(x % (extent // size), y % (extent // size)) for x, y, extent, size in dims])


def _stripes(node: Stripes, ctx: _Lowering) -> Expr:
    q, kv = ctx.pair(node.dim)
    return E.eq(q // node.width, kv // node.width)


def _strided(node: Strided, ctx: _Lowering) -> Expr:
    stride, shift = node.stride, node.offset % node.stride
    if ctx.kv_canvas.size + stride <= INT_LIMIT:
        return E.eq(Q % stride, (KV + shift) % stride)
    gap = Q % stride - KV % stride  # in (-stride, stride): equal to shift or shift - stride
    return E.eq(gap, shift) | E.eq(gap, shift - stride)


def _columns(node: Columns, ctx: _Lowering) -> Expr:
    return KV % node.stride >= node.stride - node.width


def _distance(node: Distance, ctx: _Lowering) -> Expr:
    gap = abs(ctx.q_coords[node.dim] - ctx.kv_coords[node.dim])
    return (gap >= node.lo) & (gap < node.hi)


_RULES: dict[type, Callable[[Pattern, _Lowering], Expr]] = {
    Full: lambda node, ctx: E.const(True),
    Causal: _causal,
    Window: _window,
    Dilated: _dilated,
    Neighborhood: _neighborhood,
    Blocks: _blocks,
    Stripes: _stripes,
    Grid: _grid,
    Strided: _strided,
    Columns: _columns,
    Sink: lambda node, ctx: KV < node.n,
    Prefix: lambda node, ctx: KV < node.n,
    Global: _global,
    Segments: _segments,
    Distance: _distance,
    Routing: _routing,
    PerHead: _per_head,
    Predicate: _predicate,
    And: lambda node, ctx: _lower(node.left, ctx) & _lower(node.right, ctx),
    Or: lambda node, ctx: _lower(node.left, ctx) | _lower(node.right, ctx),
    Not: lambda node, ctx: ~_lower(node.inner, ctx),
}


def _lower(node: Pattern, ctx: _Lowering) -> Expr:
    rule = _RULES.get(type(node))
    if rule is None:
        raise TypeError(
            f"lower_predicate does not know the node {type(node).__name__}; known: {sorted(c.__name__ for c in _RULES)}."
        )
    return rule(node, ctx)


def lower_predicate(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas | None = None) -> Expr:
    """The bool expression over b, h, q, kv that is True exactly where ``reference_mask`` is.

    Raises ValueError when the pattern does not fit the canvases (``maskir.ir.check_canvas``).
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"lower_predicate needs a Pattern, got {type(pattern).__name__}.")
    kv_canvas = canvas if kv_canvas is None else kv_canvas
    check_canvas(pattern, canvas, kv_canvas)
    return _lower(pattern, _Lowering(canvas, kv_canvas))
