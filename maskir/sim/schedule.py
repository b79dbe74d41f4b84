"""Program scheduling onto SMs: list scheduling, in launch order or longest-processing-time first.

A GPU's block scheduler starts each program (CTA) on the first SM that frees up, in launch order. That is
greedy list scheduling: with ``m`` SMs, every program starts at the smallest current SM load. Its
makespan is within ``2 - 1/m`` of optimal in any order and within ``4/3 - 1/(3m)`` when the programs come
longest first (LPT, Graham 1969), which is what a kernel that launches its heaviest q tiles first gets.

``estimate_makespan`` is the vectorized stand-in the planner prices its candidates with (numpy over one
head's programs, then heads x SMs; no loop over programs): the smaller of two figures. ``round_robin`` runs program p on SM p mod m; that
is the list schedule itself when the durations are equal or non-decreasing in launch order (each wave then
frees its SMs in SM order), which covers dense, causal and banded grids. ``fluid_bound`` is
max_i(S_i / m + d_i) (S_i: the work launched before program i; the first m programs start at 0): program i
starts at the least SM load, at most the mean S_i / m, so the list schedule never ends later. Round robin
can be far off where the durations repeat with a period that aliases with m (16 heads of causal rows);
the bound then caps it. The estimate, like the list schedule, lies between max(total / m, longest program)
and that plus the longest program, so it is within one program of the list schedule. Reports use the list
schedule.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

ORDERS = ("launch", "lpt")


@dataclass(frozen=True)
class Schedule:
    """Where the programs went: ``loads[s]`` is SM s's busy time; makespan = max(loads)."""

    loads: np.ndarray  # float64 [sms], same unit as the durations
    programs: int

    @property
    def makespan(self) -> float:
        return float(self.loads.max())

    @property
    def waves(self) -> int:
        """ceil(programs / SMs): how many rounds of programs the grid needs."""
        return -(-self.programs // self.loads.size)

    @property
    def utilization(self) -> float:
        """Mean SM busy time over the makespan (1.0: perfectly balanced)."""
        return float(self.loads.mean() / self.makespan) if self.makespan > 0 else 1.0


def list_schedule(durations: np.ndarray, sms: int, order: str = "launch") -> Schedule:
    """Greedy list schedule of ``durations`` on ``sms`` identical SMs, in launch order or LPT order.

    Each program goes to the SM with the least load so far. Equal durations take a closed form:
    every SM runs floor(n / m) programs and n mod m of them one more.
    """
    if not isinstance(sms, (int, np.integer)) or sms < 1:
        raise ValueError(f"list_schedule needs sms >= 1, got {sms!r}.")
    if order not in ORDERS:
        raise ValueError(f"list_schedule order must be one of {ORDERS}, got {order!r}.")
    durations = np.asarray(durations, dtype=np.float64).ravel()
    if durations.size and durations.min() < 0:
        raise ValueError("list_schedule needs non-negative durations.")
    n = durations.size
    if n == 0 or durations.min() == durations.max():
        per_sm = np.full(sms, n // sms, dtype=np.float64) + (np.arange(sms) < n % sms)
        return Schedule(per_sm * (durations[0] if n else 0.0), n)
    if order == "lpt":
        durations = np.sort(durations)[::-1]
    loads = [0.0] * sms
    for duration in durations.tolist():
        heapq.heapreplace(loads, loads[0] + duration)
    return Schedule(np.array(loads), n)


def _folded(block: np.ndarray, sms: int) -> np.ndarray:
    """Sums of ``block`` per residue of the position mod ``sms``."""
    padded = block
    if block.size % sms:
        padded = np.zeros(-(-block.size // sms) * sms)
        padded[: block.size] = block
    return padded.reshape(-1, sms).sum(axis=0)


def _grid(durations: list[np.ndarray], sequence: np.ndarray, sms: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked arguments of the grid functions: (sequence as int64, programs per block of the grid)."""
    if not isinstance(sms, (int, np.integer)) or sms < 1:
        raise ValueError(f"the SM count must be a positive int, got sms={sms!r}.")
    sequence = np.asarray(sequence, dtype=np.int64)
    return sequence, np.array([block.size for block in durations], dtype=np.int64)[sequence]


def round_robin(durations: list[np.ndarray], sequence: np.ndarray, sms: int) -> Schedule:
    """Loads when the grid is ``durations[g]`` for g in ``sequence``, concatenated, and program p runs on SM
    p mod ``sms``. Each distinct block is folded once into its sums per residue; a block that starts at
    grid position o adds them rotated by o.
    """
    sequence, sizes = _grid(durations, sequence, sms)
    if sequence.size == 1:  # one block from position 0: no rotation
        return Schedule(_folded(np.asarray(durations[sequence[0]], dtype=np.float64), sms), int(sizes[0]))
    folded = np.stack([_folded(np.asarray(block, dtype=np.float64), sms) for block in durations])
    starts = np.cumsum(sizes) - sizes
    residue_on_sm = (np.arange(sms)[None, :] - starts[:, None]) % sms  # [blocks, sms]: which residue SM s runs
    return Schedule(folded[sequence[:, None], residue_on_sm].sum(axis=0), int(sizes.sum()))


def fluid_bound(durations: list[np.ndarray], sequence: np.ndarray, sms: int) -> float:
    """An upper bound on the launch-order list schedule of the same grid: max_i(S_i / sms + d_i).

    Per distinct block, max_i(S_i / sms + d_i) within it; a block adds the work launched before it. In the
    first block the first ``sms`` programs start at 0 (later blocks keep the looser S_i / sms: still a bound).
    """
    sequence, _ = _grid(durations, sequence, sms)
    blocks = [np.asarray(block, dtype=np.float64) for block in durations]
    finish, totals = [], []
    for block in blocks:
        bound = np.cumsum(block)  # S_i + d_i
        totals.append(bound[-1] if bound.size else 0.0)
        bound -= block
        bound /= sms
        bound += block  # S_i / sms + d_i
        finish.append(bound)
    first = sequence[0]
    head = max(np.max(blocks[first][:sms], initial=0.0), np.max(finish[first][sms:], initial=0.0))
    within = np.array([np.max(bound, initial=0.0) for bound in finish])
    totals = np.array(totals)[sequence]
    offsets = np.cumsum(totals) - totals
    return float(max(head, np.max(offsets[1:] / sms + within[sequence[1:]], initial=0.0)))


def _non_decreasing(durations: list[np.ndarray], sequence: np.ndarray) -> bool:
    """Is the grid (``durations[g]`` for g in ``sequence``, concatenated) non-decreasing in launch order?"""
    if not all(np.all(durations[g][1:] >= durations[g][:-1]) for g in np.unique(sequence)):
        return False
    if sequence.size == 1:
        return True
    firsts = np.array([block[0] if block.size else np.inf for block in durations])[sequence]
    lasts = np.array([block[-1] if block.size else -np.inf for block in durations])[sequence]
    return bool(np.all(firsts[1:] >= lasts[:-1]))


def estimate_makespan(durations: list[np.ndarray], sequence: np.ndarray, sms: int) -> float:
    """The planner's makespan of the grid (see the module docstring): min(round robin, fluid bound), or
    round robin alone where it is the list schedule (a non-decreasing grid: no prefix sum needed)."""
    sequence = np.asarray(sequence, dtype=np.int64)
    exact = round_robin(durations, sequence, sms).makespan
    return exact if _non_decreasing(durations, sequence) else min(exact, fluid_bound(durations, sequence, sms))
