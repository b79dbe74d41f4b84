"""Assign weighted q tiles to ranks: longest-processing-time (LPT) and contiguous chains, pick the best.

Input: ``work[i]`` >= 0, the computed token pairs of q tile i (summed over heads and plan parts), in the
plan's layout order. Output: ``owner[i]``, the rank of tile i. The imbalance of an assignment is
``max_r load_r / mean_r load_r`` (1.0 is perfect).

- ``lpt``: tiles by decreasing work (ties: layout order), each to the least-loaded rank (ties: lowest
  rank) -- Graham's rule, within 4/3 of the optimal makespan.
- ``chains``: the optimal split of the layout order into ``ranks`` contiguous chains (minimal bottleneck,
  by bisection over the bottleneck with a greedy fill): neighbours stay together, so local patterns move
  only their halo.
- ``grouped_lpt(g)``: LPT over runs of ``g`` consecutive tiles: between the two.

``candidates`` yields all of them; the caller (``shard``) keeps the one moving the fewest bytes among
those within ``tolerance`` of the best imbalance.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np


def imbalance(work: np.ndarray, owner: np.ndarray, ranks: int) -> float:
    """max / mean load over ``ranks`` (1.0 when there is no work)."""
    load = np.bincount(owner, weights=work, minlength=ranks)
    mean = load.sum() / ranks
    return float(load.max() / mean) if mean > 0 else 1.0


def lpt(work: np.ndarray, ranks: int) -> np.ndarray:
    """Graham's LPT: heaviest tile first, each to the currently least-loaded rank."""
    owner = np.empty(work.size, dtype=np.int64)
    heap = [(0.0, rank) for rank in range(ranks)]
    for tile in np.argsort(-work, kind="stable"):
        load, rank = heapq.heappop(heap)
        owner[tile] = rank
        heapq.heappush(heap, (load + float(work[tile]), rank))
    return owner


def grouped_lpt(work: np.ndarray, ranks: int, group: int) -> np.ndarray:
    """LPT over runs of ``group`` consecutive tiles (a run keeps its tiles together)."""
    runs = np.arange(work.size) // group
    run_owner = lpt(np.bincount(runs, weights=work), ranks)
    return run_owner[runs]


def _fill(work: np.ndarray, bottleneck: float) -> np.ndarray:
    """Greedy chains in order, each as long as its load stays <= bottleneck; the chain of every tile."""
    chain = np.empty(work.size, dtype=np.int64)
    current, load = 0, 0.0
    for tile, w in enumerate(work):
        if load > 0 and load + w > bottleneck:
            current, load = current + 1, 0.0
        chain[tile] = current
        load += w
    return chain


def chains(work: np.ndarray, ranks: int) -> np.ndarray:
    """Contiguous chains in layout order with the least bottleneck (at most ``ranks`` chains; chain c goes to
    rank c). Bisection over the bottleneck: a bound is feasible when the greedy fill needs <= ranks chains."""
    work = np.asarray(work, dtype=np.float64)
    total = work.sum()
    if work.size <= ranks or total == 0:
        return np.arange(work.size) * ranks // max(work.size, 1)
    lo, hi = max(work.max(), total / ranks), total
    for _ in range(60):
        mid = (lo + hi) / 2
        if _fill(work, mid).max() < ranks:
            hi = mid
        else:
            lo = mid
    return _fill(work, hi)


def candidates(work: np.ndarray, ranks: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, owner) of every assignment ``shard`` considers."""
    work = np.asarray(work, dtype=np.float64)
    yield "lpt", lpt(work, ranks)
    yield "chains", chains(work, ranks)
    per_rank = work.size // max(ranks, 1)
    group = 2
    while group < per_rank:
        yield f"lpt{group}", grouped_lpt(work, ranks, group)
        group *= 2
