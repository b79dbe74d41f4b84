"""The Plan: what the kernels run and the simulator prices.

A plan splits the allowed set into one or more disjoint **parts** (one unless a union was decomposed).
Each part has a token **layout** (kernel position -> original token, per side) and, per head group, a CSR
**tile table**: for q tile i, the kv tiles ``kv_index[kv_start[i]:kv_start[i+1]]``, FULL tiles first
(``kv_full[i]`` of them, no predicate needed), then PARTIAL tiles (predicate evaluated), each group in
ascending kv tile order. Tiles not listed are EMPTY. The transposed table (per kv tile: q tiles) feeds
the dK/dV pass. Parts combine by log-sum-exp: softmax over the union of disjoint sets.

Invariant (property-tested): ``plan.to_mask(h) == reference_mask(plan.pattern, ..., head=h)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import Pattern, is_dynamic
from maskir.planner.heads import head_groups
from maskir.planner.kinds import TileKind
from maskir.planner.pair_count import count_pairs
from maskir.planner.runs import TileRuns, ragged_arange
from maskir.reference import evaluate_pairs

__all__ = ["Layout", "Plan", "PlanPart", "PlanStats", "TileCounts", "TileKind", "TileTable"]


@dataclass(frozen=True, eq=False)
class Layout:
    """Token order per side: ``q_tokens[p]`` is the original flat index at kernel position p.

    ``None`` is the identity (position p holds token p; the last tile may be ragged). An explicit order
    has length n_tiles * block and marks padding slots with -1; a kv order may hold a subset of the kv
    tokens (a gathered part, e.g. every 128th column).
    """

    name: str
    q_tokens: np.ndarray | None = None
    kv_tokens: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.q_tokens is None and self.kv_tokens is None


@dataclass(frozen=True, eq=False)
class TileTable:
    """CSR lists for one head group. ``kv_*`` per q tile (forward, dQ); ``q_*`` per kv tile (dK/dV).

    Within a row: FULL tiles first (``kv_full[i]`` of them), then PARTIAL, each ascending by index.
    The table is stored as ``runs`` (``TileRuns``: O(runs), what the planner produces and the cost reads);
    the CSR arrays are expanded from it on first use (``kv_count`` and ``kv_full``, the per-row counts the
    cost reads, come from the runs without expanding them):

    - ``kv_start`` int32 [n_q_tiles + 1], ``kv_index`` int32 [nnz], ``kv_kind`` int8 [nnz] (TileKind),
      ``kv_full`` int32 [n_q_tiles];
    - ``q_start`` int32 [n_kv_tiles + 1], ``q_index`` int32 [nnz], ``q_kind`` int8 [nnz], ``q_full`` int32
      [n_kv_tiles].
    """

    runs: TileRuns

    @classmethod
    def from_pairs(cls, q_tile: np.ndarray, kv_tile: np.ndarray, kind: np.ndarray, n_q_tiles: int, n_kv_tiles: int):
        """Build the table from a list of distinct (q tile, kv tile, kind) triples; EMPTY triples are dropped."""
        q_tile, kv_tile, kind = (np.asarray(a, dtype=np.int64) for a in (q_tile, kv_tile, kind))
        return cls(TileRuns.from_pairs(q_tile, kv_tile, kind, n_q_tiles, n_kv_tiles))

    @cached_property
    def _forward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        runs = self.runs
        row, first, stop, kind = runs.listed()
        order = np.argsort(row * 2 + (kind == TileKind.PARTIAL), kind="stable")
        first, length, kind = first[order], (stop - first)[order], kind[order]
        start = np.zeros(runs.n_rows + 1, dtype=np.int32)
        start[1:] = np.cumsum(self.kv_count)
        index = ragged_arange(first.astype(np.int32), length.astype(np.int32))
        return start, index, np.repeat(kind, length)

    @cached_property
    def _backward(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        runs = self.runs
        row, first, stop, kind = runs.listed()
        length = (stop - first).astype(np.int32)
        cols = ragged_arange(first.astype(np.int32), length)
        rows = np.repeat(row.astype(np.int32), length)
        kinds = np.repeat(kind, length)
        sort_key = cols * 2 + (kinds == TileKind.PARTIAL)
        if runs.n_cols * 2 <= np.iinfo(np.uint16).max:
            sort_key = sort_key.astype(np.uint16)  # numpy sorts 16-bit keys by radix: O(nnz)
        order = np.argsort(sort_key, kind="stable")  # stable: q tiles stay ascending within a class
        start = np.zeros(runs.n_cols + 1, dtype=np.int32)
        start[1:] = np.cumsum(np.bincount(cols, minlength=runs.n_cols))
        full = np.bincount(cols[kinds == TileKind.FULL], minlength=runs.n_cols).astype(np.int32)
        return start, rows[order], kinds[order], full

    kv_start = property(lambda self: self._forward[0])
    kv_index = property(lambda self: self._forward[1])
    kv_kind = property(lambda self: self._forward[2])
    kv_full = property(lambda self: self.runs.row_counts[1].astype(np.int32))
    q_start = property(lambda self: self._backward[0])
    q_index = property(lambda self: self._backward[1])
    q_kind = property(lambda self: self._backward[2])
    q_full = property(lambda self: self._backward[3])

    @property
    def kv_count(self) -> np.ndarray:
        """Number of kv tiles visited per q tile (computed from the runs, without expanding them)."""
        return self.runs.row_counts[0]

    @property
    def q_count(self) -> np.ndarray:
        """Number of q tiles visited per kv tile (dK/dV pass)."""
        return np.diff(self.q_start)

    @property
    def nnz(self) -> int:
        return self.runs.tiles(TileKind.FULL) + self.runs.tiles(TileKind.PARTIAL)

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (q tile, kv tile, kind) triples in forward order."""
        q_tile = np.repeat(np.arange(self.kv_start.shape[0] - 1), np.diff(self.kv_start))
        return q_tile, self.kv_index.astype(np.int64), self.kv_kind

    def computed_pairs(self, q_sizes: np.ndarray, kv_sizes: np.ndarray, kind: int | None = None) -> int:
        """Token pairs in listed tiles (or only those of ``kind``), given the valid tokens per q tile and per
        kv tile. O(runs), no run is expanded or filtered (this prices every layout candidate)."""
        runs = self.runs
        row = np.minimum(runs.row, runs.n_rows - 1)  # an empty run may sit at the end key
        base = row * runs.n_cols
        kv_cum = np.concatenate([[0], np.cumsum(kv_sizes, dtype=np.int64)])
        pairs = np.asarray(q_sizes, dtype=np.int64)[row] * (kv_cum[runs.stop - base] - kv_cum[runs.key - base])
        picked = runs.kind != TileKind.EMPTY if kind is None else runs.kind == kind
        return int(np.dot(pairs, picked))


@dataclass(frozen=True, eq=False)
class PlanPart:
    """One disjoint piece of the allowed set: its predicate, layout and per-head-group tile tables."""

    pattern: Pattern
    layout: Layout
    tables: tuple[TileTable, ...]
    head_table: np.ndarray  # int [heads]: head h uses tables[head_table[h]]
    n_q_tiles: int
    n_kv_tiles: int
    static_tables: tuple[tuple[Pattern, TileTable | None], ...] = ()
    """Of a part whose predicate reads run-time data: each static subtree of its gate tree with the tiles
    its own identity plan lists at these block sizes (``planner.gates.list_static_subtrees``; None when
    that plan differs per head). The runtime's gates read them; empty when there is none."""

    @property
    def dynamic(self) -> bool:
        """True when this part's predicate reads run-time data (its tables are a static superset)."""
        return is_dynamic(self.pattern)


@dataclass(frozen=True, eq=False)
class TileCounts:
    """Tile and token-pair counts summed over heads, read from the tables without evaluating a predicate.

    The tile counts are O(runs) sums; ``computed_pairs`` (valid (q, kv) token pairs inside listed tiles,
    padding excluded) also weighs each run by its tiles' token counts, so it is computed on first use.
    """

    full_tiles: int
    partial_tiles: int
    _pairs: Callable[[], int] = field(repr=False)

    @property
    def tiles(self) -> int:
        return self.full_tiles + self.partial_tiles

    @cached_property
    def computed_pairs(self) -> int:
        return self._pairs()


@dataclass(frozen=True)
class PlanStats:
    """Pair and tile counts summed over heads. efficiency = allowed / computed (1.0 is no waste)."""

    allowed_pairs: int
    computed_pairs: int
    full_tiles: int
    partial_tiles: int
    dense_pairs: int
    q_tile_work: np.ndarray = field(repr=False)  # [heads, n_q_tiles] kv tiles visited, summed over parts

    @property
    def efficiency(self) -> float:
        return self.allowed_pairs / self.computed_pairs if self.computed_pairs else 1.0

    @property
    def density(self) -> float:
        return self.allowed_pairs / self.dense_pairs if self.dense_pairs else 0.0


PAIRS_PER_EVALUATION = 1 << 21
"""Largest q x kv block handed to ``evaluate_pairs`` at once (bounds the memory of stats and to_mask)."""


@dataclass(frozen=True, eq=False)
class Plan:
    """A block-sparse plan of ``pattern`` on q/kv canvases for ``heads`` heads (see module docstring)."""

    pattern: Pattern
    canvas: Canvas
    kv_canvas: Canvas
    heads: int
    block_q: int
    block_kv: int
    parts: tuple[PlanPart, ...]
    plan_seconds: float = 0.0

    @property
    def combine(self) -> str:
        """How parts merge: "single" (one part) or "lse" (disjoint parts, log-sum-exp merge)."""
        return "single" if len(self.parts) == 1 else "lse"

    @property
    def layout(self) -> Layout:
        """The layout of the first (main) part."""
        return self.parts[0].layout

    @property
    def dynamic(self) -> bool:
        """True when the pattern reads run-time data (Segments, Routing): the tables are then a static
        superset (PARTIAL wherever the data might allow a pair) that the runtime may refine per call."""
        return is_dynamic(self.pattern)

    def _side(self, part: PlanPart, side: str) -> tuple[int, np.ndarray | None, int]:
        if side == "q":
            return self.block_q, part.layout.q_tokens, self.canvas.size
        return self.block_kv, part.layout.kv_tokens, self.kv_canvas.size

    def tile_tokens(self, part: PlanPart, side: str, tile: int) -> np.ndarray:
        """Original token indices of one tile (padding dropped)."""
        return self._range_tokens(part, side, tile, tile + 1)

    def _range_tokens(self, part: PlanPart, side: str, first: int, stop: int) -> np.ndarray:
        """Original tokens of the consecutive tiles [first, stop), in layout order, padding dropped."""
        block, order, size = self._side(part, side)
        if order is None:
            return np.arange(first * block, min(stop * block, size))
        tokens = order[first * block : stop * block]
        return tokens[tokens >= 0]

    def tile_sizes(self, part: PlanPart, side: str) -> np.ndarray:
        """Valid (non-padding) tokens per tile of one side."""
        block, order, size = self._side(part, side)
        n_tiles = part.n_q_tiles if side == "q" else part.n_kv_tiles
        if order is None:
            return np.minimum(size - np.arange(n_tiles) * block, block)
        return (order.reshape(n_tiles, block) >= 0).sum(axis=1)

    def _row_blocks(self, part: PlanPart, table: TileTable, kind: int, head: int, data: dict):
        """Yield (q tokens, kv tokens, allowed) per q tile over its tiles of one kind, in bounded chunks.

        FULL tiles give an all-True block without evaluation; PARTIAL tiles are evaluated exactly.
        """
        rows, firsts, stops, _ = table.runs.listed(kind)
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1, [rows.size]]) if rows.size else []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            row = int(rows[lo])
            q_tokens = self._range_tokens(part, "q", row, row + 1)
            kv_all = np.concatenate(
                [self._range_tokens(part, "kv", int(a), int(b)) for a, b in zip(firsts[lo:hi], stops[lo:hi])]
            )
            step = max(1, PAIRS_PER_EVALUATION // max(1, q_tokens.size))
            for first in range(0, kv_all.size, step):
                kv_tokens = kv_all[first : first + step]
                if kind == TileKind.FULL:
                    block = np.ones((q_tokens.size, kv_tokens.size), dtype=bool)
                else:
                    block = evaluate_pairs(
                        part.pattern, self.canvas, self.kv_canvas, q_tokens, kv_tokens, head=head, **data
                    )
                yield q_tokens, kv_tokens, block

    def to_mask(self, head: int = 0, *, batch: int = 0, segments=None, routing=None) -> np.ndarray:
        """The allowed set this plan represents for one head, dense [Nq, Nkv] in original token order.

        FULL tiles are filled without evaluation and EMPTY tiles stay False, so this checks the
        planner's classification against ``reference_mask``.
        """
        mask = np.zeros((self.canvas.size, self.kv_canvas.size), dtype=bool)
        data = {"batch": batch, "segments": segments, "routing": routing}
        for part in self.parts:
            table = part.tables[part.head_table[head % self.heads]]
            for kind in (TileKind.FULL, TileKind.PARTIAL):
                for q_tokens, kv_tokens, block in self._row_blocks(part, table, kind, head, data):
                    mask[np.ix_(q_tokens, kv_tokens)] |= block
        return mask

    def _head_groups(self, part: PlanPart):
        """Yield (table, heads using it) for the tables of one part that some head uses."""
        for group, table in enumerate(part.tables):
            heads_in_group = np.flatnonzero(part.head_table[: self.heads] == group)
            if heads_in_group.size:
                yield table, heads_in_group

    @cached_property
    def tile_counts(self) -> TileCounts:
        """FULL/PARTIAL tiles and computed token pairs over all heads and parts: cheap (no evaluation)."""
        full = partial = 0
        for part in self.parts:
            for table, heads_in_group in self._head_groups(part):
                per_kind = table.runs.tiles_per_kind
                full += heads_in_group.size * int(per_kind[TileKind.FULL])
                partial += heads_in_group.size * int(per_kind[TileKind.PARTIAL])
        return TileCounts(full, partial, self._computed_pairs)

    def _computed_pairs(self) -> int:
        computed = 0
        for part in self.parts:
            q_sizes, kv_sizes = self.tile_sizes(part, "q"), self.tile_sizes(part, "kv")
            for table, heads_in_group in self._head_groups(part):
                computed += heads_in_group.size * table.computed_pairs(q_sizes, kv_sizes)
        return computed

    def measure(self, *, batch: int = 0, segments=None, routing=None) -> PlanStats:
        """Exact pair counts with run-time data for dynamic patterns (``stats`` is this without data).

        FULL tiles count their token pairs; PARTIAL tiles are evaluated once per group of heads with the
        same resolved pattern (``heads.head_groups``), per q tile in bounded chunks.
        """
        data = {"batch": batch, "segments": segments, "routing": routing}
        groups, group_of_head = head_groups(self.pattern, self.heads)
        allowed = 0
        for group, (_, head) in enumerate(groups):
            count = int((group_of_head == group).sum())
            for part in self.parts:
                table = part.tables[part.head_table[head]]
                q_sizes, kv_sizes = self.tile_sizes(part, "q"), self.tile_sizes(part, "kv")
                partial = self._partial_pairs(part, table, head, data)
                allowed += count * (table.computed_pairs(q_sizes, kv_sizes, kind=TileKind.FULL) + partial)
        work = np.zeros((self.heads, max(p.n_q_tiles for p in self.parts)), dtype=np.int64)
        for part in self.parts:
            for table, heads_in_group in self._head_groups(part):
                work[heads_in_group, : part.n_q_tiles] += table.kv_count
        counts = self.tile_counts
        dense = self.heads * self.canvas.size * self.kv_canvas.size
        return PlanStats(allowed, counts.computed_pairs, counts.full_tiles, counts.partial_tiles, dense, work)

    def _partial_pairs(self, part: PlanPart, table: TileTable, head: int, data: dict) -> int:
        """Allowed pairs in the PARTIAL tiles of one table: in closed form per run of tiles when the part's
        pattern allows it and its tiles are token ranges (``pair_count``, O(runs)); else evaluated."""
        if part.layout.q_tokens is None and part.layout.kv_tokens is None:
            rows, firsts, stops, _ = table.runs.listed(TileKind.PARTIAL)
            counted = count_pairs(
                part.pattern,
                self.canvas,
                self.kv_canvas,
                rows * self.block_q,
                np.minimum((rows + 1) * self.block_q, self.canvas.size),
                firsts * self.block_kv,
                np.minimum(stops * self.block_kv, self.kv_canvas.size),
            )
            if counted is not None:
                return counted
        return sum(int(block.sum()) for _, _, block in self._row_blocks(part, table, TileKind.PARTIAL, head, data))

    @cached_property
    def stats(self) -> PlanStats:
        """Exact pair counts (PARTIAL tiles evaluated once per head group) and tile counts over heads.

        Computed on first use, never while planning. A dynamic plan needs its data: use ``measure``.
        """
        if self.dynamic:
            raise ValueError(
                f"{self.pattern} depends on run-time data (Segments/Routing): its allowed pairs need that data. "
                "Call plan.measure(segments=..., routing=...), or use plan.tile_counts for the static tiles."
            )
        return self.measure()

    def describe(self) -> str:
        """A short human-readable summary: blocks, layouts, tiles, density and efficiency."""
        s = self.stats if not self.dynamic else None
        counts = self.tile_counts
        lines = [
            f"plan of {self.pattern} on {self.canvas}"
            + (f" x kv {self.kv_canvas}" if self.kv_canvas != self.canvas else ""),
            f"  heads {self.heads}, blocks {self.block_q}x{self.block_kv}, {len(self.parts)} part(s), combine {self.combine}"
            + (", dynamic (static superset, refined at run time)" if self.dynamic else ""),
        ]
        for i, part in enumerate(self.parts):
            nnz = sum(t.nnz for t in part.tables)
            lines.append(
                f"  part {i}: {part.pattern}  layout {part.layout.name}, {part.n_q_tiles} q tiles x "
                f"{part.n_kv_tiles} kv tiles, {len(part.tables)} head group(s), {nnz} listed tiles"
            )
        lines.append(
            f"  tiles {counts.full_tiles:,} full + {counts.partial_tiles:,} partial, computed {counts.computed_pairs:,} pairs"
        )
        if s is not None:
            lines.append(
                f"  density {s.density:.4f}, efficiency {s.efficiency:.3f} (allowed {s.allowed_pairs:,} / computed "
                f"{s.computed_pairs:,} pairs)"
            )
        lines.append(f"  planned in {self.plan_seconds * 1e3:.2f} ms")
        return "\n".join(lines)
