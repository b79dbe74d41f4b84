"""Exact class rules for (q tile, kv tile) pairs of one analyzable leaf, vectorized over pairs.

Each side of a pair is described by ``Progression``s: the tile's tokens (flat) or coordinates (one dim) lie
in the arithmetic progression lo, lo + step, ..., hi (step 0: a single value). The rules only use that
superset, so FULL and EMPTY are always sound; PARTIAL is exact when the tile *is* the progression
(``Side.run`` / ``Side.box``), which every layout arranges for the nodes it is chosen for.

Three families cover the leaves:

- differences: allowed iff delta = kv - q lies in a union of intervals and delta = residue mod modulus
  (Causal, Window, Dilated, Strided on flat indices; Causal/Window with ``dim``, Distance and Grid on one
  coordinate). The differences of two progressions with steps s_q, s_kv lie in the progression from
  kv.lo - q.hi to kv.hi - q.lo with step gcd(s_q, s_kv) (all of it when the steps are equal), so the
  tests are interval and CRT arithmetic;
- blocks: same (x + offset) // size (Blocks per dim, Stripes);
- neighborhoods: the NATTEN window [lo(x'), hi(x')] of a query is monotone in x', so over a query tile
  [a', b'] (one dilation group) the union of windows lies in [lo(a'), hi(b')] and the common part is
  [lo(b'), hi(a')].

Multi-dim leaves are the AND over dims; on box tiles (products of per-dim progressions) the AND of exact
per-dim classes is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import Blocks, Causal, Dilated, Distance, Grid, Neighborhood, Pattern, Strided, Stripes, Window, expand
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.tiles import Side


@dataclass(frozen=True)
class Progression:
    """Per pair: the tile's values lie in lo, lo + step, ..., hi (step 0 when lo == hi)."""

    lo: np.ndarray
    hi: np.ndarray
    step: np.ndarray

    @classmethod
    def make(cls, lo: np.ndarray, hi: np.ndarray, step: int) -> Progression:
        return cls(lo, hi, np.where(lo == hi, 0, step))


def flat_progression(side: Side, tiles: np.ndarray) -> Progression:
    return Progression.make(side.lo[tiles], side.hi[tiles], side.step)


def coord_progression(side: Side, tiles: np.ndarray, dim: int) -> Progression:
    return Progression.make(side.box_lo[dim][tiles], side.box_hi[dim][tiles], side.coord_step[dim])


@dataclass(frozen=True)
class Differences:
    """Allowed differences delta = kv - q: in one of ``intervals`` (None = unbounded) and = residue mod modulus."""

    intervals: tuple[tuple[int | None, int | None], ...]
    modulus: int = 1
    residue: int = 0

    @property
    def reach(self) -> tuple[int | None, int | None]:
        """The smallest and largest allowed difference (None = unbounded)."""
        los = [a for a, _ in self.intervals]
        his = [b for _, b in self.intervals]
        return (None if None in los else min(los)), (None if None in his else max(his))


def differences_of(node: Pattern, canvas: Canvas) -> tuple[int | None, tuple[Differences, ...]] | None:
    """(dim or None for flat, one Differences per constrained dim...) for difference leaves, else None.

    For flat nodes and single-dim nodes the tuple has one entry; Grid constrains every dim.
    """
    if isinstance(node, Causal):
        return node.dim, (Differences(((None, node.offset),)),)
    if isinstance(node, Window):
        return node.dim, (Differences(((-node.left, node.right),)),)
    if isinstance(node, Dilated):
        reach = node.window * node.dilation
        return None, (Differences(((-reach, reach),), node.dilation, 0),)
    if isinstance(node, Strided):
        return None, (Differences(((None, None),), node.stride, -node.offset % node.stride),)
    if isinstance(node, Distance):
        top = node.hi - 1
        bands = ((-top, top),) if node.lo == 0 else ((node.lo, top), (-top, -node.lo))
        return node.dim, (Differences(bands),)
    if isinstance(node, Grid):
        size = expand(node.size, canvas.ndim, "Grid", "size")
        return -1, tuple(Differences(((None, None),), extent // s, 0) for extent, s in zip(canvas.shape, size))
    return None


def _crt_hits(lo: np.ndarray, hi: np.ndarray, base: np.ndarray, step: np.ndarray, modulus: int, residue: int):
    """Is there x in [lo, hi] with x = base mod step and x = residue mod modulus? (step >= 1)"""
    if modulus == 1:
        return lo + (base - lo) % step <= hi
    hits = np.zeros(lo.shape, dtype=bool)
    for g in np.unique(step):
        g = int(g)
        at = step == g
        h = int(np.gcd(g, modulus))
        b = base[at]
        solvable = (residue - b) % h == 0
        reduced = modulus // h
        k0 = ((residue - b) // h * pow(g // h, -1, reduced)) % reduced if reduced > 1 else np.zeros_like(b)
        first = b + g * k0
        period = g * reduced
        x = lo[at] + (first - lo[at]) % period
        hits[at] = solvable & (x <= hi[at])
    return hits


def difference_kinds(q: Progression, kv: Progression, allowed: Differences) -> np.ndarray:
    """Class of each pair for a difference relation (exact when both tiles are their progressions)."""
    d_min, d_max = kv.lo - q.hi, kv.hi - q.lo
    step = np.gcd(q.step, kv.step)
    single = step == 0
    step = np.where(single, 1, step)
    full = np.zeros(d_min.shape, dtype=bool)
    hit = np.zeros(d_min.shape, dtype=bool)
    m, r = allowed.modulus, allowed.residue
    for a, b in allowed.intervals:
        lo = d_min if a is None else np.maximum(d_min, a)
        hi = d_max if b is None else np.minimum(d_max, b)
        inside = (lo == d_min) & (hi == d_max)
        if m > 1:
            inside &= ((d_min - r) % m == 0) & ((step % m == 0) | single)
        full |= inside
        hit |= _crt_hits(lo, hi, d_min, step, m, r)
    return np.where(full, FULL, np.where(hit, PARTIAL, EMPTY)).astype(np.int8)


def block_kinds(q: Progression, kv: Progression, size: int, offset: int) -> np.ndarray:
    """Same block (x + offset) // size: FULL when all four ends share one block, EMPTY when block ranges miss."""
    qa, qb = (q.lo + offset) // size, (q.hi + offset) // size
    ka, kb = (kv.lo + offset) // size, (kv.hi + offset) // size
    full = (qa == qb) & (ka == kb) & (qa == ka)
    empty = (qb < ka) | (kb < qa)
    return np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(np.int8)


@dataclass(frozen=True)
class NeighborhoodDim:
    """The NATTEN rule in one dim (extent, kernel, dilation, stride, causal); see ``maskir.ir.Neighborhood``."""

    extent: int
    kernel: int
    dilation: int
    stride: int
    causal: bool

    def window(self, x: np.ndarray, group_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi] of keys (group coordinates) seen by query x' (both ends non-decreasing in x')."""
        k, s = self.kernel, self.stride
        if self.causal:
            leader = np.minimum(x // s * s + s - 1, group_len - 1)
            return leader - k + 1, x
        leader = np.minimum(x // s * s + s // 2, group_len - 1)
        right = k // 2 - (1 - k % 2)
        centre = np.clip(leader, k // 2, group_len - 1 - right)
        return centre - k // 2, centre + right

    @property
    def reach(self) -> int:
        """Bound on |kv - q| for any allowed pair (original coordinates)."""
        return (2 * self.kernel + self.stride) * self.dilation

    def hull(self, q: Progression) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates any query of the tile may see: exact union hull within one dilation group."""
        d = self.dilation
        one_group = q.step % d == 0
        group = q.lo % d
        group_len = (self.extent - group + d - 1) // d
        lo, _ = self.window(q.lo // d, group_len)
        _, hi = self.window(q.hi // d, group_len)
        lo = np.where(one_group, lo * d + group, q.lo - self.reach)
        hi = np.where(one_group, hi * d + group, q.hi + self.reach)
        return lo, hi

    def kinds(self, q: Progression, rows: np.ndarray, kv: Progression) -> np.ndarray:
        """Classes of pairs (q tile rows[i], kv pair i); ``q`` describes every q tile, ``kv`` each pair.

        The window ends and hull depend on the q tile only: computed once per q tile, then gathered.
        """
        d = self.dilation
        group = q.lo % d
        group_len = (self.extent - group + d - 1) // d
        _, hi_a = self.window(q.lo // d, group_len)  # the common part of the tile's windows
        lo_b, _ = self.window(q.hi // d, group_len)
        h_lo, h_hi = self.hull(q)
        q_one_group = q.step % d == 0
        group, hi_a, lo_b, h_lo, h_hi, q_one_group = (x[rows] for x in (group, hi_a, lo_b, h_lo, h_hi, q_one_group))
        both_one_group = q_one_group & (kv.step % d == 0)
        same_group = both_one_group & (kv.lo % d == group)
        full = same_group & (kv.lo // d >= lo_b) & (kv.hi // d <= hi_a)
        empty = (both_one_group & ~same_group) | (kv.hi < h_lo) | (kv.lo > h_hi)
        return np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(np.int8)


def neighborhood_dims(node: Neighborhood, canvas: Canvas) -> list[NeighborhoodDim]:
    args = [
        expand(getattr(node, f), canvas.ndim, "Neighborhood", f) for f in ("kernel", "dilation", "stride", "causal")
    ]
    return [NeighborhoodDim(extent, *rule) for extent, *rule in zip(canvas.shape, *args)]


def block_dims(node: Blocks | Stripes, canvas: Canvas) -> list[tuple[int, int, int]]:
    """(dim, size, offset) per constrained dim of Blocks or Stripes."""
    if isinstance(node, Stripes):
        return [(node.dim, node.width, 0)]
    sizes = expand(node.size, canvas.ndim, "Blocks", "size")
    offsets = expand(node.offset, canvas.ndim, "Blocks", "offset")
    return [(d, s, o) for d, (s, o) in enumerate(zip(sizes, offsets))]


def all_of(kinds: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """AND of per-dim classes: EMPTY if any is EMPTY, FULL if all are FULL, else PARTIAL."""
    out = np.full(shape, FULL, dtype=np.int8)
    for k in kinds:
        out = np.where((out == EMPTY) | (k == EMPTY), EMPTY, np.where((out == FULL) & (k == FULL), FULL, PARTIAL))
    return out.astype(np.int8)


def has_pair_rule(node: Pattern) -> bool:
    """Is ``pair_kinds`` defined for this leaf?"""
    return isinstance(node, (Causal, Window, Dilated, Strided, Distance, Grid, Blocks, Stripes, Neighborhood))


def pair_kinds(node: Pattern, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Classes of the pairs (q tile rows[i], kv tile cols[i]) for an analyzable coordinate/difference leaf.

    Returns None for nodes without a pair rule here (unary, dynamic, combinators, Predicate).
    """
    canvas = q.canvas
    spec = differences_of(node, canvas)
    if spec is not None:
        dim, per_dim = spec
        if dim is None:
            return difference_kinds(flat_progression(q, rows), flat_progression(kv, cols), per_dim[0])
        dims = range(canvas.ndim) if dim == -1 else [dim]
        return all_of(
            [
                difference_kinds(coord_progression(q, rows, d), coord_progression(kv, cols, d), allowed)
                for d, allowed in zip(dims, per_dim)
            ],
            rows.shape,
        )
    if isinstance(node, (Blocks, Stripes)):
        return all_of(
            [
                block_kinds(coord_progression(q, rows, d), coord_progression(kv, cols, d), size, offset)
                for d, size, offset in block_dims(node, canvas)
            ],
            rows.shape,
        )
    if isinstance(node, Neighborhood):
        every_q = np.arange(q.n_tiles)
        return all_of(
            [
                rule.kinds(coord_progression(q, every_q, d), rows, coord_progression(kv, cols, d))
                for d, rule in enumerate(neighborhood_dims(node, canvas))
            ],
            rows.shape,
        )
    return None
