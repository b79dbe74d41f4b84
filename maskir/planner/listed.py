"""Exact tile classes of a ``Predicate`` on listed tiles: tiles whose tokens are not one range of the canvas
(permuted layouts such as dilation groups and ND patches, gathered parts), as ``cells`` does for identity tiles.

1. Bounds: interval arithmetic (``bounds.range_bounds``) over each tile's hull [lo, hi], a superset of its
   tokens, proves tiles EMPTY or FULL (sound: what holds on every pair of the hull holds on the tile's).
2. Witnesses: ``side`` x ``side`` pairs spread over each tile's tokens (``Side.packed``) prove a tile PARTIAL
   when one is allowed and one masked (a 4 x 4 sample, then 8 x 8 for the tiles it left open when it decided
   at least half), evaluated by the C counter when it counts (below), else by torch
   (``cells.sample_witnesses``); skipped when the C counter counts tiles of few pairs (``SAMPLE_SHARE``).
3. Counts: the pairs of every other tile are counted, padding skipped: on the CPU, when they are more than
   ``cells.COMPILE_ABOVE_PAIRS``, by the mask_mod compiled to C (``native``'s ``count_tiles``: per q tile, a
   vectorised loop over the listed tokens of a run of kv tiles, short tiles back to back); else with torch on
   gathered token tensors [tiles, q block, kv block], ``PAIRS_PER_EVALUATION`` pairs per call.

A tile is FULL when all its pairs are allowed, EMPTY when none is (a tile without tokens too). The state a
plan call's candidates share is ``cells.chunk_counts``': the compiled counter, whether bounds pay, and the
classes found per pair of sides (``ChunkCounts.listed_kinds``), so the terms of a union priced in the same
layout do not evaluate a tile twice.
"""

from __future__ import annotations

import numpy as np
import torch

from maskir.ir import Predicate
from maskir.planner import cells
from maskir.planner.bounds import range_bounds
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.plan import PAIRS_PER_EVALUATION
from maskir.planner.progress import Progress
from maskir.planner.tiles import Side

SAMPLE_SHARE = 64
"""Tiles the C counter counts are sampled for witnesses only when they hold on average at least this many
times the sample's pairs (a group tile of ``Strided(997)`` over 16K tokens holds 17 x 17 pairs: a 4 x 4
sample costs a fifth of counting it and, on a sparse mask, decides little)."""


def tile_kinds(
    predicate: Predicate, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray, head: int = 0
) -> np.ndarray | None:
    """Classes of the tiles (rows[i], cols[i]) of any two sides; None when the mask_mod cannot take 3-D index
    tensors (the caller then evaluates tile by tile)."""
    counts = cells.chunk_counts(predicate, q.canvas.size, kv.canvas.size, head)
    known = counts.listed_kinds(q, kv)
    if known is None:
        return _classify(counts, q, kv, rows, cols)
    kinds = known[rows, cols]
    todo = np.flatnonzero(kinds < 0)
    if todo.size:
        fresh = _classify(counts, q, kv, rows[todo], cols[todo])
        if fresh is None:
            return None
        kinds[todo] = known[rows[todo], cols[todo]] = fresh
    return kinds


def _classify(counts, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """``tile_kinds`` without the classes known from earlier calls."""
    predicate, head = counts.predicate, counts.head
    pairs = q.count[rows] * kv.count[cols]
    kinds = np.full(rows.shape, PARTIAL, dtype=np.int8)
    kinds[pairs == 0] = EMPTY
    todo = np.flatnonzero(pairs)

    def bounds_of(which):
        r, c = rows[todo[which]], cols[todo[which]]
        return range_bounds(predicate, q.lo[r], q.hi[r], kv.lo[c], kv.hi[c], head)

    bounded = cells.useful_bounds(counts, todo.size, bounds_of)
    if bounded is not None:  # tiles whose hulls bounds prove EMPTY or FULL are not evaluated
        may_true, may_false = bounded
        kinds[todo[~may_true]] = EMPTY
        kinds[todo[may_true & ~may_false]] = FULL
        todo = todo[may_true & may_false]
    for side in cells.WITNESS_SIDES:
        open_pairs = int(pairs[todo].sum())
        if open_pairs < cells.WITNESS_ABOVE_PAIRS:
            break
        counted_in_c = counts.counter_for(open_pairs) is not None
        if counted_in_c and open_pairs < SAMPLE_SHARE * side * side * todo.size:  # counting costs little more
            break
        saw = _witnesses(counts, q, kv, rows[todo], cols[todo], side, open_pairs)
        mixed = saw[0] & saw[1]
        todo = todo[~mixed]
        if 2 * mixed.sum() < mixed.size:  # a sample that decides under half: the next would not pay
            break
    hits = _hits(counts, q, kv, rows[todo], cols[todo])
    if hits is None:
        return None
    kinds[todo] = np.where(hits == 0, EMPTY, np.where(hits == pairs[todo], FULL, PARTIAL))
    return kinds


def _samples(side: Side, positions: int) -> np.ndarray:
    """``positions`` tokens spread over each tile's listed tokens (the k-th at k * count // positions), int64
    [n_tiles, positions]; a tile without tokens gets token 0 (never evaluated: it is EMPTY)."""
    at = np.arange(positions) * side.count[:, None] // positions
    return np.maximum(np.take_along_axis(side.packed, at, axis=1), 0)


def _witnesses(counts, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray, side: int, pairs: int):
    """(saw_allowed, saw_masked) per tile from ``side`` x ``side`` pairs, the same per tile of each side
    (``_samples``): evaluated by the C counter when it counts ``pairs`` pairs (``ChunkCounts.counter_for``),
    else by torch (``cells.sample_witnesses``)."""
    q_samples, kv_samples = _samples(q, side), _samples(kv, side)
    counter = counts.counter_for(pairs)
    if counter is not None:
        jobs, sides = np.stack([rows, cols], axis=1), (np.full(q.n_tiles, side), np.full(kv.n_tiles, side))
        hits = counter.count_tiles(jobs, q_samples, sides[0], kv_samples, sides[1])
        return hits > 0, hits < side * side

    def samples(first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        q_tokens, kv_tokens = q_samples[rows[first:stop]], kv_samples[cols[first:stop]]
        return torch.from_numpy(q_tokens).to(counts.device), torch.from_numpy(kv_tokens).to(counts.device)

    return cells.sample_witnesses(counts, rows.size, side, samples)


def _hits(counts, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Allowed pairs of each tile (rows[i], cols[i]): by the C counter when there are many
    (``ChunkCounts.counter_for``), else with torch; None when the mask_mod cannot take 3-D index tensors."""
    counter = counts.counter_for(int((q.count[rows] * kv.count[cols]).sum()))
    if counter is not None:
        jobs = np.stack([rows, cols], axis=1)
        return counter.count_tiles(jobs, q.packed, q.count, kv.packed, kv.count)
    return _torch_hits(counts, q, kv, rows, cols)


def _torch_hits(counts, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """``_hits`` with torch: the mask_mod called on gathered tokens [tiles, q block, 1] x [tiles, 1, kv block]
    (padding replaced by token 0 for the call, not counted), ``PAIRS_PER_EVALUATION`` pairs at a time."""
    hits = np.empty(rows.size, dtype=np.int64)
    per_call = max(1, PAIRS_PER_EVALUATION // (q.block * kv.block))
    zero = torch.zeros((), dtype=torch.long, device=counts.device)
    progress = Progress(f"evaluating {counts.predicate} on listed tiles", rows.size, "tiles")
    for first in range(0, rows.size, per_call):
        stop = min(first + per_call, rows.size)
        q_tokens = torch.from_numpy(q.packed[rows[first:stop]]).to(counts.device)
        kv_tokens = torch.from_numpy(kv.packed[cols[first:stop]]).to(counts.device)
        q_in, kv_in = q_tokens.clamp(min=0)[:, :, None], kv_tokens.clamp(min=0)[:, None, :]
        try:
            allowed = torch.as_tensor(counts.predicate.fn(zero, zero + counts.head, q_in, kv_in)).to(torch.bool)
        except Exception:  # noqa: BLE001 (a mask_mod written for 2-D index grids: the caller's loop)
            progress.close()
            return None
        allowed = allowed & (q_tokens >= 0)[:, :, None] & (kv_tokens >= 0)[:, None, :]
        hits[first:stop] = allowed.sum((1, 2)).cpu().numpy()
        progress.update(stop)
    progress.close()
    return hits
