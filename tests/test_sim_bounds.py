"""Speedup bounds (maskir.sim.simulator.pair_counts): pair_bound = 1 / density and 1 <= tile_bound <= pair_bound.

Plans come from the brute-force planner of the kernel tests (identity or explicit layouts), densities
from ``reference_mask``: neither goes through the simulator.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_plans import brute_force_plan, grouped_layout, tiled_layout
from strategies import canvas_and_pattern

from benchmarks.catalogue import cases
from maskir import Canvas, Dilated, Neighborhood
from maskir.ir import is_dynamic
from maskir.planner.plan import Layout
from maskir.reference import reference_mask
from maskir.sim.simulator import kernel_plan, pair_counts

STATIC = [case for case in cases("small") if not is_dynamic(case.pattern)]
BLOCKS = [(64, 64), (32, 128), (128, 16)]


def density(plan) -> float:
    """Allowed pairs over all pairs, summed over the plan's heads, from the dense reference."""
    masks = [reference_mask(plan.pattern, plan.canvas, plan.kv_canvas, head=h) for h in range(plan.heads)]
    return float(np.mean(masks))


def listed_pairs(plan) -> int:
    """Token pairs of every listed tile, tile by tile (padding dropped), summed over heads."""
    total = 0
    for part in plan.parts:
        for h in range(plan.heads):
            for q_tile, kv_tile, _ in zip(*part.tables[part.head_table[h]].pairs()):
                total += plan.tile_tokens(part, "q", q_tile).size * plan.tile_tokens(part, "kv", kv_tile).size
    return total


def assert_bounds(plan):
    counts = pair_counts(plan)
    assert counts.pair_bound == pytest.approx(1 / density(plan))
    assert 1 <= counts.tile_bound <= counts.pair_bound
    assert counts.computed == listed_pairs(plan)


def test_catalogue_covers_the_families_named_in_the_issue():
    names = {case.name for case in STATIC}
    assert {"causal", "swa_causal_w1024", "na2d_128x128_k17", "na3d_16x32x32_k5_9_9", "swin_128x128_w8"} <= names
    assert {"dilated_w256_d4", "fixed_local256_cols128", "radial_16x1024"} <= names


@pytest.mark.parametrize("blocks", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("case", STATIC, ids=str)
def test_bounds_of_catalogue_plans(case, blocks):
    assert_bounds(brute_force_plan(case.pattern, case.canvas, block_q=blocks[0], block_kv=blocks[1]))


@pytest.mark.parametrize("kernel", ["maskir", "flex"])
@pytest.mark.parametrize("case", STATIC, ids=str)
def test_bounds_of_the_planners_plans(case, kernel):
    """The plans ``simulate`` prices: the planner's choice (layouts, unions split into parts) and flex's."""
    assert_bounds(kernel_plan(kernel, case.pattern, case.canvas, heads=2))


def test_dense_bounds_are_one():
    counts = pair_counts(brute_force_plan(cases("small", ["dense"])[0].pattern, Canvas(1000), block_q=64, block_kv=64))
    assert counts.tile_bound == counts.pair_bound == 1.0


def test_bounds_with_patch_layout_for_a_neighborhood():
    canvas = Canvas((32, 32))
    layout = Layout("tiled 8x8", tiled_layout(canvas, (8, 8)), tiled_layout(canvas, (8, 8)))
    assert_bounds(brute_force_plan(Neighborhood(7), canvas, block_q=64, block_kv=64, layout=layout))


def test_bounds_with_padded_residue_layout_for_dilation():
    """Residue classes padded to whole tiles: padding slots are not counted as computed pairs."""
    canvas = Canvas(1000)
    order = grouped_layout(1000, 3, 64)
    assert (order < 0).any()
    plan = brute_force_plan(Dilated(20, 3), canvas, block_q=64, block_kv=64, layout=Layout("residues", order, order))
    assert_bounds(plan)


def test_bounds_with_several_heads():
    case = cases("small", ["radial_16x1024"])[0]
    assert_bounds(brute_force_plan(case.pattern, case.canvas, heads=3, block_q=64, block_kv=32))


def test_dynamic_patterns_have_no_pair_bound():
    case = cases("small", ["documents16"])[0]
    ids = case.segment_ids()
    plan = brute_force_plan(case.pattern, case.canvas, block_q=128, block_kv=128, segments=ids)
    counts = pair_counts(plan)
    assert counts.allowed is None and counts.pair_bound is None and counts.density is None
    assert counts.tile_bound >= 1


@settings(max_examples=60)
@given(canvas_and_pattern(), st.sampled_from([1, 4, 16]), st.sampled_from([1, 8, 32]))
def test_bounds_of_random_patterns(canvas_pattern, block_q, block_kv):
    canvas, pattern = canvas_pattern
    plan = brute_force_plan(pattern, canvas, block_q=block_q, block_kv=block_kv)
    counts = pair_counts(plan)
    if counts.allowed == 0:
        assert counts.pair_bound == counts.tile_bound == float("inf")
    else:
        assert_bounds(plan)
