"""Single-part candidate plans: one per block size pair and layout candidate.

A single-part plan covers the whole pattern in one layout: tile sides for the layout's token orders,
tile classes per head group (``analysis.tile_runs``), equal tables shared between head groups. ``build``
picks the cheapest candidate and ``union`` prices the terms of a union with the same candidates, so both
import this module and neither imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import Pattern
from maskir.planner.analysis import tile_runs
from maskir.planner.heads import head_groups
from maskir.planner.layouts import LayoutChoice, layout_choices
from maskir.planner.plan import Layout, Plan, PlanPart, TileTable
from maskir.planner.tiles import ExplicitSide, make_side
from maskir.planner.tiling import Tiling

BLOCK_Q_CHOICES = (64, 128)
BLOCK_KV_CHOICES = (32, 64, 128)
"""Block sizes the planner chooses from when block_q / block_kv are None."""


def candidate_plans(
    pattern: Pattern,
    canvas: Canvas,
    kv_canvas: Canvas,
    heads: int,
    block_q: int | None,
    block_kv: int | None,
    family: str,
) -> Iterator[Plan]:
    """One single-part plan per block size pair and layout candidate of ``family``, except candidates whose
    tiles (both sides) are those of a candidate with smaller blocks: the same tiles padded further cost more."""
    seen = set()
    for bq in (block_q,) if block_q else BLOCK_Q_CHOICES:
        for bkv in (block_kv,) if block_kv else BLOCK_KV_CHOICES:
            for choice in layout_choices(pattern, canvas, kv_canvas, bq, bkv, family):
                tiles = (_tiles_key(choice.name, choice.q, bq), _tiles_key(choice.name, choice.kv, bkv))
                if tiles not in seen:
                    seen.add(tiles)
                    yield single_part_plan(pattern, canvas, kv_canvas, heads, bq, bkv, choice)


def _tiles_key(name: str, spec, block: int) -> tuple:
    """What a side's tiles are made of: a tiling whose residue groups each fit in one tile has the groups as
    tiles whatever the block (``Strided(997)`` over 16K tokens: groups of 17 tokens in tiles of 32 or more);
    otherwise the layout and the block."""
    if isinstance(spec, Tiling) and spec.groups_are_tiles:
        return ("groups", spec.view, spec.dilation)
    return (name, spec if isinstance(spec, Tiling) else None, block)


def plan_part(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas, heads: int, bq: int, bkv: int, choice: LayoutChoice):
    """The part of ``pattern`` in one layout: tile classes per head group, equal tables shared."""
    q, kv = make_side(canvas, bq, choice.q), make_side(kv_canvas, bkv, choice.kv)
    groups, head_table = head_groups(pattern, heads)
    tables: list[TileTable] = []
    index_of_group = []
    for resolved, head in groups:
        runs = tile_runs(resolved, q, kv, head=head)
        same = next((i for i, t in enumerate(tables) if t.runs.equals(runs)), None)
        if same is None:
            tables.append(TileTable(runs))
            same = len(tables) - 1
        index_of_group.append(same)
    layout = Layout(
        choice.name,
        q.order if isinstance(q, ExplicitSide) else None,
        kv.order if isinstance(kv, ExplicitSide) else None,
    )
    return PlanPart(pattern, layout, tuple(tables), np.asarray(index_of_group)[head_table], q.n_tiles, kv.n_tiles)


def single_part_plan(pattern, canvas, kv_canvas, heads, bq, bkv, choice: LayoutChoice) -> Plan:
    part = plan_part(pattern, canvas, kv_canvas, heads, bq, bkv, choice)
    return Plan(pattern, canvas, kv_canvas, heads, bq, bkv, (part,))
