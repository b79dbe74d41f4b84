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
- ``chunks(k)``: k contiguous equal-work chunks per rank, dealt out by LPT and swaps.
- ``...+swaps``: chains or chunks, then single tiles moved or swapped off the most loaded rank.
- ``lpt+swaps``: LPT, then moves and swaps off the most loaded rank while they lower the maximum.
- ``kk+swaps``: Karmarkar-Karp's largest differencing (``differencing``), then moves and swaps.
- ``snake``: torch's PTRR rule on tiles (round robin by decreasing work, reversed every round), so the
  best candidate is never worse than PTRR on the same tiles; ``snake+swaps``: it, improved by moves and
  swaps off the most loaded rank.

``candidates`` yields all of them; the caller (``shard``) keeps the one moving the fewest bytes among
those within the goal and no worse than the snake.
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


def differencing(work: np.ndarray, ranks: int) -> np.ndarray:
    """Karmarkar-Karp's largest differencing method, ``ranks``-way: every tile starts as a partial split
    (its work on one rank, nothing on the others); the two partial splits with the largest spread (max - min
    load) are merged, the heaviest rank of one with the lightest of the other, until one split is left.
    Ties: lower tile index first. Usually far closer to even than LPT when many tiles weigh the same."""
    owner = np.empty(work.size, dtype=np.int64)
    heap = []
    for tile in range(work.size):
        loads = np.zeros(ranks)
        loads[0] = work[tile]
        heapq.heappush(heap, (-float(work[tile]), tile, loads, [[tile]] + [[] for _ in range(ranks - 1)]))
    while len(heap) > 1:
        _, key, loads_a, groups_a = heapq.heappop(heap)
        _, _, loads_b, groups_b = heapq.heappop(heap)
        down, up = np.argsort(-loads_a, kind="stable"), np.argsort(loads_b, kind="stable")
        loads = loads_a[down] + loads_b[up]
        groups = [groups_a[i] + groups_b[j] for i, j in zip(down, up)]
        order = np.argsort(-loads, kind="stable")
        loads, groups = loads[order] - loads.min(), [groups[i] for i in order]
        heapq.heappush(heap, (-float(loads[0] - loads[-1]), key, loads, groups))
    if heap:
        for rank, tiles in enumerate(heap[0][3]):
            owner[tiles] = rank
    return owner


def refine(work: np.ndarray, owner: np.ndarray, ranks: int, rounds: int = 1000) -> np.ndarray:
    """Local search from ``owner``: while some move of one tile off the most loaded rank, or swap of one of
    its tiles with another rank's, lowers the larger of the two loads below the maximum, make the best one.
    Never raises the maximum load."""
    owner = owner.copy()
    load = np.bincount(owner, weights=work, minlength=ranks)
    for _ in range(rounds):
        top = int(np.argmax(load))
        mine = np.flatnonzero(owner == top)
        others = np.flatnonzero(owner != top)
        if not mine.size:
            break
        w_in, w_out = work[mine][:, None], work[others][None, :]
        swap = np.maximum(load[top] - w_in + w_out, load[owner[others]][None, :] - w_out + w_in)
        move = np.maximum(load[top] - w_in, load[None, :] + w_in)  # [mine, ranks]
        move[:, top] = np.inf
        best_swap, best_move = swap.min(initial=np.inf), move.min()
        if min(best_swap, best_move) >= load[top] * (1 - 1e-12):
            break
        if best_move <= best_swap:
            i, rank = np.unravel_index(np.argmin(move), move.shape)
            tile = mine[i]
        else:
            i, j = np.unravel_index(np.argmin(swap), swap.shape)
            tile, other = mine[i], others[j]
            rank = owner[other]
            owner[other] = top
            load[top] += work[other]
            load[rank] -= work[other]
        owner[tile] = rank
        load[top] -= work[tile]
        load[rank] += work[tile]
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


def snake(work: np.ndarray, ranks: int) -> np.ndarray:
    """Round robin over tiles by decreasing work, the direction reversed every round (what torch's PTRR
    does with 128-token blocks)."""
    owner = np.empty(work.size, dtype=np.int64)
    order = np.argsort(-work, kind="stable")
    position = np.arange(work.size)
    lap, step = position // ranks, position % ranks
    owner[order] = np.where(lap % 2 == 0, step, ranks - 1 - step)
    return owner


def chunked(work: np.ndarray, ranks: int, chunks_per_rank: int) -> np.ndarray:
    """The layout order cut at equal-work quantiles into ``chunks_per_rank * ranks`` contiguous chunks (a
    tile goes to the chunk holding its midpoint), dealt out by LPT and swaps: near-perfect balance, each
    rank holding a few contiguous runs."""
    work = np.asarray(work, dtype=np.float64)
    count = chunks_per_rank * ranks
    total = work.sum()
    if total == 0:
        return np.arange(work.size) * ranks // max(work.size, 1)
    middle = np.cumsum(work) - work / 2
    chunk = np.minimum((middle * count / total).astype(np.int64), count - 1)
    chunk_work = np.bincount(chunk, weights=work, minlength=count)
    return refine(chunk_work, lpt(chunk_work, ranks), ranks)[chunk]


def candidates(work: np.ndarray, ranks: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, owner) of every assignment ``shard`` considers."""
    work = np.asarray(work, dtype=np.float64)
    greedy = lpt(work, ranks)
    yield "lpt", greedy
    yield "lpt+swaps", refine(work, greedy, ranks)
    rule = snake(work, ranks)
    yield "snake", rule
    yield "snake+swaps", refine(work, rule, ranks)
    yield "kk+swaps", refine(work, differencing(work, ranks), ranks)
    contiguous = chains(work, ranks)
    yield "chains", contiguous
    yield "chains+swaps", refine(work, contiguous, ranks)
    per_rank = work.size // max(ranks, 1)
    group = 2
    while group < per_rank:
        yield f"lpt{group}", grouped_lpt(work, ranks, group)
        runs = chunked(work, ranks, group)
        yield f"chunks{group}", runs
        yield f"chunks{group}+swaps", refine(work, runs, ranks)
        group *= 2
