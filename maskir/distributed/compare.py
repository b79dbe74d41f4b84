"""maskir's sharding beside torch's context-parallel balancers and a ring all-gather (``maskir cp``).

For one pattern and rank count:
- maskir: ``shard``'s imbalance (max / mean computed pairs of the ranks' sub-plans) and the k/v bytes it
  fetches;
- torch's ``_HeadTailLoadBalancer`` and ``_PTRRLoadBalancer`` (run from torch's own code on the CPU, PTRR
  on a ``BlockMask`` built from maskir's token-order 128 x 128 plan): the token order each returns, cut in
  ``ranks`` equal chunks, scored by the work PTRR itself balances, the k/v tokens of a q token's non-empty
  128-blocks (None where torch refuses the size: HeadTail needs 2 * ranks to divide N, PTRR ranks to
  divide the 128-blocks);
- a ring all-gather of K/V (what torch's ring attention moves whatever the balancer): every rank receives
  every other rank's rows;
- predicted forward step time (the simulator): per rank, its kernels plus receiving its bytes over the
  hardware's ``Interconnect`` (NVLink inside a node, InfiniBand across), no overlap; the step is the
  slowest rank. maskir's kernels run each rank's sub-plan; the ring's compute is flex on the token-order
  plan times the largest rank share under PTRR (HeadTail where PTRR refuses, an even split where both do),
  its communication the all-gather over the ring's slowest link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.distributed.shard import ContextParallelPlan, opened_by, shard, token_work
from maskir.ir import Pattern
from maskir.planner import Plan, plan
from maskir.sim import get_interconnect, simulate_plan

FLEX_BLOCK = 128
"""torch's BlockMask granularity, which PTRR balances."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class CpComparison:
    """One row of ``maskir cp``: imbalances (max / mean work), bytes per forward, predicted step ms."""

    pattern: Pattern
    canvas: Canvas
    ranks: int
    strategy: str
    maskir_balance: float
    head_tail_balance: float | None
    ptrr_balance: float | None
    maskir_bytes: int
    ring_bytes: int
    maskir_step_ms: float
    ring_step_ms: float

    HEADER = (
        "| pattern | canvas | ranks | maskir imbalance | HeadTail | PTRR | maskir bytes | ring all-gather bytes "
        "| bytes ratio | step ms maskir | step ms ring |"
    )
    RULE = "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"

    def row(self, name: str | None = None) -> str:
        def ratio(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        return (
            f"| {name or self.pattern} | {'x'.join(map(str, self.canvas.shape))} | {self.ranks} | "
            f"{self.maskir_balance:.3f} ({self.strategy}) | {ratio(self.head_tail_balance)} | {ratio(self.ptrr_balance)} | "
            f"{self.maskir_bytes / 2**20:,.1f} MiB | {self.ring_bytes / 2**20:,.1f} MiB | "
            f"{self.maskir_bytes / max(self.ring_bytes, 1):.1%} | {self.maskir_step_ms:.3f} | {self.ring_step_ms:.3f} |"
        )


def _chunk_balance(work: np.ndarray, order: torch.Tensor, ranks: int) -> float:
    loads = work[order.reshape(-1).numpy()].reshape(ranks, -1).sum(axis=1)
    return float(loads.max() / loads.mean()) if loads.sum() else 1.0


def block_mask(token_plan: Plan):
    """A flex ``BlockMask`` [1, 1, N, N] of a token-order plan (head 0), from its CSR tables."""
    from torch.nn.attention.flex_attention import BlockMask

    part = token_plan.parts[0]
    table = part.tables[part.head_table[0]]
    n_rows, n_cols = part.n_q_tiles, part.n_kv_tiles
    counts, full = table.kv_count.astype(np.int64), table.kv_full.astype(np.int64)
    indices = {"full": np.zeros((n_rows, n_cols), np.int32), "partial": np.zeros((n_rows, n_cols), np.int32)}
    for row in range(n_rows):
        entries = table.kv_index[table.kv_start[row] : table.kv_start[row + 1]]
        indices["full"][row, : full[row]] = entries[: full[row]]
        indices["partial"][row, : counts[row] - full[row]] = entries[full[row] :]
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.int32)[None, None]  # noqa: E731
    return BlockMask.from_kv_blocks(
        as_tensor(counts - full),
        as_tensor(indices["partial"]),
        as_tensor(full),
        as_tensor(indices["full"]),
        BLOCK_SIZE=FLEX_BLOCK,
    )


def torch_balances(token_plan: Plan, ranks: int) -> tuple[float | None, float | None]:
    """(HeadTail imbalance, PTRR imbalance) of torch's balancers on ``token_plan`` (None: torch refuses)."""
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import (
        _HeadTailLoadBalancer,
        _PTRRLoadBalancer,
    )

    work = token_work(token_plan)
    n = token_plan.canvas.size
    head_tail = ptrr = None
    if n % (2 * ranks) == 0:
        head_tail = _chunk_balance(work, _HeadTailLoadBalancer(n, ranks, "cpu")._generate_indices()[0], ranks)
    if n % FLEX_BLOCK == 0 and token_plan.parts[0].n_q_tiles % ranks == 0:
        order = _PTRRLoadBalancer(block_mask(token_plan), ranks)._generate_indices()[0]
        ptrr = _chunk_balance(work, order, ranks)
    return head_tail, ptrr


def _maskir_step_ms(cp: ContextParallelPlan, hardware: str, head_dim: int, dtype: str) -> float:
    links = get_interconnect(hardware)
    row_bytes = cp.row_bytes(head_dim, DTYPES[dtype])
    slowest = 0.0
    for rank in range(cp.world_size):
        node = rank // links.gpus_per_node
        near = sum(t.size for s, t in enumerate(cp.received[rank]) if s // links.gpus_per_node == node)
        far = sum(t.size for t in cp.received[rank]) - near
        compute = simulate_plan(cp.sub_plans[rank], hardware, head_dim=head_dim, dtype=dtype).fwd_ms
        slowest = max(slowest, compute + 1e3 * links.transfer_seconds(near * row_bytes, far * row_bytes))
    return slowest


def _ring_step_ms(token_plan: Plan, share: float, ranks: int, hardware: str, head_dim: int, dtype: str) -> float:
    links = get_interconnect(hardware)
    compute = simulate_plan(token_plan, hardware, kernel="flex", head_dim=head_dim, dtype=dtype).fwd_ms * share
    received = (
        (ranks - 1) * token_plan.kv_canvas.size / ranks * 2 * token_plan.heads * head_dim * DTYPES[dtype].itemsize
    )
    rate = links.network_gbps if ranks > links.gpus_per_node else links.node_gbps
    return compute + 1e3 * received / (rate * 1e9)


def compare(
    pattern: Pattern,
    canvas: Canvas,
    ranks: int,
    *,
    heads: int = 16,
    head_dim: int = 128,
    dtype: str = "bf16",
    hardware: str = "h100",
    segments: torch.Tensor | None = None,
    **plan_options,
) -> CpComparison:
    """maskir's sharding beside torch's balancers and a ring all-gather (see the module docstring).

    ``segments``: ids [1, N] for a pattern with ``Segments``: maskir shards by the tiles they open and
    torch's balancers see the block mask they open (else both see the static superset)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got dtype={dtype!r}.")
    get_interconnect(hardware)
    cp = shard(pattern, canvas, ranks, heads=heads, segments=segments, **plan_options)
    token_plan = plan(pattern, canvas, heads=heads, layout="identity", block_q=FLEX_BLOCK, block_kv=FLEX_BLOCK)
    if segments is not None:
        token_plan = opened_by(token_plan, segments)
    head_tail, ptrr = torch_balances(token_plan, ranks)
    best_torch = ptrr if ptrr is not None else head_tail if head_tail is not None else 1.0
    share = best_torch / ranks
    torch_dtype = DTYPES[dtype]
    return CpComparison(
        pattern,
        cp.plan.canvas,
        ranks,
        cp.strategy,
        cp.balance,
        head_tail,
        ptrr,
        cp.bytes_moved(head_dim, torch_dtype),
        cp.all_gather_bytes(head_dim, torch_dtype),
        _maskir_step_ms(cp, hardware, head_dim, dtype),
        _ring_step_ms(token_plan, share, ranks, hardware, head_dim, dtype),
    )
