"""Exact tile classes by evaluation: the path for leaves no rule covers (``Predicate``), and the test oracle.

A ``Predicate`` on identity tiles is bounded per tile by interval arithmetic (``bounds``), then counted per
16 x 16 cell in the 512 x 512 chunks its undecided candidate tiles touch (``cells``: compiled C or torch),
once per plan call, and every candidate's tiles are read from the counts. On other tiles (permuted or
gathered layouts) it is bounded on each tile's hull, sampled for witnesses and counted tile by tile over the
listed tokens (``listed``). Otherwise (another node, or a mask_mod that cannot take 3-D index tensors), for
each q tile the candidate kv tiles' tokens are evaluated with ``maskir.reference.evaluate_pairs`` in blocks
of at most ``PAIRS_PER_EVALUATION`` pairs (so memory stays bounded, well under 256 MiB), and a tile is FULL
when all its pairs are allowed, EMPTY when none is. Slow runs report progress (``progress``).
"""

from __future__ import annotations

import numpy as np

from maskir.ir import Pattern, Predicate
from maskir.planner import cells, listed
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.plan import PAIRS_PER_EVALUATION
from maskir.planner.progress import Progress
from maskir.planner.tiles import IdentitySide, Side
from maskir.reference import evaluate_pairs

USE_CELLS = True
"""Classify Predicates from cell counts (``cells``, identity tiles) or listed tokens (``listed``, other tiles);
False forces the per-tile path."""


def exact_kinds(
    pattern: Pattern, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray, *, head: int = 0, **data
) -> np.ndarray:
    """Exact class of each pair (q tile rows[i], kv tile cols[i]); pairs must be sorted by row."""
    identity = isinstance(q, IdentitySide) and isinstance(kv, IdentitySide)
    if isinstance(pattern, Predicate) and USE_CELLS:
        if identity:
            kinds = cells.tile_kinds(pattern, q.canvas.size, kv.canvas.size, q.block, kv.block, rows, cols, head)
        else:
            kinds = listed.tile_kinds(pattern, q, kv, rows, cols, head)
        if kinds is not None:
            return kinds
    kinds = np.empty(rows.shape, dtype=np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1, [rows.size]]) if rows.size else []
    progress = Progress(f"evaluating {pattern} exactly", rows.size)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        q_tokens = q.token_matrix(rows[lo : lo + 1])[0]
        q_tokens = q_tokens[q_tokens >= 0]
        per_call = max(1, PAIRS_PER_EVALUATION // max(1, q_tokens.size * kv.block))
        for first in range(lo, hi, per_call):
            tiles = cols[first : min(hi, first + per_call)]
            tokens = kv.token_matrix(tiles)
            valid = tokens >= 0
            allowed = evaluate_pairs(pattern, q.canvas, kv.canvas, q_tokens, tokens[valid], head=head, **data)
            per_token = np.zeros(tokens.shape, dtype=np.int64)
            per_token[valid] = allowed.sum(axis=0)
            hits = per_token.sum(axis=1)
            total = q_tokens.size * valid.sum(axis=1)
            kinds[first : first + tiles.size] = np.where(hits == 0, EMPTY, np.where(hits == total, FULL, PARTIAL))
        progress.update(hi)
    progress.close()
    return kinds
