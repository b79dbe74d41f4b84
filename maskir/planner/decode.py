"""Decode-step planning: the plan a decode call reads, its per-call tile lists and its launch grid.

A decode call has a few queries at absolute positions ``q_offset[b] + i`` (i < n_q) against a KV cache of
``kv_len[b]`` positions, under a pattern evaluated on those absolute positions (so ``Causal()``, windows,
sinks and documents mean at decode time what they meant in training). The plan is the pattern's plan on the
square canvas ``Canvas((bucket,))`` with ``DECODE_BLOCK_Q`` x ``DECODE_BLOCK_KV`` tiles in the identity
layout, built once per (pattern, heads, kv length bucket): a call only looks up the rows of the q tiles its
queries fall in (``decode_lists``), it never re-plans.

Grid (``DecodeGrid``), one program per (split, slot, batch, head pack, row block):

- **head packing**: the ``pack`` query heads of one kv head share a program (GQA: K/V read once per kv head);
  its rows are query-major, packed row r = i * pack + g holds query i of head h0 + g. ``pack`` is 1 when the
  query heads of a kv head use different tile lists (``PerHead`` patterns);
- **row blocks** of ``rows`` packed rows (a power of two in [16, ``MAX_DECODE_ROWS``]);
- **slots**: the q tiles of the plan a row block's queries span (at most two while its rows hold at most
  DECODE_BLOCK_Q queries; a call takes the most over its row blocks); slot j walks the list of the j-th and
  masks the rows outside it, and a slot past the row block's last q tile walks an empty list;
- **splits**: a list of T kv tiles is cut into ``splits`` chunks of ceil(T / splits) tiles, each a program
  writing a partial output and log-sum-exp; the partials merge by log-sum-exp (``tables.merge_lse``).
  ``choose_splits`` cuts the longest list into chunks of at most ceil(work / (TARGET_WAVES x SMs)) tiles
  (work: the tiles all programs walk), so one long list of a ragged batch cannot outlast the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import (
    Blocks,
    Columns,
    Dilated,
    Global,
    Grid,
    Neighborhood,
    Pattern,
    Prefix,
    Routing,
    Sink,
    Strided,
    Stripes,
    Window,
)
from maskir.planner.build import plan as make_plan
from maskir.planner.kinds import EMPTY, FULL
from maskir.planner.plan import Plan
from maskir.planner.runs import TileRuns, ragged_arange
from maskir.planner.single_part import BLOCK_Q_CHOICES
from maskir.reference import evaluate_pairs

DECODE_BLOCK_Q = 16
"""q positions per tile of a decode plan: a row block's queries fall in at most two of them."""
DECODE_BLOCK_KV = 64
"""kv positions per tile of a decode plan (one K and one V tile of 64 x D per step)."""
MIN_DECODE_ROWS, MAX_DECODE_ROWS = 16, 64
"""Packed rows per program: at least a tensor-core product's 16, at most 64 (16 queries x 4 heads)."""
DECODE_MAX_Q = 16
"""Query rows per head up to which ``maskir.attention`` / ``CompiledAttention`` take the decode kernels."""
MAX_FEW_Q, FEW_Q_KV_RATIO = 128, 8
"""Beyond DECODE_MAX_Q, up to MAX_FEW_Q queries take the decode kernels when their q tiles cannot fill the
GPU and the keys outnumber them FEW_Q_KV_RATIO to one (a chunk of a prompt against a long cache)."""
MIN_BUCKET = 256
"""Smallest kv length bucket (the plan's canvas): buckets are powers of two from here."""
TARGET_WAVES = 2
"""Splits aim at chunks of 1 / (TARGET_WAVES x SMs) of a call's work (``choose_splits``)."""
UNSUPPORTED = (Routing, Neighborhood, Grid)
"""Nodes the decode path does not run: routing scores whole q tiles; neighborhoods and grids depend on the
canvas extent, which differs between a decode plan's square canvas and the training canvas."""


def decodable(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas) -> bool:
    """The decode path runs this pattern on these canvases: both 1-D, no ``UNSUPPORTED`` node."""
    flat = len(canvas.shape) == 1 and len(kv_canvas.shape) == 1
    return flat and not any(isinstance(node, UNSUPPORTED) for node in pattern.walk())


def prefers_decode(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas, *, batch: int, heads: int, sms: int) -> bool:
    """Whether a forward of this shape takes the decode kernels (``maskir.attention``, ``CompiledAttention``,
    ``maskir.simulate`` all ask this): a decodable pattern with at most ``DECODE_MAX_Q`` queries per head, or
    at most ``MAX_FEW_Q`` queries against at least ``FEW_Q_KV_RATIO`` times as many keys whose training q tiles
    (the planner's smallest, 64 rows), over batch and heads, are fewer than the SMs."""
    if not decodable(pattern, canvas, kv_canvas):
        return False
    n_q = canvas.size
    training_tiles = batch * heads * -(-n_q // min(BLOCK_Q_CHOICES))
    few_tiles = training_tiles < sms and kv_canvas.size >= FEW_Q_KV_RATIO * n_q
    return n_q <= DECODE_MAX_Q or (n_q <= MAX_FEW_Q and few_tiles)


def kv_bucket(pattern: Pattern, positions: int) -> int:
    """The canvas of the decode plan that holds ``positions`` absolute positions: a power of two >= MIN_BUCKET
    on which the pattern is defined (``pattern_extent``: a 4096-wide window needs 4097 positions even while
    the cache holds 100)."""
    needed = max(int(positions), pattern_extent(pattern))
    return max(MIN_BUCKET, 1 << max(0, needed - 1).bit_length())


def pattern_extent(pattern: Pattern) -> int:
    """The fewest 1-D positions on which ``pattern`` is defined (``maskir.ir.check_canvas``'s size rules)."""
    needed = [1]
    for node in pattern.walk():
        if isinstance(node, Window):
            needed.append(max(node.left, node.right) + 1)
        elif isinstance(node, Dilated):
            needed.append(node.window * node.dilation + 1)
        elif isinstance(node, Blocks):
            needed.append(max(np.atleast_1d(node.size)))
        elif isinstance(node, Stripes):
            needed.append(node.width)
        elif isinstance(node, (Sink, Prefix)):
            needed.append(node.n)
        elif isinstance(node, Global):
            needed.append(max(node.indices) + 1)
        elif isinstance(node, (Strided, Columns)):
            needed.append(node.stride)
    return int(max(needed))


def check_decodable(pattern: Pattern) -> None:
    """ValueError when the pattern has a node the decode path does not run (``UNSUPPORTED``)."""
    found = sorted({type(node).__name__ for node in pattern.walk() if isinstance(node, UNSUPPORTED)})
    if found:
        raise ValueError(
            f"The decode path does not run {', '.join(found)} (pattern {pattern}): routing scores whole q tiles "
            "and neighborhoods/grids depend on the canvas extent. Use maskir.attention with the full q canvas."
        )


def decode_plan(pattern: Pattern, bucket: int, heads: int) -> Plan:
    """The pattern on the square canvas (bucket,) in DECODE_BLOCK_Q x DECODE_BLOCK_KV identity tiles."""
    check_decodable(pattern)
    return make_plan(
        pattern, Canvas((bucket,)), heads=heads, block_q=DECODE_BLOCK_Q, block_kv=DECODE_BLOCK_KV, layout="identity"
    )


def head_pack(plan: Plan, kv_heads: int) -> int:
    """Query heads per program: the GQA group when each kv head's query heads share one tile list, else 1."""
    group = plan.heads // kv_heads
    table = np.asarray(plan.parts[0].head_table).reshape(kv_heads, group)
    return group if bool((table == table[:, :1]).all()) else 1


@dataclass(frozen=True)
class DecodeGrid:
    """The launch of one decode call (see the module docstring). Programs = splits x slots x batch x
    (heads / pack) x row_blocks; ``rows`` packed rows each."""

    batch: int
    heads: int
    n_q: int
    pack: int
    rows: int
    row_blocks: int
    slots: int
    splits: int

    @property
    def head_packs(self) -> int:
        return self.heads // self.pack

    @property
    def lists(self) -> int:
        """Tile lists per head group: one per (batch, row block, slot)."""
        return self.batch * self.row_blocks * self.slots

    @property
    def programs(self) -> int:
        return self.splits * self.slots * self.batch * self.head_packs * self.row_blocks


def decode_rows(n_q: int, pack: int) -> tuple[int, int]:
    """(packed rows per program, row blocks) for n_q queries of ``pack`` heads."""
    packed = n_q * pack
    rows = min(MAX_DECODE_ROWS, max(MIN_DECODE_ROWS, 1 << (packed - 1).bit_length()))
    return rows, -(-packed // rows)


def query_tiles(
    q_offsets: np.ndarray, n_q: int, pack: int, rows: int, row_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) q tile [B, row_blocks] of each row block's queries; slots = max(last - first) + 1."""
    first = np.arange(row_blocks) * rows // pack  # packed row r = i * pack + g
    last = np.minimum(n_q - 1, (np.arange(1, row_blocks + 1) * rows - 1) // pack)
    lo = (q_offsets[:, None] + first[None, :]) // DECODE_BLOCK_Q
    hi = (q_offsets[:, None] + last[None, :]) // DECODE_BLOCK_Q
    return lo, hi


def choose_splits(tiles: np.ndarray, programs_per_list: np.ndarray, sms: int) -> int:
    """Splits per list (one for the whole call): the longest list in chunks of at most ceil(work /
    (TARGET_WAVES x sms)) tiles, where work = sum of tiles x the programs walking each list; between 1 and
    the longest list's tiles. Equal lists on few programs get TARGET_WAVES programs per SM."""
    longest = int(np.max(tiles, initial=0))
    work = int(np.dot(tiles, programs_per_list))
    chunk = max(1, -(-work // (TARGET_WAVES * sms)))
    return max(1, min(-(-longest // chunk), longest))


@dataclass(frozen=True)
class DecodeLists:
    """Per-call CSR tile lists, row ((group * B + b) * row_blocks + rb) * slots + slot: the kv tiles of q tile
    (first q tile of row block rb) + slot that hold valid positions of batch b, FULL first, then PARTIAL."""

    start: np.ndarray  # int32 [rows + 1]
    full: np.ndarray  # int32 [rows]
    index: np.ndarray  # int32 [entries] (at least one)

    @property
    def count(self) -> np.ndarray:
        return np.diff(self.start)


def row_lists(
    runs: TileRuns, q_tiles: np.ndarray, first_tile: np.ndarray, stop_tile: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tiles, FULL tiles, kv tile index) of the lists of q tiles ``q_tiles[r]`` cut to kv tiles
    [first_tile[r], stop_tile[r]): each list FULL tiles first, then PARTIAL, each ascending; lists
    concatenated in the order of ``q_tiles``. Vectorised over the lists: O(runs of the rows read)."""
    q_tiles = np.asarray(q_tiles, dtype=np.int64)
    inside = q_tiles < runs.n_rows
    base = np.minimum(q_tiles, runs.n_rows - 1) * runs.n_cols
    lo = np.searchsorted(runs.key, base)  # every row start is a key: the row's first run
    hi = np.where(inside, np.searchsorted(runs.key, base + runs.n_cols), lo)
    run = ragged_arange(lo, hi - lo)
    row = np.repeat(np.arange(q_tiles.size), hi - lo)
    first = np.maximum(runs.key[run] - base[row], np.asarray(first_tile)[row])
    stop = np.minimum(runs.stop[run] - base[row], np.asarray(stop_tile)[row])
    kind = runs.kind[run]
    keep = (stop > first) & (kind != EMPTY)
    first, stop, row, partial = first[keep], stop[keep], row[keep], kind[keep] != FULL
    order = np.lexsort((first, partial, row))
    first, stop, row, partial = first[order], stop[order], row[order], partial[order]
    length = stop - first
    tiles = np.bincount(row, weights=length, minlength=q_tiles.size).astype(np.int64)
    full = np.bincount(row, weights=np.where(partial, 0, length), minlength=q_tiles.size).astype(np.int64)
    return tiles, full, ragged_arange(first, length)


def valid_tiles(kv_lens: np.ndarray, ring: int | None) -> tuple[np.ndarray, np.ndarray]:
    """[first, stop) kv tiles holding valid positions per batch: positions < kv_len (and, for a ring buffer of
    ``ring`` slots, >= kv_len - ring)."""
    stop = -(-kv_lens // DECODE_BLOCK_KV)
    first = np.zeros_like(stop) if ring is None else np.maximum(0, kv_lens - ring) // DECODE_BLOCK_KV
    return first, stop


def decode_lists(
    plan: Plan,
    grid: DecodeGrid,
    first_q_tiles: np.ndarray,
    last_q_tiles: np.ndarray,
    kv_lens: np.ndarray,
    ring: int | None = None,
) -> DecodeLists:
    """The lists a call walks (``DecodeLists``): rows of the plan's tables, cut to each batch's valid tiles;
    a slot past the last q tile of its row block's queries gets an empty list (its rows are all masked)."""
    first_kv, stop_kv = valid_tiles(kv_lens, ring)
    shape = (grid.batch, grid.row_blocks, grid.slots)  # list order within a head group
    q_tiles = first_q_tiles[:, :, None] + np.arange(grid.slots)
    first = np.broadcast_to(first_kv[:, None, None], shape).ravel()
    stop = np.where(q_tiles <= last_q_tiles[:, :, None], stop_kv[:, None, None], 0).ravel()
    q_tiles = q_tiles.ravel()
    lists = [row_lists(table.runs, q_tiles, first, stop) for table in plan.parts[0].tables]
    start = np.zeros(len(lists) * q_tiles.size + 1, dtype=np.int64)
    start[1:] = np.cumsum(np.concatenate([tiles for tiles, _, _ in lists]))
    index = np.concatenate([entries for _, _, entries in lists]) if start[-1] else np.zeros(1, dtype=np.int64)
    full = np.concatenate([full for _, full, _ in lists])
    return DecodeLists(start.astype(np.int32), full.astype(np.int32), index.astype(np.int32))


def check_ring(plan: Plan, q_offsets: np.ndarray, n_q: int, kv_lens: np.ndarray, ring: int) -> None:
    """ValueError when a query may see a key a ring buffer of ``ring`` positions no longer holds (positions
    < kv_len - ring): the listed tiles below the ring are evaluated exactly (a data-dependent pattern that
    lists any cannot be checked and is refused)."""
    part = plan.parts[0]
    heads = [int(np.flatnonzero(part.head_table == g)[0]) for g in range(len(part.tables))]
    for b, (offset, gone) in enumerate(zip(q_offsets.tolist(), (kv_lens - ring).tolist())):
        if gone <= 0:
            continue
        q_pos = offset + np.arange(n_q)
        q_tiles = np.arange(q_pos[0] // DECODE_BLOCK_Q, q_pos[-1] // DECODE_BLOCK_Q + 1)
        below = np.full(q_tiles.size, -(-gone // DECODE_BLOCK_KV))
        for table, head in zip(part.tables, heads):
            _, _, tiles = row_lists(table.runs, q_tiles, np.zeros_like(below), below)
            kv_pos = (tiles[:, None] * DECODE_BLOCK_KV + np.arange(DECODE_BLOCK_KV)).ravel()
            kv_pos = np.unique(kv_pos[kv_pos < gone])
            if kv_pos.size == 0:
                continue
            if part.dynamic:
                raise ValueError(
                    f"A ring buffer of {ring} positions cannot hold what {part.pattern} may allow (its run-time data "
                    f"can reach keys before position {gone}): use a full cache."
                )
            allowed = evaluate_pairs(part.pattern, plan.canvas, plan.canvas, q_pos, kv_pos, batch=b, head=head)
            if allowed.any():
                i, j = np.argwhere(allowed)[0]
                raise ValueError(
                    f"A ring buffer of {ring} positions no longer holds key {kv_pos[j]} (< kv_len - ring = {gone}) that "
                    f"{part.pattern} allows for the query at {q_pos[i]} (batch {b}): keep more positions, or keep "
                    "those keys in a full cache."
                )


def decode_grid(
    plan: Plan,
    kv_heads: int,
    n_q: int,
    q_offsets: np.ndarray,
    kv_lens: np.ndarray,
    *,
    sms: int,
    ring: int | None = None,
    splits: int | None = None,
) -> tuple[DecodeGrid, DecodeLists, np.ndarray]:
    """The grid and lists of one call, and the head group of each head pack's first head.

    ``splits`` None: ``choose_splits`` from the lists' lengths and ``sms``. ``ring``: ``check_ring`` first.
    """
    batch = int(q_offsets.shape[0])
    pack = head_pack(plan, kv_heads)
    rows, row_blocks = decode_rows(n_q, pack)
    first_q_tiles, last_q_tiles = query_tiles(q_offsets, n_q, pack, rows, row_blocks)
    if ring is not None:
        check_ring(plan, q_offsets, n_q, kv_lens, ring)
    slots = int((last_q_tiles - first_q_tiles).max()) + 1
    grid = DecodeGrid(batch, plan.heads, n_q, pack, rows, row_blocks, slots, 1)
    lists = decode_lists(plan, grid, first_q_tiles, last_q_tiles, kv_lens, ring)
    groups = np.asarray(plan.parts[0].head_table)[:: grid.pack]
    packs = np.bincount(groups, minlength=len(plan.parts[0].tables))  # programs walking each group's lists
    if splits is None:
        splits = choose_splits(lists.count, np.repeat(packs, grid.lists), sms)
    return DecodeGrid(batch, plan.heads, n_q, pack, rows, row_blocks, slots, splits), lists, groups
