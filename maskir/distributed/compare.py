"""maskir's sharding beside torch's context-parallel balancers and a ring all-gather (``maskir cp``).

For one pattern and rank count:
- maskir: ``shard``'s imbalance (max / mean computed pairs of the ranks' sub-plans) and the k/v bytes it
  fetches;
- torch's ``_HeadTailLoadBalancer`` and ``_PTRRLoadBalancer`` (run from torch's own code on the CPU, PTRR
  on a ``BlockMask`` built from maskir's token-order 128 x 128 plan; ``torch_balancers``): the token order
  each returns, cut in ``ranks`` equal chunks, scored on the same measure as maskir's imbalance, the
  computed pairs of maskir's plan, each token carrying an equal share of its tile's (exact where the
  tiles nest in torch's chunks, as in 1-D layouts; None where torch refuses the size:
  HeadTail needs 2 * ranks to divide N, PTRR ranks to divide the 128-blocks);
- a ring all-gather of K/V (what torch's ring attention moves whatever the balancer): every rank receives
  every other rank's rows;
- predicted forward step time (the simulator): per rank, its kernels plus receiving its bytes over the
  hardware's ``Interconnect`` (NVLink inside a node, InfiniBand across), charged without overlap (an upper
  bound: ``attention`` runs the local part during the exchange on Triton and TVM); the step is the
  slowest rank. maskir's kernels run each rank's sub-plan; the ring's compute is flex on the token-order
  plan times the largest rank share of its 128-block work under PTRR (HeadTail where PTRR refuses, an even
  split where both do),
  its communication the all-gather over the ring's slowest link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.distributed.shard import ContextParallelPlan, opened_by, shard, token_split_balance
from maskir.distributed.torch_balancers import head_tail_owner, ptrr_owner, token_plan
from maskir.ir import Pattern
from maskir.planner import Plan
from maskir.sim import get_interconnect, simulate_plan

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


def torch_balances(cp: ContextParallelPlan, blocks: Plan) -> tuple[float | None, float | None]:
    """(HeadTail imbalance, PTRR imbalance) of torch's token splits on the measure of ``cp.balance``
    (``token_split_balance`` on ``cp``'s plan; None: torch refuses the size)."""
    ranks = cp.world_size

    def scored(owner: np.ndarray | None) -> float | None:
        return None if owner is None else token_split_balance(cp.plan, owner, ranks)

    return scored(head_tail_owner(blocks.canvas.size, ranks)), scored(ptrr_owner(blocks, ranks))


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


def _flex_share(blocks: Plan, ranks: int) -> float:
    """The largest rank's share of flex's work (its 128-blocks) under PTRR, HeadTail where PTRR refuses, an
    even split where both do."""
    owner = ptrr_owner(blocks, ranks)
    owner = head_tail_owner(blocks.canvas.size, ranks) if owner is None else owner
    return (1.0 if owner is None else token_split_balance(blocks, owner, ranks)) / ranks


def _ring_step_ms(blocks: Plan, share: float, ranks: int, hardware: str, head_dim: int, dtype: str) -> float:
    links = get_interconnect(hardware)
    compute = simulate_plan(blocks, hardware, kernel="flex", head_dim=head_dim, dtype=dtype).fwd_ms * share
    received = (ranks - 1) * blocks.kv_canvas.size / ranks * 2 * blocks.heads * head_dim * DTYPES[dtype].itemsize
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
    blocks = token_plan(pattern, canvas, heads=heads)
    if segments is not None:
        blocks = opened_by(blocks, segments)
    head_tail, ptrr = torch_balances(cp, blocks)
    share = _flex_share(blocks, ranks)
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
        _ring_step_ms(blocks, share, ranks, hardware, head_dim, dtype),
    )
