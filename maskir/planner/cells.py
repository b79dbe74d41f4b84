"""Exact tile classes of a ``Predicate`` from counts of allowed pairs per 16 x 16 cell, vectorised.

First, interval arithmetic on the mask_mod (``bounds``) proves asked-for tiles EMPTY or FULL without
evaluating a pair (a tile across two documents, one inside a document); exact and sound, so the rest stay
exact. The (q, kv) grid is cut into chunks of ``CHUNK`` x ``CHUNK`` tokens; only the chunks that the tiles
left open touch are evaluated (the planner asks for the tiles the rest of the pattern leaves open, e.g. the
superset an affine part of the mask_mod gives). A chunk calls the mask_mod once with broadcast torch index
tensors ``arange + offset`` (built inside the counting function) and sums the result into counts per
``CELL`` x ``CELL`` cell; in a chunk reaching past the canvas the indices are clamped for the call and the
pairs outside excluded from the counts. When the chunks to evaluate hold more than ``COMPILE_ABOVE_PAIRS``
pairs they run under ``torch.compile(dynamic=True)``: the chunk offsets are symbols, so one fused loop
serves every interior chunk (one more for edge chunks), and in it a table lookup ``T[q]`` is a load at an
index expression and ``q * kv % 7`` integer arithmetic with a constant, not gathers through index tensors
(2x faster than passing the indices in); if compiling fails the chunks run eagerly. On the CPU chunks run
on ``CPU_THREADS`` torch threads. Memory: one chunk's
temporaries, plus a prefix-sum table per evaluated chunk. The evaluation runs on CUDA when a tensor the
mask_mod captures is there.

Chunk sides are multiples of 128, so a tile of a block size dividing them (every block up to 128) lies in
one chunk; its allowed pairs are a box sum of the chunk's cells, O(1). The
counts are kept during one ``plan`` call (its block-size candidates share them) and dropped at its end, so
a later plan sees the tensors the mask_mod reads as they are then.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from maskir.ir import Predicate
from maskir.planner.bounds import tile_bounds
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.progress import Progress

CELL = 16
"""Cell side in tokens: every block size (a power of two >= 16) is a whole number of cells."""
CHUNK = 512
"""Chunk side in tokens (at most; a multiple of 128): small enough that the chunks the open tiles touch
follow a band or document structure closely, large enough that a chunk call costs more than its overhead."""
COMPILE_ABOVE_PAIRS = 1 << 24
"""Evaluations of more pairs run a torch.compile'd chunk; smaller ones run eagerly."""
CPU_THREADS = 1
"""torch threads for CPU chunk evaluation. A chunk is a few hundred thousand pairs (about a millisecond on one
core); an OpenMP parallel region per chunk cost more than a second thread gained (6 ms against 1.3 ms per
512 x 512 chunk on the project's loaded 2-core machine)."""
FRUITLESS_TILES = 256
"""Tiles a bounds trace must leave all undecided before bounds are skipped for the rest of the plan; with
four times as many tiles asked, a spread sample of this many is traced first (a mask_mod bounds decide
nowhere in the sample, such as ``(q * kv) % 7``, skips the whole trace)."""
MAX_CHUNKS = 1 << 14
"""At most this many chunks are kept (64 KiB of prefix sums each); beyond, tiles are evaluated one by one."""
LOGGER = logging.getLogger("maskir.planner")


def device_of(predicate: Predicate) -> torch.device:
    """CUDA when a tensor the mask_mod reads (closure or global) lives there, else the CPU."""
    try:
        names = inspect.getclosurevars(predicate.fn)
    except TypeError:  # not a Python function (a callable object)
        return torch.device("cpu")
    for value in (*names.nonlocals.values(), *names.globals.values()):
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            return value.device
    return torch.device("cpu")


@contextmanager
def _cpu_threads(threads: int | None):
    """torch's intra-op CPU threads set to ``threads`` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cell_sums(allowed, q_side: int, kv_side: int) -> torch.Tensor:
    """Allowed pairs per CELL x CELL cell of a [q_side, kv_side] bool chunk (or one broadcasting to it)."""
    allowed = torch.as_tensor(allowed).to(torch.bool).expand(q_side, kv_side)
    return allowed.view(q_side // CELL, CELL, kv_side // CELL, CELL).sum((1, 3), dtype=torch.int32)


def _interior_counts(fn, q0: int, kv0: int, q_side: int, kv_side: int, head: int, device) -> torch.Tensor:
    """Allowed pairs per cell of the chunk q in [q0, q0 + q_side) x kv in [kv0, kv0 + kv_side), all inside
    the canvas. The indices are ``arange + offset`` inside the function, so the compiled loop sees index
    arithmetic (a table lookup ``T[q]`` becomes a contiguous load, ``% 7`` a scalar remainder), not gathers."""
    q = torch.arange(q_side, device=device) + q0
    kv = torch.arange(kv_side, device=device) + kv0
    zero = torch.zeros((), dtype=torch.long, device=device)
    return _cell_sums(fn(zero, zero + head, q[:, None], kv[None, :]), q_side, kv_side)


def _edge_counts(
    fn, q0: int, kv0: int, q_side: int, kv_side: int, n_q: int, n_kv: int, head: int, device
) -> torch.Tensor:
    """``_interior_counts`` of a chunk reaching past the canvas: indices past it are clamped for the call
    (a table of n entries is never read past its end) and their pairs not counted."""
    q = torch.arange(q_side, device=device) + q0
    kv = torch.arange(kv_side, device=device) + kv0
    zero = torch.zeros((), dtype=torch.long, device=device)
    allowed = fn(zero, zero + head, q.clamp(max=n_q - 1)[:, None], kv.clamp(max=n_kv - 1)[None, :])
    allowed = torch.as_tensor(allowed).to(torch.bool) & (q < n_q)[:, None] & (kv < n_kv)[None, :]
    return _cell_sums(allowed, q_side, kv_side)


def _side(n: int) -> int:
    """Chunk side for n tokens: CHUNK, or n rounded up to a multiple of 128 when that is smaller."""
    return min(CHUNK, -(-n // 128) * 128)


class ChunkCounts:
    """Per evaluated chunk (i, j): the 2-D prefix sum of its cell counts, int64 [side/CELL + 1, side/CELL + 1]."""

    def __init__(self, predicate: Predicate, n_q: int, n_kv: int, head: int):
        self.predicate, self.n_q, self.n_kv, self.head = predicate, n_q, n_kv, head
        self.q_side, self.kv_side = _side(n_q), _side(n_kv)
        self.device = device_of(predicate)
        self.prefix: dict[tuple[int, int], np.ndarray] = {}
        self.bounds_decide = True
        """False once interval bounds decided none of ``FRUITLESS_TILES`` tiles (a sample, or all asked at
        one block size): the mask_mod is opaque to them (``(q * kv) % 7``), so the plan's later traces are
        skipped (a pure time saving: skipped tiles are evaluated exactly)."""

    def _counts(self, functions, i: int, j: int) -> torch.Tensor:
        """Cell counts of chunk (i, j) with ``functions`` = (interior, edge) counters, eager or compiled."""
        interior, edge = functions
        q0, kv0 = i * self.q_side, j * self.kv_side
        fn, sides, where = self.predicate.fn, (self.q_side, self.kv_side), {"head": self.head, "device": self.device}
        if q0 + self.q_side <= self.n_q and kv0 + self.kv_side <= self.n_kv:
            return interior(fn, q0, kv0, *sides, **where)
        return edge(fn, q0, kv0, *sides, self.n_q, self.n_kv, **where)

    def ensure(self, chunks: np.ndarray) -> None:
        """Evaluate the chunks (rows of [i, j]) not evaluated yet."""
        missing = [(int(i), int(j)) for i, j in chunks if (int(i), int(j)) not in self.prefix]
        if not missing:
            return
        compiled = len(missing) * self.q_side * self.kv_side > COMPILE_ABOVE_PAIRS
        # dynamic: offsets (and an edge chunk's sizes) are symbols, so one compiled loop serves every chunk
        functions = (_interior_counts, _edge_counts)
        if compiled:
            functions = tuple(torch.compile(f, dynamic=True) for f in functions)
        progress = Progress(f"evaluating {self.predicate}", len(missing), "chunks")
        with _cpu_threads(CPU_THREADS if self.device.type == "cpu" else None):
            self._evaluate(missing, functions, compiled, progress)
        progress.close()

    def _evaluate(self, missing: list, functions: tuple, compiled: bool, progress: Progress) -> None:
        for done, (i, j) in enumerate(missing, 1):
            try:
                counts = self._counts(functions, i, j)
            except Exception as error:  # torch.compile cannot build this mask_mod here (no compiler, an op)
                if not compiled:
                    raise
                LOGGER.warning(
                    "maskir plan: torch.compile failed on %s (%s); evaluating eagerly", self.predicate, error
                )
                compiled, functions = False, (_interior_counts, _edge_counts)
                counts = self._counts(functions, i, j)
            prefix = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1), dtype=np.int64)
            np.cumsum(np.cumsum(counts.cpu().numpy(), axis=0, dtype=np.int64), axis=1, out=prefix[1:, 1:])
            self.prefix[i, j] = prefix
            progress.update(done)


def _chunks_used(chunk_i: np.ndarray, chunk_j: np.ndarray, kv_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct chunks (rows of [i, j], row-major order) and, per tile, the row of its chunk: a mark per
    chunk of the grid and a running count, O(tiles + chunks) (``np.unique(axis=0)`` sorts the tiles)."""
    flat = chunk_i * kv_chunks + chunk_j
    used = np.zeros(int(flat.max()) + 1 if flat.size else 0, dtype=bool)
    used[flat] = True
    slots = np.flatnonzero(used)
    row_of = np.cumsum(used) - 1
    return np.stack([slots // kv_chunks, slots % kv_chunks], axis=1), row_of[flat]


@lru_cache(maxsize=8)
def chunk_counts(predicate: Predicate, n_q: int, n_kv: int, head: int) -> ChunkCounts:
    """The counts of one predicate, grid and head, shared by the candidates of one plan call."""
    return ChunkCounts(predicate, n_q, n_kv, head)


def _decides_none(bounds: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """True when ``tile_bounds`` gave up or left every tile both maybe-true and maybe-false."""
    return bounds is None or bool((bounds[0] & bounds[1]).all())


def _useful_bounds(counts: ChunkCounts, q_block: int, kv_block: int, rows: np.ndarray, cols: np.ndarray):
    """``tile_bounds`` of the tiles, or None when ``counts.bounds_decide`` is already False or turns False
    here: with at least four times ``FRUITLESS_TILES`` tiles a spread sample of that many is traced first
    and the full trace skipped when it decides none; a full trace of at least ``FRUITLESS_TILES`` tiles
    that decides none turns bounds off for the plan's later block sizes."""
    if not counts.bounds_decide:
        return None
    trace = (counts.predicate, counts.n_q, counts.n_kv, q_block, kv_block)
    if rows.size >= 4 * FRUITLESS_TILES:
        sample = np.linspace(0, rows.size - 1, FRUITLESS_TILES).astype(np.int64)
        if _decides_none(tile_bounds(*trace, rows[sample], cols[sample], counts.head)):
            counts.bounds_decide = False
            return None
    bounded = tile_bounds(*trace, rows, cols, counts.head)
    if bounded is None or (rows.size >= FRUITLESS_TILES and _decides_none(bounded)):
        counts.bounds_decide = False
    return bounded


def tile_kinds(
    predicate: Predicate,
    n_q: int,
    n_kv: int,
    q_block: int,
    kv_block: int,
    rows: np.ndarray,
    cols: np.ndarray,
    head: int = 0,
) -> np.ndarray | None:
    """Classes of identity tiles (rows[i], cols[i]) from cell counts; None when too many chunks would be kept
    or a tile would straddle chunks (the caller evaluates tile by tile)."""
    counts = chunk_counts(predicate, n_q, n_kv, head)
    if counts.q_side % q_block or counts.kv_side % kv_block:
        return None
    kinds = np.full(rows.shape, PARTIAL, dtype=np.int8)
    bounded = _useful_bounds(counts, q_block, kv_block, rows, cols)
    if bounded is not None:  # tiles proven EMPTY or FULL by interval arithmetic are not evaluated
        may_true, may_false = bounded
        kinds[~may_true] = EMPTY
        kinds[may_true & ~may_false] = FULL
        open_tiles = np.flatnonzero(may_true & may_false)
        rows, cols = rows[open_tiles], cols[open_tiles]
    q_first, kv_first = rows * q_block, cols * kv_block
    chunk_i, chunk_j = q_first // counts.q_side, kv_first // counts.kv_side
    keys, which = _chunks_used(chunk_i, chunk_j, -(-n_kv // counts.kv_side))
    if len(counts.prefix) + keys.shape[0] > MAX_CHUNKS:
        return None
    counts.ensure(keys)
    prefix = np.stack([counts.prefix[int(i), int(j)] for i, j in keys]) if keys.size else np.zeros((0, 1, 1))
    which = which.reshape(-1)
    r0, c0 = (q_first - chunk_i * counts.q_side) // CELL, (kv_first - chunk_j * counts.kv_side) // CELL
    r1, c1 = r0 + q_block // CELL, c0 + kv_block // CELL
    hits = prefix[which, r1, c1] - prefix[which, r0, c1] - prefix[which, r1, c0] + prefix[which, r0, c0]
    q_count = np.minimum(q_first + q_block, n_q) - q_first
    kv_count = np.minimum(kv_first + kv_block, n_kv) - kv_first
    evaluated = np.where(hits == 0, EMPTY, np.where(hits == q_count * kv_count, FULL, PARTIAL)).astype(np.int8)
    if bounded is None:
        return evaluated
    kinds[open_tiles] = evaluated
    return kinds
