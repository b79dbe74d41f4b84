"""Tile classes of a (q tile x kv tile) grid as runs: the planner's compact, O(non-empty) representation.

A grid of ``n_rows`` q tiles by ``n_cols`` kv tiles is read row-major, tile (i, j) at key k = i * n_cols + j.
Run r covers keys [key[r], key[r + 1]) (the last one up to n_rows * n_cols) and has one class kind[r]
(``TileKind``: EMPTY, FULL or PARTIAL). Invariants: ``key`` is non-decreasing, starts at 0, and every
row start i * n_cols is a key (no run crosses a row). A run may be empty (key[r] == key[r + 1]; it holds
no tile): the banded fast path writes five runs per row (EMPTY, PARTIAL, FULL, PARTIAL, EMPTY) without
filtering, whatever the band width. The combinators return normalized runs: strictly increasing keys,
adjacent runs of one row differing in kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from maskir.planner.kinds import EMPTY, FULL, PARTIAL

AND_TABLE = np.array([[EMPTY] * 3, [EMPTY, FULL, PARTIAL], [EMPTY, PARTIAL, PARTIAL]], dtype=np.int8)
"""kind of (a and b) indexed [a, b]: EMPTY if either is EMPTY, FULL if both are FULL, else PARTIAL."""
OR_TABLE = np.array([[EMPTY, FULL, PARTIAL], [FULL] * 3, [PARTIAL, FULL, PARTIAL]], dtype=np.int8)
"""kind of (a or b) indexed [a, b]: FULL if either is FULL, EMPTY if both are EMPTY, else PARTIAL."""
NOT_TABLE = np.array([FULL, EMPTY, PARTIAL], dtype=np.int8)
"""kind of (not a) indexed [a]: FULL and EMPTY swap."""
BUT_FULL_TABLE = np.array([[EMPTY] * 3, [PARTIAL, EMPTY, PARTIAL], [PARTIAL, EMPTY, PARTIAL]], dtype=np.int8)
"""[care, a]: PARTIAL where care is non-EMPTY and a is not FULL (where an Or's right side still matters)."""


@dataclass(frozen=True, eq=False)
class TileRuns:
    """Piecewise-constant tile classes over the row-major tile grid (see the module docstring)."""

    n_rows: int
    n_cols: int
    key: np.ndarray  # int64 [R], strictly increasing, contains every row start
    kind: np.ndarray  # int8 [R]

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def per_row(cls, kinds: np.ndarray, n_cols: int) -> TileRuns:
        """Row i is one run of class kinds[i]."""
        kinds = np.asarray(kinds, dtype=np.int8)
        return cls(kinds.shape[0], n_cols, np.arange(kinds.shape[0], dtype=np.int64) * n_cols, kinds)

    @classmethod
    def constant(cls, n_rows: int, n_cols: int, kind: int) -> TileRuns:
        """Every tile has class ``kind``."""
        return cls.per_row(np.full(n_rows, kind, dtype=np.int8), n_cols)

    @classmethod
    def one_row(cls, kinds: np.ndarray) -> TileRuns:
        """A single row whose tile j has class kinds[j] (a pattern of kv tiles shared by every q tile)."""
        kinds = np.asarray(kinds, dtype=np.int8)
        return cls._normalized(1, kinds.shape[0], np.arange(kinds.shape[0], dtype=np.int64), kinds)

    @classmethod
    def stack(cls, blocks: list[TileRuns]) -> TileRuns:
        """Rows of consecutive row blocks (same n_cols) as one grid."""
        n_cols = blocks[0].n_cols
        offsets = np.cumsum([0] + [b.n_rows for b in blocks])
        keys = np.concatenate([b.key + offset * n_cols for b, offset in zip(blocks, offsets)])
        return cls(int(offsets[-1]), n_cols, keys, np.concatenate([b.kind for b in blocks]))

    def rows_between(self, first: int, stop: int) -> TileRuns:
        """Rows [first, stop) as their own grid."""
        lo, hi = np.searchsorted(self.key, [first * self.n_cols, stop * self.n_cols])
        return TileRuns(stop - first, self.n_cols, self.key[lo:hi] - first * self.n_cols, self.kind[lo:hi])

    @classmethod
    def from_breaks(cls, starts: list[np.ndarray], kinds: np.ndarray, n_cols: int) -> TileRuns:
        """Row i has runs j = 0, 1, ... starting at column starts[j][i] with class kinds[j].

        ``starts[0]`` is all zeros and starts[j][i] is non-decreasing in j. Empty runs are kept (no sort,
        no filter: the fast path for banded nodes). The tiles per row and per kind come from the breaks;
        the keys are built on first use (``BreakRuns``), so pricing a candidate never builds them.
        """
        return BreakRuns(starts, np.asarray(kinds, dtype=np.int8), n_cols)

    @classmethod
    def from_segments(
        cls, row: np.ndarray, start: np.ndarray, stop: np.ndarray, kind: np.ndarray | int, n_rows: int, n_cols: int
    ) -> TileRuns:
        """Non-overlapping column segments [start, stop) of row ``row`` with class ``kind``; EMPTY elsewhere."""
        row, start, stop = (np.asarray(a, dtype=np.int64) for a in (row, start, stop))
        kind = np.broadcast_to(np.asarray(kind, dtype=np.int8), row.shape)
        keep = stop > start
        row, start, stop, kind = row[keep], start[keep], stop[keep], kind[keep]
        row_starts = np.arange(n_rows, dtype=np.int64) * n_cols
        seg_start = row * n_cols + start
        seg_stop = row * n_cols + stop
        if seg_start.size > 1 and np.all(seg_start[1:] >= seg_stop[:-1]):  # sorted: merge touching segments
            # of one kind in one row first (a million one-tile segments of a row-by-group meeting become one
            # per row), so the sort below sees the runs, not the tiles
            touching = (seg_start[1:] == seg_stop[:-1]) & (kind[1:] == kind[:-1]) & (row[1:] == row[:-1])
            first = np.flatnonzero(np.append(True, ~touching))
            last = np.append(first[1:], seg_start.size) - 1
            seg_start, seg_stop, kind = seg_start[first], seg_stop[last], kind[first]
        # On equal keys a segment start wins over a segment end, which wins over a bare row start.
        keys = np.concatenate([row_starts, seg_stop, seg_start])
        kinds = np.concatenate([np.full(n_rows, EMPTY, np.int8), np.full(seg_stop.shape, EMPTY, np.int8), kind])
        priority = np.concatenate([np.zeros(n_rows), np.ones(seg_stop.shape), np.full(seg_start.shape, 2)])
        order = np.lexsort((priority, keys))
        keys, kinds = keys[order], kinds[order]
        last = np.append(keys[1:] != keys[:-1], True)
        keys, kinds = keys[last], kinds[last]
        inside = keys < n_rows * n_cols
        return cls._normalized(n_rows, n_cols, keys[inside], kinds[inside])

    @classmethod
    def from_pairs(cls, row: np.ndarray, col: np.ndarray, kind: np.ndarray, n_rows: int, n_cols: int) -> TileRuns:
        """Distinct tiles (row, col) of class ``kind``; every other tile EMPTY."""
        col = np.asarray(col, dtype=np.int64)
        return cls.from_segments(row, col, col + 1, kind, n_rows, n_cols)

    @classmethod
    def _normalized(cls, n_rows: int, n_cols: int, keys: np.ndarray, kinds: np.ndarray) -> TileRuns:
        """Drop breakpoints that repeat the previous run's kind inside a row (keys sorted, row starts present)."""
        keep = np.ones(keys.shape, dtype=bool)
        keep[1:] = (kinds[1:] != kinds[:-1]) | (keys[1:] % n_cols == 0)
        return cls(n_rows, n_cols, keys[keep].astype(np.int64, copy=False), kinds[keep].astype(np.int8, copy=False))

    # -- views ------------------------------------------------------------------------------------

    @cached_property
    def stop(self) -> np.ndarray:
        """End key (exclusive) of each run."""
        return np.append(self.key[1:], self.n_rows * self.n_cols)

    @cached_property
    def row(self) -> np.ndarray:
        return self.key // self.n_cols

    @cached_property
    def length(self) -> np.ndarray:
        return self.stop - self.key

    def tiles(self, kind: int) -> int:
        """Number of tiles of one class."""
        return int(self.tiles_per_kind[kind])

    @cached_property
    def tiles_per_kind(self) -> np.ndarray:
        """Tiles of each class, indexed by kind."""
        length = self.length
        full, partial = np.dot(length, self.kind == FULL), np.dot(length, self.kind == PARTIAL)
        return np.array([self.n_rows * self.n_cols - full - partial, full, partial], dtype=np.int64)

    @cached_property
    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(non-EMPTY tiles, FULL tiles) per row, int64 [n_rows] each: what a program walking a row visits."""
        row, length = np.minimum(self.row, self.n_rows - 1), self.length  # an empty run may sit at the end key
        listed = np.bincount(row, weights=np.where(self.kind != EMPTY, length, 0), minlength=self.n_rows)
        full = np.bincount(row, weights=np.where(self.kind == FULL, length, 0), minlength=self.n_rows)
        return listed.astype(np.int64), full.astype(np.int64)

    def listed(self, kind: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, first col, stop col, kind) of the non-empty runs of non-EMPTY tiles (or only of ``kind``)."""
        picked = (self.kind != EMPTY if kind is None else self.kind == kind) & (self.length > 0)
        key, stop, kinds = self.key[picked], self.stop[picked], self.kind[picked]
        row = key // self.n_cols
        base = row * self.n_cols
        return row, key - base, stop - base, kinds

    def nonempty_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, kind) of every non-EMPTY tile, in key order."""
        live = self.kind != EMPTY
        start, length, kind = self.key[live], self.length[live], self.kind[live]
        keys = ragged_arange(start, length)
        return keys // self.n_cols, keys % self.n_cols, np.repeat(kind, length)

    def kind_at(self, keys: np.ndarray) -> np.ndarray:
        """The class of the tiles at the given keys (the last run starting at or before each key)."""
        return self.kind[np.searchsorted(self.key, keys, side="right") - 1]

    def equals(self, other: TileRuns) -> bool:
        """Same classes on every tile."""
        a, b = self.normalized(), other.normalized()
        return (
            (a.n_rows, a.n_cols) == (b.n_rows, b.n_cols)
            and np.array_equal(a.key, b.key)
            and np.array_equal(a.kind, b.kind)
        )

    # -- algebra ----------------------------------------------------------------------------------

    def combine(self, other: TileRuns, table: np.ndarray) -> TileRuns:
        """Tile-wise ``table[self, other]`` (one of the *_TABLE lookups above).

        A linear merge of the two key lists: after each merged key, the run of either side that holds
        it is the last one started so far (a running count), so no search is needed.
        """
        a, b = self.key, other.key
        order = np.argsort(np.concatenate([b, a]), kind="stable")  # two sorted runs: a linear merge
        from_a = order >= b.size  # on equal keys b's come first, so the last of a key group is an a
        keys = np.concatenate([b, a])[order]
        in_a = np.cumsum(from_a) - 1
        in_b = np.cumsum(~from_a) - 1
        last = np.append(keys[1:] != keys[:-1], True)  # of equal keys, the last holds every side's run
        keys, in_a, in_b = keys[last], in_a[last], in_b[last]
        kinds = table[self.kind[in_a], other.kind[in_b]]
        return TileRuns._normalized(self.n_rows, self.n_cols, keys, kinds)

    def __and__(self, other: TileRuns) -> TileRuns:
        return self.combine(other, AND_TABLE)

    def __or__(self, other: TileRuns) -> TileRuns:
        return self.combine(other, OR_TABLE)

    def __invert__(self) -> TileRuns:
        return TileRuns(self.n_rows, self.n_cols, self.key, NOT_TABLE[self.kind])

    def as_partial(self) -> TileRuns:
        """Every non-EMPTY tile becomes PARTIAL (a dynamic node: unknown wherever something may be allowed)."""
        return TileRuns(
            self.n_rows, self.n_cols, self.key, np.where(self.kind == EMPTY, EMPTY, PARTIAL).astype(np.int8)
        )

    def normalized(self) -> TileRuns:
        """The same classes with empty runs dropped and equal neighbours merged (a canonical form)."""
        nonempty = self.length > 0
        nonempty |= (self.key % self.n_cols == 0) & (self.key < self.n_rows * self.n_cols)  # every row start
        keys, kinds = self.key[nonempty], self.kind[nonempty]
        last = np.append(keys[1:] != keys[:-1], True)  # of runs sharing a key, the last one holds the tiles
        return TileRuns._normalized(self.n_rows, self.n_cols, keys[last], kinds[last])

    def restrict_columns(self, column_kinds: TileRuns) -> TileRuns:
        """Tile (i, j) gets ``column_kinds``'s class of column j (a 1-row TileRuns) where self is non-EMPTY.

        Output size is proportional to the column breakpoints inside self's non-EMPTY runs, so a static
        column pattern costs only where it is asked for. The output comes out in key order: no sort.
        """
        keep = self.length > 0
        key, stop, live = self.key[keep], self.stop[keep], self.kind[keep] != EMPTY
        row = key // self.n_cols
        c0, c1 = key - row * self.n_cols, stop - row * self.n_cols
        breaks, kinds = column_kinds.key, column_kinds.kind
        first = np.searchsorted(breaks, c0, side="right") - 1
        count = np.where(live, np.searchsorted(breaks, c1, side="left") - first, 1)
        owner = np.repeat(np.arange(key.shape[0]), count)
        index = ragged_arange(first, count)
        inside = live[owner]
        starts = np.where(inside, np.maximum(breaks[np.minimum(index, breaks.size - 1)], c0[owner]), c0[owner])
        out_kinds = np.where(inside, kinds[np.minimum(index, breaks.size - 1)], EMPTY).astype(np.int8)
        return TileRuns._normalized(self.n_rows, self.n_cols, row[owner] * self.n_cols + starts, out_kinds)


def ragged_arange(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start[i], start[i] + length[i]) over i (in the dtype of ``start``)."""
    start = np.asarray(start)
    dtype = start.dtype if np.issubdtype(start.dtype, np.integer) else np.int64
    length = np.asarray(length, dtype=dtype)
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, dtype=dtype)
    offsets = np.cumsum(length) - length
    return np.repeat(start.astype(dtype) - offsets, length) + np.arange(total, dtype=dtype)


class BreakRuns(TileRuns):
    """``TileRuns.from_breaks``: runs given per row by column breaks, every ``TileRuns`` view available.

    The counts a cost reads (``row_counts``, ``tiles_per_kind``) are differences of the break columns,
    O(width) array operations; ``key`` and ``kind`` (n_rows x width entries) are built on first use.
    """

    def __init__(self, starts: list[np.ndarray], kinds: np.ndarray, n_cols: int):
        object.__setattr__(self, "n_rows", starts[0].shape[0])
        object.__setattr__(self, "n_cols", n_cols)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "break_kinds", kinds)

    @cached_property
    def key(self) -> np.ndarray:
        keys = np.empty((self.n_rows, len(self.starts)), dtype=np.int64)
        base = np.arange(self.n_rows, dtype=np.int64) * self.n_cols
        for j, column in enumerate(self.starts):
            np.add(base, column, out=keys[:, j])
        return keys.ravel()

    @cached_property
    def kind(self) -> np.ndarray:
        return np.tile(self.break_kinds, self.n_rows)

    def _tiles_where(self, chosen: np.ndarray) -> np.ndarray:
        """Per row, the tiles in the runs j with chosen[j]: each stretch of chosen runs adds its end column
        minus its start column (boundary j, between runs j - 1 and j, is at starts[j], the last at n_cols)."""
        inside = [False, *chosen, False]  # inside[j + 1]: run j chosen
        columns = [*self.starts, self.n_cols]
        stretches = [
            columns[inside.index(False, j + 1) - 1] - columns[j]  # from boundary j to the next unchosen run
            for j in range(len(columns) - 1)
            if inside[j + 1] and not inside[j]
        ]
        return sum(stretches[1:], stretches[0]) if stretches else np.zeros(self.n_rows, dtype=np.int64)

    @cached_property
    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self._tiles_where(self.break_kinds != EMPTY), self._tiles_where(self.break_kinds == FULL)

    @cached_property
    def tiles_per_kind(self) -> np.ndarray:
        listed, full = (int(count.sum()) for count in self.row_counts)
        return np.array([self.n_rows * self.n_cols - listed, full, listed - full], dtype=np.int64)
