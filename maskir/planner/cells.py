"""Exact counts of allowed pairs per 16 x 16 cell of a ``Predicate``, vectorised: the tile classes of every
identity-tiled candidate come from one evaluation.

``cell_counts(predicate, n_q, n_kv, head)`` calls the mask_mod on chunks of the (q, kv) index grid with
broadcast torch index tensors (rows of ``CHUNK_PAIRS`` pairs at most, so memory stays bounded) and sums
each chunk into counts per ``CELL`` x ``CELL`` cell (pairs past the canvas excluded). Grids above
``COMPILE_ABOVE_PAIRS`` pairs run the chunk under ``torch.compile`` (one fused loop per chunk shape, every
chunk padded to the same shape, as ``torch.compile(create_block_mask)`` runs), others eagerly. The
evaluation runs on CUDA when a tensor the mask_mod captures is there. Counts are kept during one ``plan``
call (it classifies up to six block-size candidates from one evaluation) and dropped at its end, so a
later plan sees tensors the mask_mod reads as they are then.

``tile_kinds(counts, q_block, kv_block, rows, cols, n_q, n_kv)``: FULL / PARTIAL / EMPTY of identity tiles
from a 2-D prefix sum of the counts, O(1) per tile.
"""

from __future__ import annotations

import inspect
import logging
from functools import lru_cache

import numpy as np
import torch

from maskir.ir import Predicate
from maskir.planner.kinds import EMPTY, FULL, PARTIAL

CELL = 16
"""Cell side in tokens: every block size (a power of two >= 16) is a whole number of cells."""
CHUNK_PAIRS = 1 << 22
"""Pairs per eager chunk (a few int64 temporaries of this size: tens of MiB)."""
COMPILED_CHUNK_PAIRS = 1 << 25
"""Pairs per compiled chunk (fused: nothing of this size is materialised)."""
COMPILE_ABOVE_PAIRS = 1 << 26
"""Grids with more pairs are evaluated by a torch.compile'd chunk; smaller ones eagerly."""
MAX_CELLS = 1 << 24
"""Grids with more cells are not counted whole (``fallback`` evaluates only the tiles that matter)."""
LOGGER = logging.getLogger("maskir.planner")


def fits(n_q: int, n_kv: int) -> bool:
    return -(-n_q // CELL) * -(-n_kv // CELL) <= MAX_CELLS


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


def _counts_of_chunk(fn, q: torch.Tensor, kv: torch.Tensor, q_valid, kv_valid, head: int) -> torch.Tensor:
    """Allowed pairs per cell of the chunk q [Q] x kv [K] (Q, K multiples of CELL)."""
    zero = torch.zeros((), dtype=torch.long, device=q.device)
    allowed = torch.as_tensor(fn(zero, zero + head, q[:, None], kv[None, :])).to(torch.bool)
    allowed = allowed.expand(q.shape[0], kv.shape[0]) & q_valid[:, None] & kv_valid[None, :]
    return allowed.view(q.shape[0] // CELL, CELL, kv.shape[0] // CELL, CELL).sum((1, 3), dtype=torch.int32)


@lru_cache(maxsize=4)
def cell_counts(predicate: Predicate, n_q: int, n_kv: int, head: int = 0) -> np.ndarray:
    """Allowed pairs per cell, int32 [ceil(n_q / CELL), ceil(n_kv / CELL)] (batch index 0, head ``head``)."""
    device = device_of(predicate)
    q_cells, kv_cells = -(-n_q // CELL), -(-n_kv // CELL)
    kv = torch.arange(kv_cells * CELL, device=device)
    kv_valid = kv < n_kv
    kv = kv.clamp(max=n_kv - 1)  # padding evaluates a real index (tables stay in range), then is excluded
    compiled = n_q * n_kv > COMPILE_ABOVE_PAIRS
    budget = COMPILED_CHUNK_PAIRS if compiled else CHUNK_PAIRS
    rows = max(1, min(q_cells, budget // (CELL * kv.shape[0])))  # cells rows per chunk
    count = torch.compile(_counts_of_chunk, dynamic=False) if compiled else _counts_of_chunk
    out = torch.empty(rows * -(-q_cells // rows), kv_cells, dtype=torch.int32, device=device)
    for first in range(0, q_cells, rows):
        q = torch.arange(first * CELL, (first + rows) * CELL, device=device)  # every chunk the same shape
        arguments = (predicate.fn, q.clamp(max=n_q - 1), kv, q < n_q, kv_valid, head)
        try:
            out[first : first + rows] = count(*arguments)
        except Exception as error:  # torch.compile cannot build this mask_mod here (no compiler, an op it lacks)
            if count is _counts_of_chunk:
                raise
            LOGGER.warning("maskir plan: torch.compile failed on %s (%s); evaluating it eagerly", predicate, error)
            count = _counts_of_chunk
            out[first : first + rows] = count(*arguments)
    return out[:q_cells].cpu().numpy()


def tile_kinds(
    counts: np.ndarray, q_block: int, kv_block: int, rows: np.ndarray, cols: np.ndarray, n_q: int, n_kv: int
) -> np.ndarray:
    """Classes of identity tiles (rows[i], cols[i]) from cell counts: allowed pairs = a box sum of cells."""
    prefix = np.zeros((counts.shape[0] + 1, counts.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(counts, axis=0, dtype=np.int64), axis=1, out=prefix[1:, 1:])
    qa, kva = q_block // CELL, kv_block // CELL
    r0, c0 = rows * qa, cols * kva
    r1, c1 = np.minimum(r0 + qa, counts.shape[0]), np.minimum(c0 + kva, counts.shape[1])
    hits = prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]
    q_count = np.minimum((rows + 1) * q_block, n_q) - rows * q_block
    kv_count = np.minimum((cols + 1) * kv_block, n_kv) - cols * kv_block
    return np.where(hits == 0, EMPTY, np.where(hits == q_count * kv_count, FULL, PARTIAL)).astype(np.int8)
