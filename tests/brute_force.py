"""Brute-force masks: one plain-Python predicate per IR node, looped over every (q, kv) pair.

Written from the node table and the Neighborhood rule in DESIGN.md and the docstrings of ``maskir.ir``,
without reading ``maskir.reference``, so that the two definitions check each other. Slow on purpose:
use it on canvases of at most a few hundred tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskir import ir
from maskir.canvas import Canvas


@dataclass(frozen=True)
class Pair:
    """One (q, kv) pair: flat indices, coordinates, the canvases and the run-time data."""

    q: int
    kv: int
    q_xy: tuple[int, ...]
    kv_xy: tuple[int, ...]
    q_shape: tuple[int, ...]
    kv_shape: tuple[int, ...]
    batch: int
    head: int
    segments: tuple[Any, Any] | None
    routing: Any


def coords(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major coordinates of a flat index: the last dim varies fastest."""
    out = []
    for extent in reversed(shape):
        out.append(index % extent)
        index //= extent
    return tuple(reversed(out))


def per_dim(value: Any, ndim: int) -> tuple:
    """An int/bool applies to every dim; a tuple gives one value per dim."""
    return value if isinstance(value, tuple) else (value,) * ndim


def natten_window_1d(x: int, y: int, extent: int, k: int, d: int, s: int, causal: bool) -> bool:
    """Does query coordinate x see key coordinate y in one dim of a NATTEN neighborhood?

    Dilation groups are the residues mod d; group g holds len(range(g, L, d)) positions x' = x // d.
    Non-causal: the stride group's leader is its middle query (right middle for even s, clipped to the
    group), the window is the k consecutive positions starting k // 2 before the leader, shifted to
    stay inside the group. Causal: the leader is the last query of the stride group (clipped), the window
    is the k positions ending at the leader, and keys after the query itself are cut off.
    """
    if x % d != y % d:
        return False
    group_len = len(range(x % d, extent, d))
    xg, yg = x // d, y // d
    stride_start = xg - xg % s
    if causal:
        leader = min(stride_start + s - 1, group_len - 1)
        return leader - k < yg <= xg
    leader = min(stride_start + s // 2, group_len - 1)
    start = min(max(leader - k // 2, 0), group_len - k)
    return start <= yg < start + k


def _neighborhood(node: ir.Neighborhood, p: Pair) -> bool:
    nd = len(p.q_shape)
    args = zip(
        p.q_xy, p.kv_xy, p.q_shape, *(per_dim(getattr(node, f), nd) for f in ("kernel", "dilation", "stride", "causal"))
    )
    return all(natten_window_1d(*a) for a in args)


def _blocks(node: ir.Blocks, p: Pair) -> bool:
    nd = len(p.q_shape)
    sizes, offsets = per_dim(node.size, nd), per_dim(node.offset, nd)
    return all((x + o) // size == (y + o) // size for x, y, size, o in zip(p.q_xy, p.kv_xy, sizes, offsets))


def _grid(node: ir.Grid, p: Pair) -> bool:
    sizes = per_dim(node.size, len(p.q_shape))
    return all(
        x % (extent // size) == y % (extent // size) for x, y, extent, size in zip(p.q_xy, p.kv_xy, p.q_shape, sizes)
    )


def _on_dim(dim: int | None, p: Pair) -> tuple[int, int]:
    """Flat indices when dim is None, else that coordinate of q and kv."""
    return (p.q, p.kv) if dim is None else (p.q_xy[dim], p.kv_xy[dim])


def _segments(p: Pair) -> bool:
    q_ids, kv_ids = p.segments
    return int(q_ids[p.batch][p.q]) == int(kv_ids[p.batch][p.kv])


def _routing(node: ir.Routing, p: Pair) -> bool:
    chosen = np.asarray(p.routing)[p.batch, p.head, p.q // node.block]
    return p.kv // node.block in set(chosen.tolist())


def _predicate(node: ir.Predicate, p: Pair) -> bool:
    return bool(node.fn(*(torch.tensor(v) for v in (p.batch, p.head, p.q, p.kv))))


def allowed(node: ir.Pattern, p: Pair) -> bool:
    """The predicate of ``node`` on one pair, straight from the DESIGN.md table."""
    match node:
        case ir.Full():
            return True
        case ir.Causal(offset=offset, dim=dim):
            x, y = _on_dim(dim, p)
            return y <= x + offset
        case ir.Window(left=left, right=right, dim=dim):
            x, y = _on_dim(dim, p)
            return x - left <= y <= x + right
        case ir.Dilated(window=window, dilation=dilation):
            return abs(p.q - p.kv) <= window * dilation and (p.q - p.kv) % dilation == 0
        case ir.Neighborhood():
            return _neighborhood(node, p)
        case ir.Blocks():
            return _blocks(node, p)
        case ir.Stripes(dim=dim, width=width):
            return p.q_xy[dim] // width == p.kv_xy[dim] // width
        case ir.Grid():
            return _grid(node, p)
        case ir.Strided(stride=stride, offset=offset):
            return (p.q - p.kv) % stride == offset % stride
        case ir.Columns(stride=stride, width=width):
            return p.kv % stride >= stride - width
        case ir.Sink(n=n) | ir.Prefix(n=n):
            return p.kv < n
        case ir.Global(indices=indices):
            return p.q in indices or p.kv in indices
        case ir.Segments():
            return _segments(p)
        case ir.Distance(dim=dim, lo=lo, hi=hi):
            return lo <= abs(p.q_xy[dim] - p.kv_xy[dim]) < hi
        case ir.Routing():
            return _routing(node, p)
        case ir.Predicate():
            return _predicate(node, p)
        case ir.PerHead(patterns=patterns):
            return allowed(patterns[p.head % len(patterns)], p)
        case ir.And(left=left, right=right):
            return allowed(left, p) and allowed(right, p)
        case ir.Or(left=left, right=right):
            return allowed(left, p) or allowed(right, p)
        case ir.Not(inner=inner):
            return not allowed(inner, p)
    raise TypeError(f"brute_mask does not know the node {type(node).__name__}.")


def _as_shape(canvas: Canvas | int | tuple[int, ...]) -> tuple[int, ...]:
    return (canvas if isinstance(canvas, Canvas) else Canvas(canvas)).shape


def brute_mask(
    pattern: ir.Pattern,
    canvas: Canvas | int | tuple[int, ...],
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    head: int = 0,
    batch: int = 0,
    segments: Any = None,
    routing: Any = None,
) -> np.ndarray:
    """allowed(batch, head, q, kv) for every pair as a bool array [Nq, Nkv].

    ``segments``: ids [B, N] shared by q and kv, or a pair (q_ids [B, Nq], kv_ids [B, Nkv]).
    ``routing``: kv block indices [B, H, q_blocks, topk].
    """
    q_shape = _as_shape(canvas)
    kv_shape = q_shape if kv_canvas is None else _as_shape(kv_canvas)
    if segments is not None and not isinstance(segments, tuple):
        segments = (segments, segments)
    n_q, n_kv = int(np.prod(q_shape)), int(np.prod(kv_shape))
    out = np.zeros((n_q, n_kv), dtype=bool)
    for q in range(n_q):
        for kv in range(n_kv):
            pair = Pair(
                q, kv, coords(q, q_shape), coords(kv, kv_shape), q_shape, kv_shape, batch, head, segments, routing
            )
            out[q, kv] = allowed(pattern, pair)
    return out
