"""Cost model: seconds per tile, per program and per kernel launch, from a Plan's tile tables.

A plan is read by its fields only (parts, layouts, CSR tables, block sizes, canvases), never by import,
so the planner can price candidate layouts with ``plan_cost``. Per tile of a pass with b_r x b_c tiles
(rows are the tiles a program owns, columns the tiles it walks), head dim D, e bytes per element:

    mma  = 2 * matmuls * b_r * b_c * D / (efficiency * tensor FLOP/s per SM)
    load = col_tensors * b_c * D * e / (L2 bytes/s per SM)         re-reads of K/V (or Q/dO) hit L2
    tile = max(mma, load) + tile_cycles / clock  (+ mask_ops_per_pair * b_r * b_c / ALU ops/s per SM
                                                   when the tile is PARTIAL)
    program = row_tensors * b_r * D * e / (HBM bytes/s per SM) + its tiles
    launch  = launch_us + max(makespan of the programs on the SMs, unique HBM bytes / HBM bytes/s)

Programs reach the SMs in grid order (q or kv tile fastest, then batch * head), each on the first SM
that frees up (``schedule.list_schedule``); ``plan_cost``, the planner's objective, takes the vectorized
``schedule.estimate_makespan`` instead (exact for equal or non-decreasing programs, see ``schedule``).
The forward pass has one program per (batch, head, q tile). The backward pass is a delta = rowsum(dO * O) preprocess, dK/dV programs (per kv tile, over the
transposed table) and dQ programs (per q tile), in one launch (flex) or two (maskir); both recompute P,
so it runs 7 matmuls per tile to the forward's 2. Plans with several parts run their launches part by
part, then a memory-bound merge of the partial results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maskir.sim.hardware import Hardware, KernelModel, dtype_info, get_hardware, get_kernel
from maskir.sim.schedule import Schedule, estimate_makespan, list_schedule

SCHEDULERS = ("list", "estimate")
"""How programs reach the SMs: greedy list scheduling in launch order (reports), or the vectorized
``schedule.estimate_makespan`` the planner prices its candidates with (no ``Schedule`` then)."""


@dataclass(frozen=True)
class Pass:
    """One kind of program: which side's tiles it owns and what one tile and one program move and compute."""

    name: str
    rows: str  # "q": a program per q tile walks its kv tiles; "kv": per kv tile, walking q tiles
    matmuls: int  # b_r x b_c x D products per tile
    row_tensors: int  # [b_r, D] tensors a program reads or writes once (HBM)
    col_tensors: int  # [b_c, D] tensors each tile reads (L2)
    backward: bool


FORWARD = Pass("forward", "q", matmuls=2, row_tensors=2, col_tensors=2, backward=False)  # S=QK^T, PV; Q,O; K,V
BACKWARD_DKV = Pass("dK/dV", "kv", matmuls=4, row_tensors=4, col_tensors=2, backward=True)  # K,V,dK,dV; Q,dO
BACKWARD_DQ = Pass("dQ", "q", matmuls=3, row_tensors=3, col_tensors=2, backward=True)  # Q,dO,dQ; K,V
BACKWARD = (BACKWARD_DKV, BACKWARD_DQ)  # one fused grid: dK/dV programs first, as in flex


@dataclass(frozen=True)
class DenseTable:
    """The tile table of the dense problem: every q tile visits every kv tile, all FULL. It has the
    ``TileTable`` counts the cost reads: ``kv_count``/``kv_full`` per q tile, ``q_count``/``q_full`` per kv tile."""

    n_q_tiles: int
    n_kv_tiles: int

    @property
    def kv_count(self) -> np.ndarray:
        return np.full(self.n_q_tiles, self.n_kv_tiles)

    kv_full = kv_count

    @property
    def q_count(self) -> np.ndarray:
        return np.full(self.n_kv_tiles, self.n_q_tiles)

    q_full = q_count


@dataclass(frozen=True)
class PartWork:
    """One plan part as the kernel sees it: its tile tables (head h uses ``tables[head_table[h]]``; read
    only through their counts per row, so the transposed counts are built only for a backward pass) and
    the kv tokens its layout holds."""

    head_table: np.ndarray
    tables: tuple
    kv_tokens: int

    def rows(self, side: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per table, (tiles visited, FULL tiles) per q tile (``side="q"``) or per kv tile ("kv")."""
        if side == "q":
            return [(t.kv_count, t.kv_full) for t in self.tables]
        return [(t.q_count, t.q_full) for t in self.tables]


@dataclass(frozen=True)
class Workload:
    """Everything the cost model needs from a plan: block sizes, head count, token counts, parts."""

    block_q: int
    block_kv: int
    heads: int
    q_tokens: int
    kv_tokens: int
    parts: tuple[PartWork, ...]


@dataclass(frozen=True)
class Launch:
    """One predicted kernel launch; ``schedule`` and ``durations`` (seconds per program, launch order) are
    None for memory-bound helpers (merge, preprocess) and under the "estimate" scheduler."""

    name: str
    backward: bool
    ms: float
    hbm_floor_ms: float
    schedule: Schedule | None = None
    durations: np.ndarray | None = field(default=None, repr=False)

    @property
    def lpt_makespan_ms(self) -> float | None:
        """The makespan if the programs were launched heaviest first (a what-if for the launch order)."""
        if self.durations is None:
            return None
        return list_schedule(self.durations, self.schedule.loads.size, "lpt").makespan * 1e3


@dataclass(frozen=True)
class PlanTiming:
    """Predicted launches of one plan; fwd_ms and bwd_ms sum them per direction."""

    launches: tuple[Launch, ...]
    computed_flops: float  # forward tensor FLOPs over the kernel's (padded) tiles, all batches and heads

    @property
    def fwd_ms(self) -> float:
        return sum(launch.ms for launch in self.launches if not launch.backward)

    @property
    def bwd_ms(self) -> float | None:
        backward = [launch.ms for launch in self.launches if launch.backward]
        return sum(backward) if backward else None


def _kv_tokens(plan, part) -> int:
    """The kv tokens a part's layout holds: the whole kv canvas in the identity order."""
    order = part.layout.kv_tokens
    return plan.kv_canvas.size if order is None else int(np.count_nonzero(order >= 0))


def workload(plan) -> Workload:
    """The kernel's view of a ``Plan``: tile counts per row in both directions, no pair evaluation."""
    parts = tuple(PartWork(np.asarray(part.head_table), part.tables, _kv_tokens(plan, part)) for part in plan.parts)
    return Workload(plan.block_q, plan.block_kv, plan.heads, plan.canvas.size, plan.kv_canvas.size, parts)


def dense_workload(q_tokens: int, kv_tokens: int, block_q: int, block_kv: int, heads: int) -> Workload:
    """The dense problem on the identity layout: every tile FULL."""
    table = DenseTable(-(-q_tokens // block_q), -(-kv_tokens // block_kv))
    part = PartWork(np.zeros(heads, dtype=np.int64), (table,), kv_tokens)
    return Workload(block_q, block_kv, heads, q_tokens, kv_tokens, (part,))


def _program_seconds(
    count: np.ndarray,
    full: np.ndarray,
    p: Pass,
    work: Workload,
    hw: Hardware,
    kernel: KernelModel,
    head_dim: int,
    dtype: str,
) -> np.ndarray:
    """Seconds of each program of pass ``p`` that visits ``count`` tiles, ``full`` of them FULL."""
    elem_bytes, rate = dtype_info(dtype)
    b_r, b_c = (work.block_q, work.block_kv) if p.rows == "q" else (work.block_kv, work.block_q)
    efficiency = kernel.bwd_efficiency if p.backward else kernel.fwd_efficiency
    clock = hw.clock_ghz * 1e9
    mma = 2 * p.matmuls * b_r * b_c * head_dim / (efficiency * rate * hw.tensor_flops_per_sm)
    load = p.col_tensors * b_c * head_dim * elem_bytes / hw.l2_bytes_per_sm
    tile = max(mma, load) + kernel.tile_cycles / clock
    mask = kernel.mask_ops_per_pair * b_r * b_c / hw.alu_ops_per_sm
    fixed = p.row_tensors * b_r * head_dim * elem_bytes / hw.hbm_bytes_per_sm
    seconds = count * (tile + mask)  # fixed + count * tile + (count - full) * mask, with fewer temporaries
    seconds -= full * mask
    seconds += fixed
    return seconds


def _kernel_launch(
    name: str,
    passes: tuple[Pass, ...],
    part: PartWork,
    hbm_bytes: float,
    work: Workload,
    hw: Hardware,
    kernel: KernelModel,
    batch: int,
    head_dim: int,
    dtype: str,
    scheduler: str,
) -> Launch:
    """One launch running ``passes`` for every (batch, head); grid order: per (batch, head), pass by pass."""
    per_pass = [
        [_program_seconds(*row, p, work, hw, kernel, head_dim, dtype) for row in part.rows(p.rows)] for p in passes
    ]
    per_group = [group[0] if len(group) == 1 else np.concatenate(group) for group in zip(*per_pass)]
    sequence = np.tile(part.head_table, batch)
    if scheduler == "list":
        durations = np.concatenate([per_group[g] for g in sequence])
        schedule = list_schedule(durations, hw.sms, "launch")
        makespan = schedule.makespan
    else:
        durations = schedule = None
        makespan = estimate_makespan(per_group, sequence, hw.sms)
    floor = hbm_bytes / (hw.hbm_tbps * 1e12)
    ms = (kernel.launch_us * 1e-6 + max(makespan, floor)) * 1e3
    return Launch(name, passes[0].backward, ms, floor * 1e3, schedule, durations)


def _memory_launch(name: str, backward: bool, hbm_bytes: float, hw: Hardware, kernel: KernelModel) -> Launch:
    """A bandwidth-bound helper kernel (merge of partial results, backward preprocess)."""
    floor = hbm_bytes / (hw.hbm_tbps * 1e12)
    return Launch(name, backward, (kernel.launch_us * 1e-6 + floor) * 1e3, floor * 1e3)


def time_workload(
    work: Workload,
    hardware: str | Hardware = "h100",
    *,
    kernel: str | KernelModel = "maskir",
    batch: int = 1,
    head_dim: int = 128,
    dtype: str = "bf16",
    backward: bool = False,
    scheduler: str = "list",
) -> PlanTiming:
    """Predicted launches of a workload (see the module docstring for the model; ``SCHEDULERS``)."""
    hw, kernel = get_hardware(hardware), get_kernel(kernel)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}.")
    elem_bytes, _ = dtype_info(dtype)
    for arg, value in (("batch", batch), ("head_dim", head_dim)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}.")
    row = head_dim * elem_bytes * batch * work.heads  # bytes of one token's [D] row over batches and heads
    q, n_parts = work.q_tokens, len(work.parts)
    args = (work, hw, kernel, batch, head_dim, dtype, scheduler)
    launches = [
        _kernel_launch(f"part {i} forward", (FORWARD,), part, 2 * (q + part.kv_tokens) * row, *args)
        for i, part in enumerate(work.parts)
    ]
    if n_parts > 1:
        launches.append(_memory_launch("merge forward", False, (n_parts + 1) * q * row, hw, kernel))
    if backward:
        launches.append(_memory_launch("backward preprocess", True, 2 * q * row, hw, kernel))
        for i, part in enumerate(work.parts):
            kv = part.kv_tokens
            if kernel.fused_backward:  # Q, dO, dQ and K, V, dK, dV
                launches.append(_kernel_launch(f"part {i} backward", BACKWARD, part, (3 * q + 4 * kv) * row, *args))
            else:  # dK/dV reads Q, dO, K, V, writes dK, dV; dQ reads Q, dO, K, V, writes dQ
                launches.append(_kernel_launch(f"part {i} dK/dV", (BACKWARD_DKV,), part, (2 * q + 4 * kv) * row, *args))
                launches.append(_kernel_launch(f"part {i} dQ", (BACKWARD_DQ,), part, (3 * q + 2 * kv) * row, *args))
        if n_parts > 1:
            merge = (n_parts + 1) * (q + 2 * work.kv_tokens) * row
            launches.append(_memory_launch("merge backward", True, merge, hw, kernel))
    tiles = sum(
        int(np.dot([t.kv_count.sum() for t in part.tables], np.bincount(part.head_table, minlength=len(part.tables))))
        for part in work.parts
    )
    flops = 4.0 * work.block_q * work.block_kv * head_dim * tiles * batch
    return PlanTiming(tuple(launches), flops)


def simulate_plan(
    plan,
    hardware: str | Hardware = "h100",
    *,
    kernel: str | KernelModel = "maskir",
    batch: int = 1,
    head_dim: int = 128,
    dtype: str = "bf16",
    backward: bool = False,
) -> PlanTiming:
    """Predicted kernel launches of ``plan`` (all ``plan.heads`` heads, ``batch`` batches) on ``hardware``."""
    return time_workload(
        workload(plan), hardware, kernel=kernel, batch=batch, head_dim=head_dim, dtype=dtype, backward=backward
    )


def plan_cost(plan, hardware: str | Hardware = "h100", head_dim: int = 128, dtype: str = "bf16") -> float:
    """Predicted forward milliseconds of ``plan`` with maskir's kernel, one batch: the planner's objective.

    ``simulate_plan``'s forward time with the estimated makespan: O(runs + q tiles) numpy, no loop over
    programs and no PARTIAL tile evaluated, so the planner can price every candidate with it.
    """
    return time_workload(workload(plan), hardware, head_dim=head_dim, dtype=dtype, scheduler="estimate").fwd_ms
