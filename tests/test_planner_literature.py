"""Patterns from the literature (``maskir.patterns``), planned with fixed blocks and by the planner's own
choice, reproduce the dense reference mask exactly on every head."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from maskir import patterns
from maskir.canvas import Canvas
from maskir.ir import Causal, Distance, Or, Window
from maskir.planner import plan
from maskir.reference import reference_mask

BLOCKS = [(16, 16), (32, 16), (64, 64), (None, None)]


def _radial_issue_form(frames: int, tokens: int, window: int):
    """Radial as Or over j of Distance(0, 2^j - 1, 2^j) & Window(w >> j, w >> j, dim=1)."""
    bands = range(frames.bit_length())
    return reduce(Or, [Distance(0, 2**j - 1, 2**j) & Window(window >> j, window >> j, dim=1) for j in bands])


LITERATURE = [
    ("CSWin stripes 4, two heads", patterns.cswin(4, heads=2), Canvas((24, 40)), 2),
    ("MaxViT block attention 8", patterns.maxvit(8, 4).block, Canvas((24, 32)), 1),
    ("MaxViT grid attention 4", patterns.maxvit(8, 4).grid, Canvas((24, 32)), 1),
    ("shifted Swin window 7", patterns.swin(7, shifted=True), Canvas((28, 35)), 1),
    ("Longformer window 32 + globals", patterns.longformer(32, (0, 100, 511)), Canvas(512), 1),
    ("BigBird blocks 16, random part", patterns.bigbird(16, canvas=512), Canvas(512), 1),
    ("DiNAT kernel 5 dilation 3", patterns.natten(5, dilation=3), Canvas((24, 40)), 1),
    ("GNA kernel (5, 7) stride (2, 3)", patterns.natten((5, 7), stride=(2, 3)), Canvas((24, 40)), 1),
    ("causal video NA (3, 5, 5)", patterns.natten((3, 5, 5), causal=(True, False, False)), Canvas((6, 12, 10)), 1),
    ("radial 8 frames x 64 tokens", patterns.radial(8, 64, 64), Canvas((8, 64)), 1),
    ("radial, issue form", _radial_issue_form(8, 64, 32), Canvas((8, 64)), 1),
    ("S2 stride 4, four heads", patterns.s2(4, heads=4, window=2, block=16), Canvas(512), 4),
    ("prefix LM 100", patterns.prefix_lm(100), Canvas(300), 1),
    ("strict causal, empty first row", Causal(-1), Canvas(200), 1),
    ("StreamingLLM sink 4 window 64", patterns.streaming_llm(4, 64), Canvas(400), 1),
    ("Sparse Transformer fixed 32/4", patterns.fixed(32, 4), Canvas(400), 1),
    ("Sparse Transformer strided 20", patterns.strided(20), Canvas(400), 1),
    ("MoA windows per head", patterns.moa((16, 64, 128), sink=4), Canvas(300), 3),
]


@pytest.mark.parametrize("blocks", BLOCKS, ids=lambda b: "auto" if b[0] is None else f"{b[0]}x{b[1]}")
@pytest.mark.parametrize(("name", "pattern", "canvas", "heads"), LITERATURE, ids=[c[0] for c in LITERATURE])
def test_literature_plan_equals_brute_force(name, pattern, canvas, heads, blocks):
    planned = plan(pattern, canvas, heads=heads, block_q=blocks[0], block_kv=blocks[1])
    total = 0
    for head in range(heads):
        expected = reference_mask(pattern, canvas, head=head)
        np.testing.assert_array_equal(planned.to_mask(head), expected, err_msg=f"head {head}\n{planned.describe()}")
        total += int(expected.sum())
    assert planned.stats.allowed_pairs == total
