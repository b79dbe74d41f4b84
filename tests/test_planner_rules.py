"""Tile class rules against exact evaluation (``fallback.exact_kinds`` is the oracle), and the run algebra.

Soundness on any layout: a FULL tile has every pair allowed, an EMPTY tile none. Exactness on the layouts
each leaf is planned in: the rules give exactly the evaluated class of every tile.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import canvases, leaves

from maskir.canvas import Canvas
from maskir.ir import (
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Prefix,
    Sink,
    Strided,
    Stripes,
    Window,
)
from maskir.planner.analysis import tile_runs
from maskir.planner.fallback import exact_kinds
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.layouts import LAYOUTS, layout_choices
from maskir.planner.runs import AND_TABLE, NOT_TABLE, OR_TABLE, TileRuns
from maskir.planner.tiles import make_side

BLOCKS = [(16, 16), (32, 16), (64, 64)]


def _classes(pattern, canvas: Canvas, block_q: int, block_kv: int, family: str):
    """(rule classes, exact classes) of every tile pair in the family's first layout candidate."""
    choice = layout_choices(pattern, canvas, canvas, block_q, block_kv, family)[0]
    q, kv = make_side(canvas, block_q, choice.q), make_side(canvas, block_kv, choice.kv)
    rows, cols, _ = TileRuns.constant(q.n_tiles, kv.n_tiles, PARTIAL).nonempty_pairs()
    rules = tile_runs(pattern, q, kv).kind_at(rows * kv.n_tiles + cols)
    return rules, exact_kinds(pattern, q, kv, rows, cols)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_leaf_rules_are_sound_on_every_layout(data):
    canvas = data.draw(canvases(max_tokens=200))
    leaf = data.draw(leaves(canvas))
    blocks = data.draw(st.sampled_from(BLOCKS))
    rules, exact = _classes(leaf, canvas, *blocks, data.draw(st.sampled_from(LAYOUTS)))
    assert np.all(exact[rules == FULL] == FULL)
    assert np.all(exact[rules == EMPTY] == EMPTY)


EXACT_CASES = [
    (Full(), Canvas(300), "identity"),
    (Causal(-3), Canvas(300), "identity"),
    (Window(40, 7), Canvas(300), "identity"),
    (Sink(50), Canvas(300), "identity"),
    (Prefix(70), Canvas(300), "identity"),
    (Columns(24, 5), Canvas(300), "identity"),
    (Global((3, 77, 150)), Canvas(300), "identity"),
    (Strided(20, 3), Canvas(300), "grouped"),
    (Dilated(9, 4), Canvas(300), "grouped"),
    (Dilated(9, 4), Canvas(300), "identity"),
    (Window(5, 2, dim=1), Canvas((24, 32)), "tiled"),
    (Causal(1, dim=0), Canvas((24, 32)), "tiled"),
    (Distance(0, 2, 5), Canvas((24, 32)), "tiled"),
    (Neighborhood(7), Canvas((24, 32)), "tiled"),
    (Neighborhood((3, 7), stride=(2, 3), causal=(True, False)), Canvas((24, 32)), "tiled"),
    (Neighborhood(5), Canvas((16, 32)), "identity"),
    (Neighborhood((3, 5, 5), causal=(True, False, False)), Canvas((6, 16, 16)), "tiled"),
    (Neighborhood(5, dilation=3), Canvas((24, 32)), "grouped"),
    (Blocks(8, offset=3), Canvas((24, 32)), "window-major"),
    (Stripes(1, 4), Canvas((24, 32)), "window-major"),
    (Grid(4), Canvas((24, 32)), "window-major"),
]


@pytest.mark.parametrize("blocks", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize(("leaf", "canvas", "family"), EXACT_CASES, ids=[f"{c[0]}-{c[2]}" for c in EXACT_CASES])
def test_leaf_rules_are_exact_on_their_layouts(leaf, canvas, family, blocks):
    rules, exact = _classes(leaf, canvas, *blocks, family)
    np.testing.assert_array_equal(rules, exact)


# -- the run algebra ---------------------------------------------------------------------------------


@st.composite
def _grids(draw, n_rows: int, n_cols: int):
    return np.asarray(
        draw(st.lists(st.sampled_from([EMPTY, FULL, PARTIAL]), min_size=n_rows * n_cols, max_size=n_rows * n_cols)),
        dtype=np.int8,
    ).reshape(n_rows, n_cols)


def _runs(grid: np.ndarray) -> TileRuns:
    rows, cols = np.nonzero(grid != EMPTY)
    return TileRuns.from_pairs(rows, cols, grid[rows, cols], *grid.shape)


def _dense(runs: TileRuns) -> np.ndarray:
    keys = np.arange(runs.n_rows * runs.n_cols)
    return runs.kind_at(keys).reshape(runs.n_rows, runs.n_cols)


@given(st.data())
def test_runs_combine_tile_by_tile(data):
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)))
    a, b = data.draw(_grids(*shape)), data.draw(_grids(*shape))
    np.testing.assert_array_equal(_dense(_runs(a)), a)
    np.testing.assert_array_equal(_dense(_runs(a) & _runs(b)), AND_TABLE[a, b])
    np.testing.assert_array_equal(_dense(_runs(a) | _runs(b)), OR_TABLE[a, b])
    np.testing.assert_array_equal(_dense(~_runs(a)), NOT_TABLE[a])


@given(st.data())
def test_restrict_columns_applies_a_column_pattern_where_asked(data):
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)))
    care, columns = data.draw(_grids(*shape)), data.draw(_grids(1, shape[1]))
    got = _dense(_runs(care).restrict_columns(TileRuns.one_row(columns[0])))
    expected = np.where(care != EMPTY, columns, EMPTY)
    np.testing.assert_array_equal(got, expected)


def test_banded_runs_may_hold_empty_runs_and_still_read_right():
    starts = np.array([[0, 0, 1, 3, 3], [0, 2, 2, 2, 4]])  # row 0: P F F E; row 1: E E P P
    runs = TileRuns.from_breaks(list(starts.T), np.array([EMPTY, PARTIAL, FULL, PARTIAL, EMPTY]), 4)
    np.testing.assert_array_equal(_dense(runs), [[PARTIAL, FULL, FULL, EMPTY], [EMPTY, EMPTY, PARTIAL, PARTIAL]])
    assert runs.tiles(FULL) == 2 and runs.tiles(PARTIAL) == 3
    assert runs.equals(_runs(_dense(runs)))


@given(st.data())
def test_break_runs_count_tiles_per_row_and_kind_before_building_keys(data):
    """Any breaks and kinds: the counts read from the breaks equal those of the same runs given by keys."""
    n_rows, n_cols, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 6))
    inner = [
        sorted(data.draw(st.lists(st.integers(0, n_cols), min_size=width - 1, max_size=width - 1)))
        for _ in range(n_rows)
    ]
    starts = [np.zeros(n_rows, dtype=np.int64), *np.array(inner, dtype=np.int64).reshape(n_rows, width - 1).T]
    kinds = np.array(data.draw(st.lists(st.sampled_from([EMPTY, FULL, PARTIAL]), min_size=width, max_size=width)))
    runs = TileRuns.from_breaks(starts, kinds, n_cols)
    listed, full = runs.row_counts
    assert "key" not in runs.__dict__  # counted from the breaks alone
    by_keys = TileRuns(n_rows, n_cols, runs.key, runs.kind)
    np.testing.assert_array_equal(listed, by_keys.row_counts[0])
    np.testing.assert_array_equal(full, by_keys.row_counts[1])
    np.testing.assert_array_equal(runs.tiles_per_kind, by_keys.tiles_per_kind)
    dense = _dense(by_keys)
    np.testing.assert_array_equal(listed, (dense != EMPTY).sum(axis=1))
    np.testing.assert_array_equal(full, (dense == FULL).sum(axis=1))
