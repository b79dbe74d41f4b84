"""``plan()``: a pattern on its canvases to a block-sparse ``Plan``, as a list of steps.

1. check the arguments and the pattern on the canvases (``maskir.ir.check_canvas``); rewrite the
   ``Predicate`` leaves that are affine in q and kv to IR nodes (``affine.rewrite_predicates``), so they
   plan like the nodes they equal;
2. resolve ``PerHead`` into head groups (heads with the same pattern share tables);
3. for every block size pair and layout candidate a single-part plan (``single_part.candidate_plans``:
   tile sides, tile classes per head group by ``analysis.tile_runs``); keep the cheapest by ``cost`` (default ``plan_cost``);
4. with ``layout="auto"``, try splitting a union into disjoint parts with their own layouts
   (``union.split_union``) and keep the split if it is cheaper;
5. pre-list the static subtrees of parts that read run-time data (``gates.list_static_subtrees``: the
   tiles a ``|`` keeps whatever the data), so nothing plans again when kernels are built;
6. stamp the planning time. Tables stay as runs; CSR arrays and stats are computed on first use.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import numpy as np

from maskir.canvas import MAX_TOKENS, Canvas
from maskir.ir import Pattern, check_canvas
from maskir.planner.affine import rewrite_predicates
from maskir.planner.cells import chunk_counts
from maskir.planner.cost import cost_for
from maskir.planner.gates import list_static_subtrees
from maskir.planner.layouts import LAYOUTS
from maskir.planner.plan import Plan
from maskir.planner.single_part import candidate_plans
from maskir.planner.union import split_union
from maskir.sim.target import KernelSpec

Cost = Callable[[Plan], float]


def plan(
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...],
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    *,
    heads: int = 1,
    block_q: int | None = None,
    block_kv: int | None = None,
    layout: str = "auto",
    cost: Cost | None = None,
    spec: KernelSpec | None = None,
) -> Plan:
    """Plan ``pattern`` into block-sparse tiles without materializing the N x N mask.

    ``block_q``/``block_kv``: powers of two >= 16, or None to let the cost choose (q from 64/128, kv from
    32/64/128). ``layout``: "auto" (cheapest candidate, unions may be split) or one of ``LAYOUTS``.
    ``cost``: a callable Plan -> float to minimise (default ``plan_cost`` priced for ``spec``, a
    ``maskir.sim.target.KernelSpec``: the GPU, head dim and dtype the kernels are built for; None prices
    an H100 at head dim 128, bf16).
    """
    started = time.perf_counter()
    canvas = _as_canvas(canvas, "canvas")
    kv_canvas = canvas if kv_canvas is None else _as_canvas(kv_canvas, "kv_canvas")
    _check_arguments(pattern, heads, block_q, block_kv, layout, cost, spec)
    check_canvas(pattern, canvas, kv_canvas)
    pattern = rewrite_predicates(pattern, canvas, kv_canvas)
    price = cost or cost_for(spec)
    try:
        best_cost, best = cheapest(candidate_plans(pattern, canvas, kv_canvas, heads, block_q, block_kv, layout), price)
        if layout == "auto":
            split_cost, split = cheapest(split_union(best, price), price)
            best = split if split_cost < best_cost else best
        best = list_static_subtrees(best)
    finally:
        chunk_counts.cache_clear()  # counts of Predicates are shared by this call's candidates only
    return dataclasses.replace(best, plan_seconds=time.perf_counter() - started)


def cheapest(plans: Iterable[Plan], price: Cost) -> tuple[float, Plan | None]:
    """(price, plan) of the first cheapest plan, each priced once; (inf, None) when there is none."""
    return min(((price(p), p) for p in plans), key=lambda priced: priced[0], default=(float("inf"), None))


def _as_canvas(value, name: str) -> Canvas:
    if isinstance(value, Canvas):
        return value
    try:
        return Canvas(value)
    except ValueError as error:
        raise ValueError(f"plan argument {name}: {error}") from None


def _check_block(name: str, value) -> None:
    if value is None:
        return
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or not 16 <= value <= MAX_TOKENS
        or value & (value - 1)
    ):
        raise ValueError(
            f"plan argument {name} must be a power of two >= 16 and <= 2**31 (or None to choose), got {name}={value!r}."
        )


def _check_arguments(pattern, heads, block_q, block_kv, layout, cost, spec) -> None:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"plan needs a maskir Pattern, got {type(pattern).__name__}.")
    if not isinstance(heads, (int, np.integer)) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"plan argument heads must be a positive int, got heads={heads!r}.")
    _check_block("block_q", block_q)
    _check_block("block_kv", block_kv)
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"plan argument layout must be 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if cost is not None and not callable(cost):
        raise TypeError(f"plan argument cost must be a callable Plan -> float, got {cost!r}.")
    if spec is not None and not isinstance(spec, KernelSpec):
        raise TypeError(f"plan argument spec must be a maskir.sim.target.KernelSpec or None, got {spec!r}.")
