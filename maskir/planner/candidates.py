"""Where a leaf may allow pairs: per q tile a region of kv tokens, and the band form of interval leaves.

``leaf_region`` gives a ``Region`` (flat range, coordinate box, residues) that contains every kv token the
leaf allows for some query of the tile; the kv side turns it into candidate tiles (``Side.meeting``).
``band`` gives, for leaves whose allowed kv set of each query is one flat interval moving monotonically
with the query (Full, Causal, Window, Sink, Prefix), the hull [h_lo, h_hi] of the tile's union and the
core [f_lo, f_hi] of its intersection: on a kv side whose tiles are ordered along the flat index
(``Side.monotone``) the tile classes are then three interval lookups per q tile (EMPTY | PARTIAL | FULL |
PARTIAL | EMPTY), O(q tiles) for any band width.
"""

from __future__ import annotations

import numpy as np

from maskir.ir import Blocks, Causal, Full, Neighborhood, Pattern, Prefix, Sink, Stripes, Window
from maskir.planner.classify import (
    block_dims,
    coord_progression,
    differences_of,
    flat_progression,
    neighborhood_dims,
)
from maskir.planner.tiles import Region, Side

UNBOUNDED = 1 << 40
"""A coordinate past any canvas, for box sides a leaf does not constrain."""


def is_band(node: Pattern) -> bool:
    """Does ``band`` cover this leaf?"""
    return isinstance(node, (Full, Sink, Prefix)) or isinstance(node, (Causal, Window)) and node.dim is None


def band(node: Pattern, q: Side, kv: Side) -> tuple[np.ndarray, ...] | None:
    """(h_lo, h_hi, f_lo, f_hi) per q tile on flat kv indices for interval leaves, else None."""
    last = kv.canvas.size - 1

    def constant(value: int) -> np.ndarray:
        return np.full(q.n_tiles, value, dtype=np.int64)

    if isinstance(node, Full):
        return constant(0), constant(last), constant(0), constant(last)
    if isinstance(node, (Sink, Prefix)):
        return constant(0), constant(node.n - 1), constant(0), constant(node.n - 1)
    if isinstance(node, Causal) and node.dim is None:
        return constant(0), q.hi + node.offset, constant(0), q.lo + node.offset
    if isinstance(node, Window) and node.dim is None:
        return q.lo - node.left, q.hi + node.right, q.hi - node.left, q.lo + node.right
    return None


def _single_residue(progression, modulus: int) -> np.ndarray:
    """Per tile: does the tile hold one residue mod ``modulus``?"""
    return progression.step % modulus == 0


def leaf_region(node: Pattern, q: Side) -> Region | None:
    """Region of kv tokens a coordinate/difference leaf may allow per q tile; None when unbounded."""
    rows = np.arange(q.n_tiles)
    canvas = q.canvas

    def box(dims_lo: dict[int, np.ndarray], dims_hi: dict[int, np.ndarray]) -> Region:
        """A box on the given dims; other dims unbounded (the kv side clips to its canvas)."""
        lo = np.zeros((canvas.ndim, q.n_tiles), dtype=np.int64)
        hi = np.full(lo.shape, UNBOUNDED, dtype=np.int64)
        for d, v in dims_lo.items():
            lo[d] = np.maximum(lo[d], v)
        for d, v in dims_hi.items():
            hi[d] = np.minimum(hi[d], v)
        return Region(q.n_tiles, box_lo=lo, box_hi=hi)

    spec = differences_of(node, canvas)
    if spec is not None:
        dim, per_dim = spec
        if dim is None:
            allowed = per_dim[0]
            first, last = allowed.reach
            residue = None
            if allowed.modulus > 1:
                p = flat_progression(q, rows)
                wanted = np.where(_single_residue(p, allowed.modulus), (p.lo + allowed.residue) % allowed.modulus, -1)
                residue = ("flat", (allowed.modulus,), wanted[None])
            if first is None and last is None and residue is None:
                return None
            return Region(
                q.n_tiles,
                flat_lo=None if first is None else q.lo + first,
                flat_hi=None if last is None else q.hi + last,
                residue=residue,
            )
        if dim == -1:  # Grid: one residue class per dim
            moduli = tuple(a.modulus for a in per_dim)
            wanted = []
            for d, m in enumerate(moduli):
                p = coord_progression(q, rows, d)
                wanted.append(np.where(_single_residue(p, m), p.lo % m, -1))
            return Region(q.n_tiles, residue=("coords", moduli, np.stack(wanted)))
        first, last = per_dim[0].reach
        lo = {} if first is None else {dim: q.box_lo[dim] + first}
        hi = {} if last is None else {dim: q.box_hi[dim] + last}
        return box(lo, hi) if lo or hi else None
    if isinstance(node, (Blocks, Stripes)):
        lo, hi = {}, {}
        for d, size, offset in block_dims(node, canvas):
            lo[d] = (q.box_lo[d] + offset) // size * size - offset
            hi[d] = (q.box_hi[d] + offset) // size * size - offset + size - 1
        return box(lo, hi)
    if isinstance(node, Neighborhood):
        lo, hi = {}, {}
        for d, rule in enumerate(neighborhood_dims(node, canvas)):
            lo[d], hi[d] = rule.hull(coord_progression(q, rows, d))
        return box(lo, hi)
    return None
