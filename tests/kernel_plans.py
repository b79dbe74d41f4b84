"""Brute-force plans: classify every (q tile, kv tile) pair from the dense reference mask.

Slow on purpose (it evaluates the whole N x N mask per batch and head), so use it on a few hundred tokens.
It builds the same ``Plan`` the planner returns, with any layout, so consumers of plans (the simulator)
can be tested on explicit token orders and on unions (several disjoint parts) independently of the
planner's choices.
For data-dependent patterns a tile is FULL only when it is full for every batch, EMPTY when empty for all.
"""

from __future__ import annotations

import numpy as np

from maskir.canvas import Canvas
from maskir.planner.plan import Layout, Plan, PlanPart, TileKind, TileTable
from maskir.reference import reference_mask


def _tiles(tokens: np.ndarray | None, size: int, block: int) -> list[np.ndarray]:
    """Original tokens of each tile (padding dropped): identity when ``tokens`` is None."""
    if tokens is None:
        return [np.arange(start, min(start + block, size)) for start in range(0, size, block)]
    assert tokens.size % block == 0, "an explicit layout holds whole tiles"
    return [t[t >= 0] for t in tokens.reshape(-1, block)]


def brute_force_part(
    pattern,
    canvas: Canvas,
    kv_canvas: Canvas,
    *,
    heads: int,
    block_q: int,
    block_kv: int,
    layout: Layout,
    batches: int = 1,
    segments=None,
    routing=None,
) -> PlanPart:
    """One plan part: per head the tile kinds from the dense mask; heads with equal tables share one."""
    q_tiles = _tiles(layout.q_tokens, canvas.size, block_q)
    kv_tiles = _tiles(layout.kv_tokens, kv_canvas.size, block_kv)
    tables: list[TileTable] = []
    keys: list[bytes] = []
    head_table = np.zeros(heads, dtype=np.int64)
    for head in range(heads):
        masks = [
            reference_mask(pattern, canvas, kv_canvas, batch=b, head=head, segments=segments, routing=routing)
            for b in range(batches)
        ]
        kinds = np.zeros((len(q_tiles), len(kv_tiles)), dtype=np.int8)
        for i, qt in enumerate(q_tiles):
            for j, kt in enumerate(kv_tiles):
                blocks = [m[np.ix_(qt, kt)] for m in masks]
                if all(block.all() for block in blocks):
                    kinds[i, j] = TileKind.FULL
                elif any(block.any() for block in blocks):
                    kinds[i, j] = TileKind.PARTIAL
        key = kinds.tobytes()
        if key not in keys:
            keys.append(key)
            q_tile, kv_tile = np.nonzero(kinds)
            tables.append(TileTable.from_pairs(q_tile, kv_tile, kinds[q_tile, kv_tile], len(q_tiles), len(kv_tiles)))
        head_table[head] = keys.index(key)
    return PlanPart(pattern, layout, tuple(tables), head_table, len(q_tiles), len(kv_tiles))


def brute_force_plan(
    pattern,
    canvas,
    kv_canvas=None,
    *,
    heads: int = 1,
    block_q: int = 32,
    block_kv: int = 32,
    layout: Layout | None = None,
    parts: list[tuple] | None = None,
    **data,
) -> Plan:
    """A one-part plan of ``pattern`` (identity layout unless given), or the union of ``parts``.

    ``parts`` is a list of (pattern, layout) pairs whose allowed sets are disjoint and cover ``pattern``.
    """
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    kv_canvas = canvas if kv_canvas is None else kv_canvas if isinstance(kv_canvas, Canvas) else Canvas(kv_canvas)
    parts = parts or [(pattern, layout or Layout("identity"))]
    built = tuple(
        brute_force_part(p, canvas, kv_canvas, heads=heads, block_q=block_q, block_kv=block_kv, layout=lay, **data)
        for p, lay in parts
    )
    return Plan(pattern, canvas, kv_canvas, heads, block_q, block_kv, built)


def tiled_layout(canvas: Canvas, patch: tuple[int, ...]) -> np.ndarray:
    """ND tiling: each run of prod(patch) positions is one patch of the canvas, patches row-major."""
    coords = np.indices(canvas.shape).reshape(canvas.ndim, -1)
    patch_id = np.ravel_multi_index(
        tuple(c // p for c, p in zip(coords, patch)), tuple(-(-s // p) for s, p in zip(canvas.shape, patch))
    )
    inner = np.ravel_multi_index(tuple(c % p for c, p in zip(coords, patch)), patch)
    order = np.lexsort((inner, patch_id))
    return order.astype(np.int32)


def grouped_layout(size: int, dilation: int, block: int) -> np.ndarray:
    """Residue classes (token % dilation) made contiguous, each padded with -1 to whole tiles."""
    runs = []
    for residue in range(dilation):
        members = np.arange(residue, size, dilation)
        pad = -members.size % block
        runs.append(np.concatenate([members, -np.ones(pad, dtype=np.int64)]))
    return np.concatenate(runs).astype(np.int32)
