"""Tile classes of a whole pattern tree: leaves by their rules, combinators by class algebra, under a care set.

``tile_runs(pattern, q, kv)`` returns the ``TileRuns`` of every (q tile, kv tile) pair. Each node is
evaluated under a *care set* (a TileRuns whose non-EMPTY tiles are the ones whose answer still matters):
``And`` evaluates its cheaper child first and its other child only where the first is not EMPTY; ``Or``
evaluates its second child only where the first is not FULL; outside the care set a node may answer
anything. So the expensive leaves (pairwise rules, exact evaluation) only see tiles the rest of the
pattern allows, and a plan costs O(non-empty tiles).

Soundness: each leaf's FULL and EMPTY are exact-sound (never FULL unless every pair is allowed, never
EMPTY if one is), and the combinators keep that (And: EMPTY if either is EMPTY, FULL if both are FULL;
Or: FULL if either is FULL, EMPTY if both are; Not swaps FULL and EMPTY; anything else PARTIAL).
Leaves:

- band leaves (Full, Causal, Window, Sink, Prefix on flat indices) on a monotone kv side: O(q tiles);
- unary leaves (Sink, Prefix, Columns: kv only; Global: q or kv) from per-tile counts of the tokens
  that satisfy them, exact on every layout;
- coordinate/difference leaves (``classify.pair_kinds``) on their candidate tiles, in row chunks;
- data-dependent leaves (Segments, Routing): PARTIAL wherever the care set is, a static superset;
- anything else (Predicate): exact evaluation (``fallback.exact_kinds``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskir.ir import DYNAMIC_NODES, And, Columns, Global, Grid, Not, Or, Pattern, PerHead, Prefix, Sink, Strided
from maskir.planner.candidates import band, is_band, leaf_region
from maskir.planner.classify import has_pair_rule, pair_kinds
from maskir.planner.fallback import exact_kinds
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.runs import BUT_FULL_TABLE, TileRuns
from maskir.planner.tiles import Side, TiledSide

TILES_PER_CHUNK = 1 << 20
"""Largest number of candidate tiles classified at once by a pairwise rule (bounds planner memory)."""


def tile_runs(pattern: Pattern, q: Side, kv: Side, *, head: int = 0) -> TileRuns:
    """Classes of every (q tile, kv tile) pair of ``pattern`` (PerHead already resolved for ``head``)."""
    everything = TileRuns.constant(q.n_tiles, kv.n_tiles, PARTIAL)
    return _runs(pattern, q, kv, everything, head)


def unary_prefix(node: Pattern) -> Callable[[np.ndarray], np.ndarray] | None:
    """F(n) = #{x < n : x satisfies the node} for leaves that test one token (kv for Sink/Prefix/Columns)."""
    if isinstance(node, (Sink, Prefix)):
        return lambda x: np.minimum(x, node.n)
    if isinstance(node, Columns):
        s, w = node.stride, node.width
        return lambda x: x // s * w + np.maximum(0, x % s - (s - w))
    if isinstance(node, Global):
        chosen = np.asarray(node.indices)
        return lambda x: np.searchsorted(chosen, x)
    return None


def unary_kinds(side: Side, prefix: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Per tile of one side: FULL if every token satisfies, EMPTY if none does, else PARTIAL."""
    hits = side.unary_counts(prefix)
    return np.where(hits == 0, EMPTY, np.where(hits == side.count, FULL, PARTIAL)).astype(np.int8)


def rank(node: Pattern, kv: Side) -> int:
    """Evaluation order inside And: 0 cheap (band, unary, a stride on kv tiles grouped by it), 1 bounded
    pairwise, 2 unbounded, 3 evaluated."""
    if isinstance(node, And):
        return min(rank(c, kv) for c in node.children())
    if isinstance(node, Or):
        return max(rank(c, kv) for c in node.children())
    if isinstance(node, Not):
        return rank(node.inner, kv)
    if (kv.monotone and is_band(node)) or unary_prefix(node) is not None:
        return 0
    if isinstance(node, Strided) and _grouped_by(kv, node.stride):
        return 0  # its region meets one residue group of kv tiles per q tile
    if has_pair_rule(node):
        return 2 if isinstance(node, (Strided, Grid)) else 1
    return 2 if isinstance(node, DYNAMIC_NODES) else 3


def _grouped_by(kv: Side, stride: int) -> bool:
    """kv tiles are residue groups of the flat index modulo a multiple of ``stride``."""
    return isinstance(kv, TiledSide) and len(kv.tiling.view) == 1 and kv.tiling.dilation[0] % stride == 0


def _runs(node: Pattern, q: Side, kv: Side, care: TileRuns, head: int) -> TileRuns:
    if isinstance(node, And):
        first, second = sorted(node.children(), key=lambda c: rank(c, kv))
        a = _runs(first, q, kv, care, head)
        return a & _runs(second, q, kv, care & a, head)
    if isinstance(node, Or):
        a = _runs(node.left, q, kv, care, head)
        return a | _runs(node.right, q, kv, care.combine(a, BUT_FULL_TABLE), head)
    if isinstance(node, Not):
        return ~_runs(node.inner, q, kv, care, head)
    assert not isinstance(node, PerHead), "resolve PerHead per head group before tile_runs"
    if isinstance(node, DYNAMIC_NODES):
        return care.as_partial()
    if kv.monotone and (bounds := band(node, q, kv)) is not None:
        return _band_runs(kv, *bounds)
    if isinstance(node, Global):
        prefix = unary_prefix(node)
        return TileRuns.per_row(unary_kinds(q, prefix), kv.n_tiles) | care.restrict_columns(
            TileRuns.one_row(unary_kinds(kv, prefix))
        )
    if (prefix := unary_prefix(node)) is not None:
        return care.restrict_columns(TileRuns.one_row(unary_kinds(kv, prefix)))
    if has_pair_rule(node):
        region = leaf_region(node, q)
        if region is not None:
            rows, start, stop = kv.meeting(region)
            care = care & TileRuns.from_segments(rows, start, stop, PARTIAL, q.n_tiles, kv.n_tiles)
        return _classified(care, lambda rows, cols: pair_kinds(node, q, kv, rows, cols))
    return _classified(care, lambda rows, cols: exact_kinds(node, q, kv, rows, cols, head=head))


def _band_runs(kv: Side, h_lo: np.ndarray, h_hi: np.ndarray, f_lo: np.ndarray, f_hi: np.ndarray) -> TileRuns:
    """EMPTY | PARTIAL | FULL | PARTIAL | EMPTY per q tile from the hull and core of a band (monotone kv)."""
    a = kv.count_hi_below(h_lo)  # first tile reaching the hull
    b = np.maximum(kv.count_lo_below(h_hi, inclusive=True), a)  # tiles starting inside the hull end here
    c = np.minimum(np.maximum(kv.count_lo_below(f_lo), a), b)  # first tile inside the core
    e = np.minimum(np.maximum(kv.count_hi_below(f_hi, inclusive=True), c), b)  # tiles ending inside the core
    starts = [np.zeros_like(a), a, c, e, b]
    return TileRuns.from_breaks(starts, np.array([EMPTY, PARTIAL, FULL, PARTIAL, EMPTY]), kv.n_tiles)


def _classified(live: TileRuns, kinds_of: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> TileRuns:
    """Classify the non-EMPTY tiles of ``live`` with ``kinds_of(rows, cols)``, a row chunk at a time."""
    row, first, stop, _ = live.listed()
    per_row = np.bincount(row, weights=stop - first, minlength=live.n_rows)
    chunk = (np.cumsum(per_row) - per_row) // TILES_PER_CHUNK
    edges = np.concatenate([[0], np.flatnonzero(np.diff(chunk)) + 1, [live.n_rows]])
    blocks = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = live.rows_between(int(lo), int(hi))
        rows, cols, _ = block.nonempty_pairs()
        kinds = kinds_of(rows + lo, cols) if rows.size else np.zeros(0, dtype=np.int8)
        blocks.append(TileRuns.from_pairs(rows, cols, kinds, block.n_rows, block.n_cols))
    return TileRuns.stack(blocks)
