"""Tile efficiency (allowed / computed pairs, from ``plan.stats``) with the planner's own choices.

Each target is what a search over layouts reaches with q tiles >= 64 and kv tiles >= 32 (DESIGN.md); the
thresholds are the acceptance bars. Every plan here is also exact: stats counts the allowed pairs by
evaluating every PARTIAL tile.
"""

from __future__ import annotations

from functools import reduce

import pytest

from maskir.canvas import Canvas
from maskir.ir import Blocks, Causal, Columns, Dilated, Distance, Neighborhood, Or, Window
from maskir.planner import plan


def radial(frames: int, tokens: int, window: int):
    """Or over j of Distance(0, 2^j - 1, 2^j) & Window(w >> j, w >> j, dim=1), j = 0 .. log2(frames)."""
    bands = range(frames.bit_length())
    return reduce(Or, [Distance(0, 2**j - 1, 2**j) & Window(window >> j, window >> j, dim=1) for j in bands])


CASES = [
    ("causal sliding window 1024, 16K", Window(1023, 0), Canvas(16384), 0.88),
    ("2D neighborhood k17 on 128x128", Neighborhood(17), Canvas((128, 128)), 0.35),
    ("3D neighborhood k(5,9,9) on 16x32x32", Neighborhood((5, 9, 9)), Canvas((16, 32, 32)), 0.25),
    ("Swin window 8 on 128x128", Blocks(8), Canvas((128, 128)), 0.5),
    ("dilated window 256 dilation 4, 16K", Dilated(256, 4), Canvas(16384), 0.75),
    ("local 256 + every 128th column, causal, 16K", (Window(255, 0) | Columns(128, 1)) & Causal(), Canvas(16384), 0.5),
    ("radial 16 frames x 1024 tokens, window 512", radial(16, 1024, 512), Canvas((16, 1024)), 0.75),
]


@pytest.mark.parametrize(("name", "pattern", "canvas", "threshold"), CASES, ids=[c[0] for c in CASES])
def test_tile_efficiency_reaches_target(name, pattern, canvas, threshold):
    planned = plan(pattern, canvas)
    assert planned.block_q >= 64 and planned.block_kv >= 32
    assert planned.stats.efficiency >= threshold, planned.describe()


def test_swin_is_planned_window_major_with_no_waste():
    planned = plan(Blocks(8), Canvas((128, 128)))
    assert planned.stats.efficiency == 1.0
    assert planned.stats.partial_tiles == 0


def test_fixed_pattern_splits_into_band_and_gathered_columns():
    planned = plan((Window(255, 0) | Columns(128, 1)) & Causal(), Canvas(16384))
    assert planned.combine == "lse"
    assert [part.layout.name for part in planned.parts] == ["identity", "gathered kv"]
    assert planned.parts[1].n_kv_tiles * planned.block_kv >= 16384 // 128


def test_dilated_window_is_planned_residue_grouped():
    planned = plan(Dilated(256, 4), Canvas(16384))
    assert planned.layout.name.startswith("grouped")


def test_neighborhood_2d_is_planned_in_patches():
    planned = plan(Neighborhood(17), Canvas((128, 128)))
    assert planned.layout.name.startswith("tiled")
