"""Exact tile classes of a ``Predicate`` from counts of allowed pairs per 16 x 16 cell, vectorised.

First, interval arithmetic on the mask_mod (``bounds``) proves asked-for tiles EMPTY or FULL without
evaluating a pair (a tile across two documents, one inside a document); exact and sound, so the rest stay
exact. Then, when the open tiles outside already counted chunks hold ``WITNESS_ABOVE_PAIRS`` pairs or more,
witnesses: a tile is PARTIAL as soon as one of its pairs is allowed and one masked, so a sample of a few pairs
per tile (a 4 x 4 grid, then an 8 x 8 one for the tiles it left undecided; ``_witnesses``) proves most tiles
of an opaque mask PARTIAL without counting them (``(q * kv) % 7`` at 16K tokens: 64 of 16384 pairs per 128 x
128 tile, against all of them counted); tiles of larger blocks within one plan reuse the witnesses of smaller
ones inside them (``Witnesses``). Only the tiles still open are counted: by their chunks (below), or, when
they hold under ``1 / SPARSE_OPEN`` of those chunks' pairs and the C counter runs, tile by tile over their
tokens (``_counted_apart``; the C counter runs once built, or for more than ``COMPILE_ABOVE_PAIRS`` pairs).

The (q, kv) grid is cut into chunks of ``CHUNK`` x ``CHUNK`` tokens; only the chunks that the tiles left open
touch are evaluated (the planner asks for the tiles the rest of the pattern leaves open, e.g. the superset an
affine part of the mask_mod gives). A call evaluates a rectangle of chunks: it calls the mask_mod once with
broadcast torch index tensors ``arange + origin`` (built inside the counting function) and sums the result
into counts per ``CELL`` x ``CELL`` cell; in a rectangle reaching past the canvas the indices are clamped for
the call and the pairs outside excluded from the counts.

When the chunks to evaluate hold more than ``COMPILE_ABOVE_PAIRS`` pairs and the evaluation runs on the CPU, a
mask_mod inside ``native``'s model (index arithmetic, comparisons, ``where``/min/max/abs, table lookups: most
are) is compiled to a C loop that GCC vectorises, in int32 when every value fits there, and counts
``NATIVE_CHUNKS`` chunks per call on torch's threads (``(q * kv) % 65537 == 1`` over a 16K grid: 15-25 ms,
against 105-110 ms for ``torch.compile(create_block_mask)``'s loop and for the torch.compile'd counter below).
Otherwise (on CUDA, outside the model, no C compiler) the calls run under ``torch.compile(dynamic=True)``,
which fuses the mask_mod with the cell sums into one C++ loop (no pair grid is stored): in it a table lookup
``T[q]`` is a load at an index expression and ``q * kv % 7`` integer arithmetic with a constant. Then an
interior row of chunks whose open chunks fill at least half of the row up to its last one is evaluated from kv
0 to there (when such rows hold ``FROM_ZERO_ABOVE_PAIRS`` open pairs), and consecutive such rows of one width
share a call of at most ``CALL_CELLS`` cells (an opaque mask's whole 16K grid is one call). Such a call hands
its origins over as tensor sizes (``_sized``): kv's is the constant 0 and q's a symbol Inductor knows is >= 0,
so ``%`` and ``//`` of the indices stay plain C arithmetic, and ``(q * kv) % 7`` ran at 0.5 ns per pair on one
core, as fast as ``torch.compile(create_block_mask)``'s static loop and 2x faster than with int origins
(unknown sign: Python's remainder needs a sign fix-up per pair); so a row evaluated from kv 0 costs at most
the time of its open chunks. Every other chunk is a call of its own with int origins (with two sized origins
such chunks ran 1.0-2x slower). One compiled loop serves each kind of call (at most four: rows from kv 0 with
q's origin 0 or not; single chunks inside the canvas or reaching past it). If compiling fails the chunks run
eagerly, one per call. On the CPU a call of ``PARALLEL_ABOVE_PAIRS`` pairs or more runs on torch's threads
(OpenMP over q cells), a smaller one on one thread. Memory: one call's cell counts (at most ``CALL_CELLS``
int16 when compiled; eagerly one chunk's temporaries, a few bytes per pair), plus a prefix-sum table per
evaluated chunk. The evaluation runs on CUDA when a tensor the mask_mod captures is there.

Chunk sides are multiples of 128, so a tile of a block size dividing them (every block up to 128) lies in one
chunk; its allowed pairs are a box sum of the chunk's cells, O(1), read from one pool array of every evaluated
chunk's prefix sums. The counts (and witnesses) are kept during one ``plan`` call (its block-size candidates
share them) and dropped at its end, so a later plan sees the tensors the mask_mod reads as they are then.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from functools import cached_property, lru_cache

import numpy as np
import torch

from maskir.ir import Predicate
from maskir.planner import native
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
CALL_CELLS = 1 << 20
"""Cells one merged compiled call counts at most (2 MiB of int16 counts)."""
FROM_ZERO_ABOVE_PAIRS = 1 << 26
"""Rows are evaluated from kv 0 only when their open chunks hold at least this many pairs: the two compiled
loops that adds cost a process's first plan about a second or more with a warm inductor cache (the documents
mask at 16K: 3.2 s with them, 1.4 s without), several cold; below this they save under about 30 ms a plan."""
PARALLEL_ABOVE_PAIRS = 1 << 22
"""CPU calls over at least this many pairs run on torch's threads; smaller ones on one thread (an OpenMP region
per 512 x 512 chunk cost more than a second thread gained: 6 ms against 1.3 ms on the loaded 2-core machine)."""
WITNESS_SIDES = (4, 8)
"""Rows (and columns) of the sample grids per tile that look for an allowed and a masked pair: a small one
first, a larger one for the tiles it left undecided when it decided at least half of its tiles
(``(q * kv) % 7``: 92% of tiles decided by 16 pairs, all but 0.01% by the 64 more; ``(q * kv) % 65537 == 1``:
none by 16, so no second sample)."""
WITNESS_ABOVE_PAIRS = 1 << 20
"""Open tiles holding at least this many pairs are sampled for witnesses before any is counted (below, the
sample would save little: the counting runs eagerly on a few chunks)."""
WITNESS_PAIRS = 1 << 20
"""Sample pairs evaluated per eager call (bounds the temporaries to a few MiB)."""
WITNESS_GRID_TILES = 1 << 22
"""Witnesses are kept (two bools a tile) for tile grids up to this many tiles, for larger blocks to reuse."""
FRUITLESS_TILES = 256
"""Tiles a bounds trace must leave (almost) all undecided before bounds are skipped for the rest of the plan;
with four times as many tiles asked, a spread sample of this many is traced first (a mask_mod bounds decide
nowhere in the sample, such as ``(q * kv) % 7``, skips the whole trace)."""
FEW_DECIDED = 8
"""Bounds that decide under 1 / FEW_DECIDED of the traced tiles are not worth tracing (``(q * kv) % 65537 == 1``
is decided only near q = kv = 0: 1 of 256 spread tiles at 64 x 32 blocks and 16K tokens)."""
USE_NATIVE = True
"""Count on the CPU with the mask_mod compiled to C (``native``) when it is in that model; False forces torch."""
NATIVE_CHUNKS = 1024
"""Chunks counted per call of the C counter (2 MiB of int16 counts for 512 x 512 chunks)."""
SPARSE_OPEN = 8
"""Open tiles in chunks not counted yet are counted tile by tile (C only) when they hold under 1 / SPARSE_OPEN
of those chunks' pairs: a chunk counted for one open tile of 64 x 32 evaluates 128 times its pairs."""
MAX_CHUNKS = 1 << 14
"""At most this many chunks are kept (4.3 KiB of prefix sums each); beyond, tiles are evaluated one by one."""
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
    # int16 holds a cell's 256 pairs; Inductor's loop with an int16 sum ran 1.3-2.1x faster than with int32
    # (``(q * kv) % 65537 == 1``, a documents mask: GCC keeps the int32 accumulator in a vector register)
    return allowed.view(q_side // CELL, CELL, kv_side // CELL, CELL).sum((1, 3), dtype=torch.int16)


def _sized(offset: int, device: torch.device) -> torch.Tensor:
    """An origin as the length of a stride-0 tensor (one element of storage, on the evaluation device).
    Inductor knows a size is >= 0, so the compiled loop keeps ``%`` and ``//`` of the indices as C arithmetic;
    an int origin has unknown sign and Python's remainder then needs a sign fix-up per pair. Marked dynamic so
    that equal q and kv origins stay two symbols; origin 0 compiles apart (sizes 0 and 1 are specialised), as
    a constant."""
    origin = torch.empty(1, device=device).expand(offset)
    if offset > 1:
        torch._dynamo.mark_dynamic(origin, 0)
    return origin


def _first(origin: int | torch.Tensor) -> int:
    """The first index an origin stands for: an int, or the length of a ``_sized`` tensor."""
    return origin if isinstance(origin, int) else origin.shape[0]


def _interior_counts(fn, q_origin, kv_origin, q_side: int, kv_side: int, head: int, device) -> torch.Tensor:
    """Allowed pairs per cell of q in [q0, q0 + q_side) x kv in [kv0, kv0 + kv_side), all inside the canvas,
    q0 and kv0 given by the origins (``_first``). The indices are ``arange + origin`` inside the function, so the compiled
    loop sees index arithmetic (a table lookup ``T[q]`` becomes a contiguous load, ``% 7`` a scalar remainder),
    not gathers."""
    q = torch.arange(q_side, device=device) + _first(q_origin)
    kv = torch.arange(kv_side, device=device) + _first(kv_origin)
    zero = torch.zeros((), dtype=torch.long, device=device)
    return _cell_sums(fn(zero, zero + head, q[:, None], kv[None, :]), q_side, kv_side)


def _edge_counts(fn, q_origin, kv_origin, q_side: int, kv_side: int, n_q: int, n_kv: int, head, device):
    """``_interior_counts`` of a rectangle reaching past the canvas: indices past it are clamped for the call
    (a table of n entries is never read past its end) and their pairs not counted."""
    q = torch.arange(q_side, device=device) + _first(q_origin)
    kv = torch.arange(kv_side, device=device) + _first(kv_origin)
    zero = torch.zeros((), dtype=torch.long, device=device)
    allowed = fn(zero, zero + head, q.clamp(max=n_q - 1)[:, None], kv.clamp(max=n_kv - 1)[None, :])
    allowed = torch.as_tensor(allowed).to(torch.bool) & (q < n_q)[:, None] & (kv < n_kv)[None, :]
    return _cell_sums(allowed, q_side, kv_side)


def _side(n: int) -> int:
    """Chunk side for n tokens: CHUNK, or n rounded up to a multiple of 128 when that is smaller."""
    return min(CHUNK, -(-n // 128) * 128)


class Witnesses:
    """Per block size pair whose tiles were sampled (grids of at most ``WITNESS_GRID_TILES`` tiles): for every
    tile, whether a sampled pair in it was allowed, and whether one was masked. A tile of larger blocks that
    are multiples of these holds both kinds of witness when its tiles do together: it is PARTIAL unsampled."""

    def __init__(self, n_q: int, n_kv: int):
        self.n_q, self.n_kv = n_q, n_kv
        self.seen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _grid(self, q_block: int, kv_block: int) -> tuple[int, int]:
        return -(-self.n_q // q_block), -(-self.n_kv // kv_block)

    def record(self, q_block, kv_block, rows: np.ndarray, cols: np.ndarray, allowed, masked) -> None:
        """Add the witnesses ``allowed``/``masked`` (bool per tile) of tiles (rows, cols) at these blocks."""
        grid = self._grid(q_block, kv_block)
        if grid[0] * grid[1] > WITNESS_GRID_TILES:
            return
        flags = self.seen.setdefault((q_block, kv_block), (np.zeros(grid, bool), np.zeros(grid, bool)))
        flags[0][rows, cols] |= allowed
        flags[1][rows, cols] |= masked

    def mixed(self, q_block: int, kv_block: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Per tile (rows, cols) at these blocks: True when tiles of smaller blocks inside it saw an allowed and
        a masked pair (so it is PARTIAL); False says nothing."""
        mixed = np.zeros(rows.shape, dtype=bool)
        n_rows, n_cols = self._grid(q_block, kv_block)
        for (fine_q, fine_kv), flags in self.seen.items():
            if q_block % fine_q or kv_block % fine_kv or (fine_q, fine_kv) == (q_block, kv_block):
                continue
            a, b = q_block // fine_q, kv_block // fine_kv
            inside = []
            for flag in flags:  # OR over the fine tiles of each coarse tile (padding rows and columns False)
                padded = np.zeros((n_rows * a, n_cols * b), dtype=bool)
                padded[: flag.shape[0], : flag.shape[1]] = flag
                inside.append(padded.reshape(n_rows, a, n_cols, b).any(axis=(1, 3))[rows, cols])
            mixed |= inside[0] & inside[1]
        return mixed


@lru_cache(maxsize=1)
def _compiled_counters() -> tuple:
    """(interior, edge) counters under ``torch.compile(dynamic=True)``: origins and sizes are symbols, so a few
    compiled loops serve every call; made once per process (wrapping them again cost 3 ms a plan)."""
    return tuple(torch.compile(f, dynamic=True) for f in (_interior_counts, _edge_counts))


class ChunkCounts:
    """Per evaluated chunk (i, j): the 2-D prefix sum of its cell counts, int32 [side/CELL + 1, side/CELL + 1],
    kept in one pool array (``pool[slot[i * kv_chunks + j]]``) so a tile's count is one gather, never a
    stack of per-chunk arrays."""

    def __init__(self, predicate: Predicate, n_q: int, n_kv: int, head: int):
        self.predicate, self.n_q, self.n_kv, self.head = predicate, n_q, n_kv, head
        self.q_side, self.kv_side = _side(n_q), _side(n_kv)
        self.kv_chunks = -(-n_kv // self.kv_side)
        self.device = device_of(predicate)
        self.slot: dict[int, int] = {}
        """Flat chunk id (i * kv_chunks + j) -> its row of ``pool``."""
        self.pool = np.zeros((0, self.q_side // CELL + 1, self.kv_side // CELL + 1), dtype=np.int32)
        self.witnessed = Witnesses(n_q, n_kv)
        self.listed: dict[tuple, np.ndarray] = {}
        """Per pair of listed sides (``listed_kinds``): the class of every tile found so far, -1 unknown."""
        self.bounds_decide = True
        """False once interval bounds decided few of ``FRUITLESS_TILES`` tiles (a sample, or all asked at
        one block size): the mask_mod is opaque to them (``(q * kv) % 7``), so the plan's later traces are
        skipped (a pure time saving: skipped tiles are evaluated exactly)."""

    def listed_kinds(self, q, kv) -> np.ndarray | None:
        """The known classes (int8 [q tiles, kv tiles], -1 unknown; written by ``listed``) of the tiles of the
        sides ``q`` and ``kv``, or None for grids over ``WITNESS_GRID_TILES`` tiles (not kept)."""
        if q.n_tiles * kv.n_tiles > WITNESS_GRID_TILES:
            return None
        return self.listed.setdefault((q, kv), np.full((q.n_tiles, kv.n_tiles), -1, dtype=np.int8))

    def slots(self, flat: np.ndarray) -> np.ndarray:
        """Pool rows of the chunks with flat ids ``flat`` (all evaluated)."""
        return np.fromiter(map(self.slot.__getitem__, flat.tolist()), dtype=np.int64, count=flat.size)

    def _claim(self, count: int) -> int:
        """First of ``count`` fresh consecutive pool rows (the pool at least doubles when it grows)."""
        first = len(self.slot)
        if first + count > self.pool.shape[0]:
            grown = np.zeros((max(first + count, 2 * self.pool.shape[0]), *self.pool.shape[1:]), np.int32)
            grown[:first] = self.pool[:first]
            self.pool = grown
        return first

    def _calls(self, missing: list[tuple[int, int]], merged: bool) -> tuple[list, list]:
        """Rectangles of chunks [i0, i1) x [j0, j1), one call each, covering ``missing``: (single chunks, rows
        from kv 0). ``merged``: an interior row whose missing interior chunks fill at least half of the row up
        to the last one is evaluated from kv 0 to there (when such rows hold ``FROM_ZERO_ABOVE_PAIRS`` open
        pairs or more), and consecutive such rows of one width share a call of at most ``CALL_CELLS`` cells;
        every other chunk (all of them unmerged) is a call of its own."""
        full_rows, full_cols = self.n_q // self.q_side, self.n_kv // self.kv_side
        by_row: dict[int, list[int]] = {}
        for i, j in missing:
            by_row.setdefault(i, []).append(j)
        dense = {}  # row: width in chunks from kv 0
        for i, cols in by_row.items():
            inner = [j for j in cols if j < full_cols]
            if merged and i < full_rows and inner and max(inner) + 1 <= 2 * len(inner):
                dense[i] = max(inner) + 1
        open_pairs = sum(len(by_row[i]) for i in dense) * self.q_side * self.kv_side
        if open_pairs < FROM_ZERO_ABOVE_PAIRS:
            dense = {}
        calls = []
        for i, cols in sorted(by_row.items()):
            cols = [j for j in cols if j >= full_cols] if i in dense else cols
            calls.extend((i, i + 1, j, j + 1) for j in sorted(cols))
        row_cells = self.q_side // CELL * self.kv_side // CELL
        merged_calls: list[tuple[int, int, int, int]] = []
        for i, width in sorted(dense.items()):
            if merged_calls and merged_calls[-1][1:] == (i, 0, width):
                first = merged_calls[-1][0]
                if (i + 1 - first) * width * row_cells <= CALL_CELLS:
                    merged_calls[-1] = (first, i + 1, 0, width)
                    continue
            merged_calls.append((i, i + 1, 0, width))
        return calls, merged_calls

    def _counts(self, functions, call: tuple[int, int, int, int], sized: bool) -> torch.Tensor:
        """Cell counts of the rectangle ``call`` with ``functions`` = (interior, edge) counters, eager or
        compiled, on one CPU thread unless it holds ``PARALLEL_ABOVE_PAIRS`` pairs."""
        interior, edge = functions
        i0, i1, j0, j1 = call
        q0, kv0 = i0 * self.q_side, j0 * self.kv_side
        q_side, kv_side = (i1 - i0) * self.q_side, (j1 - j0) * self.kv_side
        # rows from kv 0: sizes (kv's the constant 0, q's known >= 0); single chunks: ints, which ran them
        # 1.0-2x faster than two sized origins (mask_mods of products, of table lookups) and share one loop
        origins = (_sized(q0, self.device), _sized(kv0, self.device)) if sized else (q0, kv0)
        args = (self.predicate.fn, *origins, q_side, kv_side)
        where = {"head": self.head, "device": self.device}
        threads = 1 if self.device.type == "cpu" and q_side * kv_side < PARALLEL_ABOVE_PAIRS else None
        with _cpu_threads(threads):
            if q0 + q_side <= self.n_q and kv0 + kv_side <= self.n_kv:
                return interior(*args, **where)
            return edge(*args, self.n_q, self.n_kv, **where)

    def ensure(self, flat: np.ndarray) -> None:
        """Evaluate the chunks with flat ids ``flat`` (distinct) not evaluated yet."""
        missing = [divmod(f, self.kv_chunks) for f in flat.tolist() if f not in self.slot]
        if not missing:
            return
        progress = Progress(f"evaluating {self.predicate}", len(missing), "chunks")
        pairs = len(missing) * self.q_side * self.kv_side
        if self.counter_for(pairs) is not None:
            self._evaluate_native(missing, progress)
        elif pairs > COMPILE_ABOVE_PAIRS:
            # dynamic: origins and sizes are symbols, so a few compiled loops serve every call
            try:
                self._evaluate(missing, _compiled_counters(), True, progress)
            except Exception as error:  # torch.compile cannot build this mask_mod here (no compiler, an op)
                LOGGER.warning(
                    "maskir plan: torch.compile failed on %s (%s); evaluating eagerly", self.predicate, error
                )
        self._evaluate(missing, (_interior_counts, _edge_counts), False, progress)
        progress.close()

    def counter_for(self, pairs: int) -> native.Counter | None:
        """The C counter for evaluating ``pairs`` pairs: when it is built already, or they are more than
        ``COMPILE_ABOVE_PAIRS`` (worth building it, about 0.1 s); else None."""
        built = "c_counter" in self.__dict__
        return self.c_counter if built or pairs > COMPILE_ABOVE_PAIRS else None

    @cached_property
    def c_counter(self) -> native.Counter | None:
        """The mask_mod compiled to C (``native``), built on first use; None on CUDA or outside its model."""
        on_cpu = USE_NATIVE and self.device.type == "cpu"
        return native.counter(self.predicate, self.head, self.n_q, self.n_kv) if on_cpu else None

    def _store(self, chunks: list[tuple[int, int]], along_kv: torch.Tensor) -> None:
        """Keep the prefix sums of ``chunks`` from their cell counts already summed along kv (int32, shape
        [..., rows, cols] whose leading dims flatten to the chunks in order): summed along q into fresh pool
        rows, below each row's zero first row and column."""
        first = self._claim(len(chunks))
        rows, cols = along_kv.shape[-2:]
        pool = torch.from_numpy(self.pool[first : first + len(chunks)]).view(*along_kv.shape[:-2], rows + 1, cols + 1)
        torch.cumsum(along_kv, -2, out=pool[..., 1:, 1:])
        for i, j in chunks:
            self.slot[i * self.kv_chunks + j] = first
            first += 1

    def _evaluate_native(self, missing: list, progress: Progress) -> None:
        """Count the chunks of ``missing`` with the C counter, ``NATIVE_CHUNKS`` per call (on torch's threads)."""
        for start in range(0, len(missing), NATIVE_CHUNKS):
            batch = missing[start : start + NATIVE_CHUNKS]
            origins = np.array(batch, dtype=np.int64) * (self.q_side, self.kv_side)
            self._store(batch, self.c_counter.count(origins, self.q_side, self.kv_side).cumsum(2, dtype=torch.int32))
            progress.update(start + len(batch))

    def _evaluate(self, missing: list, functions: tuple, merged: bool, progress: Progress) -> None:
        """Evaluate the chunks of ``missing`` still without counts, storing each one's prefix sums (and those
        of the other chunks a call covers: exact counts too)."""
        wanted = [(i, j) for i, j in missing if i * self.kv_chunks + j not in self.slot]
        done = len(missing) - len(wanted)
        chunks, rows_from_zero = self._calls(wanted, merged)
        for call, sized in [(call, False) for call in chunks] + [(call, True) for call in rows_from_zero]:
            i0, i1, j0, j1 = call
            counts = self._counts(functions, call, sized).cpu()
            rows, cols = counts.shape[0] // (i1 - i0), counts.shape[1] // (j1 - j0)
            # int32 (a chunk holds at most CHUNK^2 = 2^18 pairs); summed along kv while contiguous, then along q
            # chunk-major into the pool (3x faster than both along the chunk-major view, and than numpy's cumsum)
            along_kv = counts.view(i1 - i0, rows, j1 - j0, cols).cumsum(3, dtype=torch.int32).permute(0, 2, 1, 3)
            self._store([(i, j) for i in range(i0, i1) for j in range(j0, j1)], along_kv)
            done += (i1 - i0) * (j1 - j0)
            progress.update(min(done, len(missing)))


def _chunks_used(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct flat chunk ids (ascending, row-major) and, per tile, the position of its chunk among them:
    a mark per chunk of the grid and a running count, O(tiles + chunks) (``np.unique`` sorts the tiles)."""
    used = np.zeros(int(flat.max()) + 1 if flat.size else 0, dtype=bool)
    used[flat] = True
    return np.flatnonzero(used), (np.cumsum(used) - 1)[flat]


@lru_cache(maxsize=8)
def chunk_counts(predicate: Predicate, n_q: int, n_kv: int, head: int) -> ChunkCounts:
    """The counts of one predicate, grid and head, shared by the candidates of one plan call."""
    return ChunkCounts(predicate, n_q, n_kv, head)


def _decides_few(bounds: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """True when ``tile_bounds`` gave up or decided under ``1 / FEW_DECIDED`` of the tiles (left the rest both
    maybe-true and maybe-false)."""
    return bounds is None or FEW_DECIDED * int((~(bounds[0] & bounds[1])).sum()) < bounds[0].size


def useful_bounds(counts: ChunkCounts, n_tiles: int, bounds_of) -> tuple[np.ndarray, np.ndarray] | None:
    """``bounds_of(which)``, the interval bounds of the asked tiles at positions ``which`` (a slice or an index
    array), for all ``n_tiles``; or None when ``counts.bounds_decide`` is already False or turns False here:
    with at least four times ``FRUITLESS_TILES`` tiles a spread sample of that many is traced first and the
    full trace skipped when it decides few (``_decides_few``); a full trace of at least ``FRUITLESS_TILES``
    tiles that decides few turns bounds off for the plan's later block sizes and layouts. Skipping is a pure
    time saving: the tiles bounds would have decided are evaluated exactly."""
    if not counts.bounds_decide:
        return None
    if n_tiles >= 4 * FRUITLESS_TILES:
        if _decides_few(bounds_of(np.linspace(0, n_tiles - 1, FRUITLESS_TILES).astype(np.int64))):
            counts.bounds_decide = False
            return None
    bounded = bounds_of(slice(None))
    if bounded is None or (n_tiles >= FRUITLESS_TILES and _decides_few(bounded)):
        counts.bounds_decide = False
    return bounded


def sample_witnesses(counts: ChunkCounts, n_tiles: int, side: int, samples) -> tuple[np.ndarray, np.ndarray]:
    """(saw_allowed, saw_masked) per tile: whether a sample of its pairs holds an allowed pair, a masked pair;
    both together prove the tile PARTIAL. ``samples(first, stop)`` gives ``side`` sampled q and kv tokens of
    each of the tiles [first, stop) as int64 tensors [tiles, side] (inside the canvases; the sample is all
    side x side (q, kv) combinations), evaluated eagerly in batches of at most ``WITNESS_PAIRS`` pairs. A
    mask_mod that cannot take these 3-D index tensors sees nothing here (all False)."""
    saw = np.zeros((2, n_tiles), dtype=bool)
    zero = torch.zeros((), dtype=torch.long, device=counts.device)
    per_batch = max(1, WITNESS_PAIRS // side**2)
    for first in range(0, n_tiles, per_batch):
        q, kv = samples(first, min(first + per_batch, n_tiles))
        try:
            allowed = torch.as_tensor(counts.predicate.fn(zero, zero + counts.head, q[:, :, None], kv[:, None, :]))
            allowed = allowed.to(torch.bool).expand(q.shape[0], side, side).flatten(1)
        except Exception as error:  # noqa: BLE001 (a mask_mod written for 2-D index grids: no shortcut)
            LOGGER.debug("maskir plan: no witness pass for %s (%s)", counts.predicate, error)
            return np.zeros((2, n_tiles), dtype=bool)
        hits = allowed.sum(1, dtype=torch.int32)
        saw[:, first : first + per_batch] = torch.stack([hits > 0, hits < side * side]).cpu().numpy()
    return saw[0], saw[1]


def _witnesses(counts: ChunkCounts, q_block: int, kv_block: int, rows: np.ndarray, cols: np.ndarray, side: int):
    """``sample_witnesses`` of identity tiles: a grid of ``side`` rows by ``side`` columns spread over each
    tile (offsets ``k * block // side``, clamped to the canvas in a ragged edge tile)."""
    q_steps = torch.arange(side, device=counts.device) * q_block // side
    kv_steps = torch.arange(side, device=counts.device) * kv_block // side

    def samples(first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.as_tensor(rows[first:stop], device=counts.device)
        c = torch.as_tensor(cols[first:stop], device=counts.device)
        q = (r[:, None] * q_block + q_steps).clamp(max=counts.n_q - 1)
        return q, (c[:, None] * kv_block + kv_steps).clamp(max=counts.n_kv - 1)

    return sample_witnesses(counts, rows.size, side, samples)


def _counted_apart(counts: ChunkCounts, tile_pairs: int, flat: np.ndarray, uncounted: np.ndarray) -> np.ndarray:
    """Per open tile: True when it is counted on its own by the C counter (``count_tiles``) rather than read
    from its chunk's counts, because the open tiles of the chunks not counted yet hold under
    ``1 / SPARSE_OPEN`` of those chunks' pairs (tiles left open by witnesses, scattered one or two per chunk)."""
    apart = np.zeros(flat.shape, dtype=bool)
    if not uncounted.any():
        return apart
    chunk_pairs = _chunks_used(flat[uncounted])[0].size * counts.q_side * counts.kv_side
    sparse = SPARSE_OPEN * int(uncounted.sum()) * tile_pairs < chunk_pairs
    if sparse and counts.counter_for(chunk_pairs) is not None:
        apart[uncounted] = True
    return apart


def _identity_tiles(n: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Token matrix [tiles, block] of identity tiles over n tokens (the ragged last row runs past n: only its
    count is read) and each tile's token count, as ``native.Counter.count_tiles`` reads them."""
    tiles = -(-n // block)
    tokens = np.arange(tiles * block, dtype=np.int64).reshape(tiles, block)
    return tokens, np.minimum(block, n - np.arange(tiles, dtype=np.int64) * block)


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
    """Classes of identity tiles (rows[i], cols[i]) from interval bounds, witnesses and cell counts; None
    when too many chunks would be kept or a tile would straddle chunks (the caller evaluates tile by tile)."""
    counts = chunk_counts(predicate, n_q, n_kv, head)
    if counts.q_side % q_block or counts.kv_side % kv_block:
        return None
    kinds = np.full(rows.shape, PARTIAL, dtype=np.int8)
    todo = np.arange(rows.size)
    trace = (predicate, n_q, n_kv, q_block, kv_block)
    bounded = useful_bounds(counts, rows.size, lambda which: tile_bounds(*trace, rows[which], cols[which], head))
    if bounded is not None:  # tiles proven EMPTY or FULL by interval arithmetic are not evaluated
        may_true, may_false = bounded
        kinds[~may_true] = EMPTY
        kinds[may_true & ~may_false] = FULL
        todo = np.flatnonzero(may_true & may_false)
    chunk_i, chunk_j = rows[todo] * q_block // counts.q_side, cols[todo] * kv_block // counts.kv_side
    flat = chunk_i * counts.kv_chunks + chunk_j
    uncounted = np.ones(todo.size, dtype=bool)
    if counts.slot:  # looked up per distinct chunk, not per tile
        distinct, which = _chunks_used(flat)
        counted = np.fromiter(map(counts.slot.__contains__, distinct.tolist()), dtype=bool, count=distinct.size)
        uncounted = ~counted[which]
    for side in (0, *WITNESS_SIDES):  # tiles outside counted chunks proven PARTIAL by two witnesses
        sampled = np.flatnonzero(uncounted)
        if not sampled.size or sampled.size * q_block * kv_block < WITNESS_ABOVE_PAIRS:
            break
        tile_rows, tile_cols = rows[todo[sampled]], cols[todo[sampled]]
        if side:
            saw = _witnesses(counts, q_block, kv_block, tile_rows, tile_cols, side)
            counts.witnessed.record(q_block, kv_block, tile_rows, tile_cols, *saw)
            mixed = saw[0] & saw[1]
        else:  # side 0: the witnesses the sampled tiles of finer blocks already saw inside these tiles
            mixed = counts.witnessed.mixed(q_block, kv_block, tile_rows, tile_cols)
        keep = np.ones(todo.size, dtype=bool)
        keep[sampled[mixed]] = False
        todo, flat, chunk_i, chunk_j, uncounted = (a[keep] for a in (todo, flat, chunk_i, chunk_j, uncounted))
        if side and 2 * mixed.sum() < mixed.size:  # a sample that decides under half: the next would not pay
            break
    rows, cols = rows[todo], cols[todo]
    q_count = np.minimum(rows * q_block + q_block, n_q) - rows * q_block
    kv_count = np.minimum(cols * kv_block + kv_block, n_kv) - cols * kv_block
    hits = np.empty(todo.size, dtype=np.int64)
    apart = _counted_apart(counts, q_block * kv_block, flat, uncounted)
    if apart.any():  # few open tiles in chunks not counted yet: counted tile by tile, not chunk by chunk
        jobs = np.stack([rows[apart], cols[apart]], axis=1)
        hits[apart] = counts.c_counter.count_tiles(
            jobs, *_identity_tiles(n_q, q_block), *_identity_tiles(n_kv, kv_block)
        )
    pooled = np.flatnonzero(~apart)
    distinct, which = _chunks_used(flat[pooled])
    if len(counts.slot) + distinct.size > MAX_CHUNKS:
        return None
    counts.ensure(distinct)
    slot = counts.slots(distinct)[which]
    q_first, kv_first = rows[pooled] * q_block, cols[pooled] * kv_block
    r0, c0 = (q_first - chunk_i[pooled] * counts.q_side) // CELL, (kv_first - chunk_j[pooled] * counts.kv_side) // CELL
    r1, c1 = r0 + q_block // CELL, c0 + kv_block // CELL
    pool, (_, height, width) = counts.pool.reshape(-1), counts.pool.shape  # flat takes: 5x faster than [s, r, c]
    top, bottom = slot * (height * width) + r0 * width, slot * (height * width) + r1 * width
    hits[pooled] = pool.take(bottom + c1) - pool.take(top + c1) - pool.take(bottom + c0) + pool.take(top + c0)
    kinds[todo] = np.where(hits == 0, EMPTY, np.where(hits == q_count * kv_count, FULL, PARTIAL))
    return kinds
