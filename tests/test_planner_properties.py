"""Property: the plan's allowed set equals the brute-force reference mask, for random patterns and canvases.

Random pattern trees (``tests/strategies.py``) on random 1/2/3-D canvases, with explicit blocks (ragged last
tiles included), every layout family forced, and the planner's own choice; PerHead patterns plan per head
group. ``stats.allowed_pairs`` must equal the mask count summed over heads.
"""

from __future__ import annotations

import dataclasses
from functools import reduce

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import canvases, leaves, patterns

from maskir.ir import Or, Routing, is_dynamic
from maskir.planner import LAYOUTS, plan, plan_cost
from maskir.planner.union import split_union
from maskir.reference import reference_mask

MAX_TOKENS = 300
BLOCKS = [(16, 16), (32, 16), (64, 64)]
EXAMPLES = 600


def _assert_plan_equals_reference(pattern, canvas, heads: int, **plan_args) -> None:
    planned = plan(pattern, canvas, heads=heads, **plan_args)
    expected_total = 0
    for head in range(heads):
        expected = reference_mask(pattern, canvas, head=head)
        np.testing.assert_array_equal(planned.to_mask(head), expected, err_msg=f"head {head}, {planned.describe()}")
        expected_total += int(expected.sum())
    assert planned.stats.allowed_pairs == expected_total


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_plan_equals_reference_mask(data):
    canvas = data.draw(canvases(max_tokens=MAX_TOKENS), label="canvas")
    pattern = data.draw(patterns(canvas), label="pattern")
    heads = data.draw(st.integers(1, 3), label="heads")
    layout = data.draw(st.sampled_from(["auto", *LAYOUTS]), label="layout")
    blocks = data.draw(st.sampled_from([*BLOCKS, (None, None)]) if layout == "auto" else st.sampled_from(BLOCKS))
    _assert_plan_equals_reference(pattern, canvas, heads, block_q=blocks[0], block_kv=blocks[1], layout=layout)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_dynamic_plan_is_exact_with_its_data(data):
    """Segments/Routing are PARTIAL where the rest allows: to_mask with the data equals the reference."""
    canvas = data.draw(canvases(max_tokens=200), label="canvas")
    pattern = data.draw(patterns(canvas, dynamic=True), label="pattern")
    routing_blocks = {node.block for node in pattern.walk() if isinstance(node, Routing)}
    assume(len(routing_blocks) <= 1)
    heads = data.draw(st.integers(1, 2), label="heads")
    n = canvas.size
    segments = np.sort(np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))).reshape(1, n)
    routing = None
    if routing_blocks:
        node = next(node for node in pattern.walk() if isinstance(node, Routing))
        q_blocks = -(-n // node.block)
        topk = min(node.topk, q_blocks)
        seed = data.draw(st.integers(0, 2**16))
        generator = torch.Generator().manual_seed(seed)
        routing = torch.stack([torch.randperm(q_blocks, generator=generator)[:topk] for _ in range(heads * q_blocks)])
        routing = routing.reshape(1, heads, q_blocks, topk)
    blocks = data.draw(st.sampled_from(BLOCKS))
    planned = plan(pattern, canvas, heads=heads, block_q=blocks[0], block_kv=blocks[1])
    assert planned.dynamic == is_dynamic(pattern)
    total = 0
    for head in range(heads):
        expected = reference_mask(pattern, canvas, head=head, segments=segments, routing=routing)
        np.testing.assert_array_equal(planned.to_mask(head, segments=segments, routing=routing), expected)
        total += int(expected.sum())
    assert planned.measure(segments=segments, routing=routing).allowed_pairs == total


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_union_splits_are_disjoint_and_cover_the_pattern(data):
    """Every two-part split the planner may pick: parts disjoint, their union the reference mask."""
    canvas = data.draw(canvases(max_tokens=MAX_TOKENS), label="canvas")
    terms = data.draw(st.lists(patterns(canvas, depth=1), min_size=2, max_size=3), label="terms")
    pattern = reduce(Or, terms)
    if data.draw(st.booleans(), label="and a leaf"):
        pattern = pattern & data.draw(leaves(canvas), label="leaf")
    blocks = data.draw(st.sampled_from(BLOCKS), label="blocks")
    best = plan(pattern, canvas, block_q=blocks[0], block_kv=blocks[1], layout="identity")
    expected = reference_mask(pattern, canvas)
    for split in split_union(best, plan_cost):
        masks = [dataclasses.replace(split, parts=(part,)).to_mask() for part in split.parts]
        assert not np.any(masks[0] & masks[1])
        np.testing.assert_array_equal(split.to_mask(), expected, err_msg=split.describe())
        assert split.stats.allowed_pairs == int(expected.sum())
