"""The order in which the CPU tile kernels' threads take their work units, balanced by the plan's lists.

A unit is one (batch, head, q tile) of the forward and dQ, one (batch, kv head, kv tile) of dK/dV, or one
(batch, kv head) of the fused backward; its cost is the tile pairs its lists hold, a PARTIAL pair counting ``PARTIAL_COST`` (the per-element predicate
on top of the product). TVM splits a ``T.parallel`` loop into ``threads`` equal contiguous chunks, so
:func:`work_order` deals the units to ``threads`` bins, longest first to the least loaded bin (LPT), and
lays the bins end to end, each padded with -1 (no unit) to the same length. Units with no tile pair are
left out: their outputs keep the launcher's initial values (0, lse -inf).
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

PARTIAL_COST = 1.5
"""Cost of a PARTIAL tile pair relative to a FULL one."""


def list_costs(start: torch.Tensor, full: torch.Tensor, lists: int, n_tiles: int) -> np.ndarray:
    """Cost of each of the ``lists`` stacked CSR lists' rows: [lists, n_tiles] from row pointers ``start``
    (``n_tiles + 1`` per list) and FULL counts ``full`` (``n_tiles`` per list)."""
    start = start.numpy().reshape(lists, n_tiles + 1).astype(np.float64)
    entries = np.diff(start, axis=1)
    full = full.numpy().reshape(lists, n_tiles)
    return full + PARTIAL_COST * (entries - full)


def makespan(costs: np.ndarray, threads: int) -> float:
    """The largest bin load of :func:`work_order`'s LPT deal of ``costs`` to ``threads`` threads."""
    costs = np.sort(np.asarray(costs, dtype=np.float64).reshape(-1))[::-1]
    loads = [0.0] * threads
    for cost in costs[costs > 0].tolist():
        heapq.heapreplace(loads, loads[0] + cost)
    return max(loads)


def work_order(costs: np.ndarray, threads: int) -> torch.Tensor:
    """int32 unit indices (into ``costs``, flattened) for ``threads`` threads: LPT bins of equal length."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got threads={threads!r}.")
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    units = np.flatnonzero(costs > 0)
    units = units[np.argsort(-costs[units], kind="stable")]
    bins: list[list[int]] = [[] for _ in range(threads)]
    loads = [(0.0, t) for t in range(threads)]
    for unit in units.tolist():
        load, t = heapq.heappop(loads)
        bins[t].append(unit)
        heapq.heappush(loads, (load + costs[unit], t))
    length = max(1, max(len(b) for b in bins))
    order = np.full((threads, length), -1, dtype=np.int32)
    for t, units_of_t in enumerate(bins):
        order[t, : len(units_of_t)] = units_of_t
    return torch.from_numpy(order.reshape(-1))


PRODUCTS = {"dq": 3, "dkdv": 4, "bwd": 5}
"""Matrix products per tile pair of each backward kernel (the fused one shares S, P and dS)."""


def fuse_backward(dq_costs: np.ndarray, dkdv_costs: np.ndarray, bwd_costs: np.ndarray, threads: int) -> bool:
    """Whether the fused backward (units (b, kv head)) is expected to finish before dQ then dK/dV: its
    makespan times its products per pair against the sum of theirs (few, unequal units balance badly)."""
    fused = PRODUCTS["bwd"] * makespan(bwd_costs, threads)
    split = PRODUCTS["dq"] * makespan(dq_costs, threads) + PRODUCTS["dkdv"] * makespan(dkdv_costs, threads)
    return fused < split
