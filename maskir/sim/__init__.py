"""The simulator: predicted time and speedup bounds of a plan on a GPU, from the plan alone.

``simulate(pattern, canvas, ...)`` plans and reports (``SimReport``); ``simulate_plan(plan, hardware)``
prices a given plan; ``plan_cost(plan)`` is the planner's layout objective. Names load on first use, so
the planner can import ``maskir.sim.cost`` and ``maskir.sim.hardware`` without importing itself back.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "simulate": "maskir.sim.simulator",
    "kernel_plan": "maskir.sim.simulator",
    "SimReport": "maskir.sim.report",
    "simulate_decode": "maskir.sim.decode",
    "DecodeReport": "maskir.sim.decode",
    "simulate_plan": "maskir.sim.cost",
    "plan_cost": "maskir.sim.cost",
    "PlanTiming": "maskir.sim.cost",
    "Hardware": "maskir.sim.hardware",
    "HARDWARE": "maskir.sim.hardware",
    "KernelModel": "maskir.sim.hardware",
    "KERNELS": "maskir.sim.hardware",
    "get_hardware": "maskir.sim.hardware",
    "Interconnect": "maskir.sim.hardware",
    "INTERCONNECT": "maskir.sim.hardware",
    "get_interconnect": "maskir.sim.hardware",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'maskir.sim' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
