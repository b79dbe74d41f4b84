"""The planner: a pattern on its canvases to a block-sparse ``Plan`` (layout, tile tables, lazy stats).

``plan(pattern, canvas, ...)`` is the entry point (``maskir.plan``). See ``build`` for the steps,
``analysis`` for how tile classes are computed without an N x N mask, ``layouts`` for the token orders
and ``cost`` for how candidates are priced.
"""

from maskir.planner.build import plan
from maskir.planner.cost import plan_cost
from maskir.planner.layouts import LAYOUTS
from maskir.planner.plan import Layout, Plan, PlanPart, PlanStats, TileCounts, TileKind, TileTable

__all__ = [
    "LAYOUTS",
    "Layout",
    "Plan",
    "PlanPart",
    "PlanStats",
    "TileCounts",
    "TileKind",
    "TileTable",
    "plan",
    "plan_cost",
]
