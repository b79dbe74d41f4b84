"""The planner's price of a candidate plan: the simulator's predicted forward time on an H100.

    plan_cost(plan) = maskir.sim.cost.plan_cost(plan, "h100", head_dim=128, dtype="bf16")   (milliseconds)

per tile the tensor-core time of its matmuls (or its K/V loads from L2), a fixed cost per visited tile
and the predicate's ALU work on PARTIAL tiles; per program the Q load and O store; programs spread over
the SMs (a vectorized makespan estimate, exact for equal or non-decreasing programs); at least the time to
move Q, K, V and O through HBM once; a merge launch for split unions. It reads only the tables' per-row
tile counts (O(runs + q tiles) numpy), never evaluates a PARTIAL tile. Price another GPU or head size
with ``plan(..., cost=functools.partial(maskir.sim.cost.plan_cost, hardware="a100", head_dim=64))``.

Import direction: ``maskir.sim.cost`` reads a Plan by its fields and imports nothing from the planner
(nor do ``maskir.sim.hardware`` and ``maskir.sim.schedule``, which it uses), so the planner imports it at
module level without a cycle; only ``maskir.sim.simulator`` imports the planner.
"""

from __future__ import annotations

from maskir.planner.plan import Plan
from maskir.sim.cost import plan_cost as simulated_ms

HARDWARE, HEAD_DIM, DTYPE = "h100", 128, "bf16"
"""What the planner prices for when no cost is given: DESIGN.md's benchmark setting."""


def plan_cost(plan: Plan) -> float:
    """Predicted forward milliseconds of ``plan`` (all its heads, batch 1) with maskir's kernel on an H100."""
    return simulated_ms(plan, HARDWARE, head_dim=HEAD_DIM, dtype=DTYPE)
