"""The planner's price of a candidate plan: the simulator's predicted forward time on the target GPU.

    plan_cost(plan, spec) = maskir.sim.cost.plan_cost(plan, spec.hardware, spec.head_dim, spec.dtype)   (ms)

with ``spec`` a ``maskir.sim.target.KernelSpec`` (None: an H100 at head dim 128, bf16, DESIGN.md's
benchmark setting). Per tile the tensor-core time of its matmuls (or its K/V loads from L2), a fixed cost
per visited tile and the predicate's ALU work on PARTIAL tiles; per program the Q load and O store;
programs spread over the SMs (a vectorized makespan estimate, exact for equal or non-decreasing
programs); at least the time to move Q, K, V and O through HBM once; a merge launch for split unions. It
reads only the tables' per-row tile counts (O(runs + q tiles) numpy), never evaluates a PARTIAL tile. So
an RTX 4090 (128 SMs at 165 TFLOP/s, 1 TB/s) and a B200 (148 SMs at 2250 TFLOP/s, 8 TB/s) may choose
different tiles and layouts for one pattern: ``plan(..., spec=KernelSpec.for_arch("sm_89", hw="rtx4090"))``.

Import direction: ``maskir.sim.cost`` reads a Plan by its fields and imports nothing from the planner
(nor do ``maskir.sim.hardware``, ``maskir.sim.schedule`` and ``maskir.sim.target``), so the planner
imports them at module level without a cycle; only ``maskir.sim.simulator`` imports the planner.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from maskir.planner.plan import Plan
from maskir.sim.cost import plan_cost as simulated_ms
from maskir.sim.target import KernelSpec

HARDWARE, HEAD_DIM, DTYPE = "h100", 128, "bf16"
"""What the planner prices for when no spec is given: DESIGN.md's benchmark setting."""


def plan_cost(plan: Plan, spec: KernelSpec | None = None) -> float:
    """Predicted forward milliseconds of ``plan`` (all its heads, batch 1) with maskir's kernel on the
    spec's hardware, head dim and dtype (None: an H100, head dim 128, bf16)."""
    if spec is None:
        return simulated_ms(plan, HARDWARE, head_dim=HEAD_DIM, dtype=DTYPE)
    return simulated_ms(plan, spec.hardware, head_dim=spec.head_dim, dtype=spec.dtype)


def cost_for(spec: KernelSpec | None) -> Callable[[Plan], float]:
    """The planner objective for one target: ``plan_cost`` with a GPU ``spec`` bound. A CPU target (the
    interpreter, TVM's llvm build) keeps the default objective: its plans are the ones a GPU run of the
    benchmark setting would get, whatever its head dim and dtype, so CPU checks cover the GPU's tiles."""
    return plan_cost if spec is None or spec.capability is None else partial(plan_cost, spec=spec)
