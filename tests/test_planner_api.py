"""plan(): arguments, choices the caller can force, and what a Plan promises (lazy stats, tables, picture)."""

from __future__ import annotations

import io
import logging
import sys
import time

import numpy as np
import pytest

import maskir
from maskir.canvas import Canvas
from maskir.ir import Blocks, Causal, Columns, Neighborhood, PerHead, Predicate, Segments, Sink, Window
from maskir.planner import LAYOUTS, Plan, TileKind, plan, plan_cost, progress
from maskir.planner.picture import block_map, draw_plan
from maskir.planner.single_part import candidate_plans
from maskir.reference import reference_mask
from maskir.sim.cost import plan_cost as simulated_ms


def test_maskir_plan_is_the_planner_entry_point():
    assert maskir.plan is plan
    assert isinstance(maskir.plan(Causal(), 100), Plan)


@pytest.mark.parametrize("canvas", [300, (300,), Canvas(300)], ids=["int", "tuple", "Canvas"])
def test_plan_accepts_int_tuple_or_canvas(canvas):
    assert plan(Causal(), canvas).canvas == Canvas(300)


@pytest.mark.parametrize("block", [0, 8, 24, 100, -16, True, 16.0])
def test_plan_rejects_block_sizes_that_are_not_powers_of_two_from_16(block):
    with pytest.raises(ValueError, match="block_q must be a power of two >= 16"):
        plan(Causal(), 256, block_q=block)


def test_plan_rejects_an_unknown_layout_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'auto' or one of identity, tiled, grouped, window-major, gathered"):
        plan(Causal(), 256, layout="diagonal")


def test_plan_checks_the_pattern_on_the_canvas():
    with pytest.raises(ValueError, match="exceeds the canvas extent"):
        plan(Neighborhood(9), (8, 8))


@pytest.mark.parametrize(("block_q", "block_kv"), [(16, 16), (32, 16), (16, 128), (256, 32)])
def test_explicit_blocks_are_honoured(block_q, block_kv):
    planned = plan(Window(40, 0), 1000, block_q=block_q, block_kv=block_kv)
    assert (planned.block_q, planned.block_kv) == (block_q, block_kv)
    assert planned.parts[0].n_q_tiles == -(-1000 // block_q)


def test_the_planner_chooses_blocks_from_its_menu():
    planned = plan(Window(1023, 0), 16384)
    assert planned.block_q in (64, 128) and planned.block_kv in (32, 64, 128)


@pytest.mark.parametrize("family", LAYOUTS)
def test_every_layout_family_can_be_forced(family):
    planned = plan(Neighborhood(5, dilation=2) & Blocks(8) | Columns(16, 2) & Sink(200), (24, 32), layout=family)
    assert planned.layout.name.split()[0] == family
    np.testing.assert_array_equal(planned.to_mask(), reference_mask(planned.pattern, planned.canvas))


def test_a_cost_callable_decides_between_candidates():
    smallest_tiles = plan(Window(255, 0), 4096, cost=lambda p: p.block_q * p.block_kv)
    assert (smallest_tiles.block_q, smallest_tiles.block_kv) == (64, 32)


def test_the_default_cost_is_the_simulated_h100_forward_time():
    canvas = Canvas(16384)
    planned = plan(Window(1023, 0), canvas, heads=16)
    candidates = candidate_plans(Window(1023, 0), canvas, canvas, 16, None, None, "auto")
    assert plan_cost(planned) == min(map(plan_cost, candidates))
    assert plan_cost(planned) == simulated_ms(planned, "h100", head_dim=128, dtype="bf16")


def test_a_band_plan_builds_run_keys_and_csr_tables_on_first_use():
    table = plan(Window(1023, 0), 1 << 20).parts[0].tables[0]
    assert "key" not in table.runs.__dict__ and "_forward" not in table.__dict__  # priced from per-row counts
    assert table.kv_index.size == table.nnz == table.kv_count.sum()


def test_stats_are_not_computed_while_planning():
    planned = plan(Window(1023, 0), 1 << 16)
    assert "stats" not in planned.__dict__
    assert planned.stats.allowed_pairs == sum(min(q + 1, 1024) for q in range(1 << 16))


def test_perhead_plans_one_table_per_distinct_head_pattern():
    pattern = PerHead([Window(3, 0), Causal(), Window(3, 0)])
    planned = plan(pattern, 200, heads=5, block_q=32, block_kv=32)
    table = planned.parts[0].head_table
    assert len(planned.parts[0].tables) == 2
    assert table[0] == table[2] == table[3] != table[1] == table[4]


def test_a_dynamic_pattern_is_a_static_superset_marked_dynamic():
    planned = plan(Segments() & Causal(), 256, block_q=64, block_kv=64)
    assert planned.dynamic and not plan(Causal(), 256).dynamic
    q_tile, kv_tile, kind = planned.parts[0].tables[0].pairs()
    assert set(kind.tolist()) == {TileKind.PARTIAL}  # unknown wherever causal allows
    assert np.all(kv_tile <= q_tile)


def test_a_dynamic_plan_counts_pairs_only_with_its_data():
    planned = plan(Segments() & Causal(), 256, block_q=64, block_kv=64)
    with pytest.raises(ValueError, match="run-time data.*plan.measure"):
        _ = planned.stats
    ids = np.repeat(np.arange(4), 64)[None]
    assert planned.measure(segments=ids).allowed_pairs == 4 * (64 * 65 // 2)
    assert planned.tile_counts.partial_tiles == 10


def test_tables_list_full_tiles_first_then_partial_each_ascending():
    table = plan(Window(100, 0), 1024, block_q=64, block_kv=32).parts[0].tables[0]
    for i in range(table.kv_start.size - 1):
        row = table.kv_index[table.kv_start[i] : table.kv_start[i + 1]]
        kinds = table.kv_kind[table.kv_start[i] : table.kv_start[i + 1]]
        full = table.kv_full[i]
        assert np.all(kinds[:full] == TileKind.FULL) and np.all(kinds[full:] == TileKind.PARTIAL)
        assert np.all(np.diff(row[:full]) > 0) and np.all(np.diff(row[full:]) > 0)


def test_transposed_table_lists_the_same_tiles_per_kv_tile():
    table = plan(Window(100, 20), 1024, block_q=64, block_kv=32).parts[0].tables[0]
    forward = set(zip(*(a.tolist() for a in table.pairs())))
    kv_tile = np.repeat(np.arange(table.q_start.size - 1), table.q_count)
    backward = set(zip(table.q_index.tolist(), kv_tile.tolist(), table.q_kind.tolist()))
    assert forward == backward
    for j in range(table.q_start.size - 1):
        kinds = table.q_kind[table.q_start[j] : table.q_start[j + 1]]
        assert np.all(kinds[: table.q_full[j]] == TileKind.FULL) and np.all(
            kinds[table.q_full[j] :] == TileKind.PARTIAL
        )


def test_describe_names_layout_blocks_and_efficiency():
    text = plan(Blocks(8), (64, 64), block_q=64, block_kv=64).describe()
    assert "blocks 64x64" in text and "window-major" in text and "efficiency 1.000" in text


def test_block_map_shows_the_tile_classes():
    planned = plan(Causal(), 256, block_q=64, block_kv=64)
    expected = np.array([[2, 0, 0, 0], [1, 2, 0, 0], [1, 1, 2, 0], [1, 1, 1, 2]])
    np.testing.assert_array_equal(block_map(planned.parts[0]), expected)


def test_draw_plan_writes_a_png(tmp_path):
    planned = plan((Window(31, 0) | Columns(32, 1)) & Causal(), 512, block_q=64, block_kv=32)
    path = draw_plan(planned, tmp_path / "plan.png", show_tokens=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_plan_refuses_token_pictures_of_large_canvases(tmp_path):
    with pytest.raises(ValueError, match="show_tokens=False"):
        draw_plan(plan(Causal(), 8192), tmp_path / "big.png", show_tokens=True)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_exact_evaluation_redraws_a_progress_line_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "PROGRESS_AFTER_SECONDS", 0.0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    planned = plan(Predicate(lambda b, h, q, kv: (q + kv) % 3 == 0) & Window(20, 0), 512, block_q=64, block_kv=64)
    written = terminal.getvalue()
    assert "\rmaskir plan: evaluating" in written and written.endswith("\n")
    np.testing.assert_array_equal(planned.to_mask(), reference_mask(planned.pattern, planned.canvas))


def test_exact_evaluation_logs_progress_without_carriage_returns_when_stderr_is_a_file(monkeypatch, caplog, tmp_path):
    """A log file gets no redrawn lines: progress goes to the maskir.planner logger, rate-limited."""
    monkeypatch.setattr(progress, "PROGRESS_AFTER_SECONDS", 0.0)
    with open(tmp_path / "stderr.log", "w+") as log_file:
        monkeypatch.setattr(sys, "stderr", log_file)
        with caplog.at_level(logging.INFO, logger="maskir.planner"):
            plan(Predicate(lambda b, h, q, kv: (q + kv) % 3 == 0) & Window(20, 0), 512, block_q=64, block_kv=64)
        log_file.seek(0)
        assert "\r" not in log_file.read()
    records = [r.getMessage() for r in caplog.records if r.name == "maskir.planner"]
    assert records and all("maskir plan: evaluating" in r for r in records)
    assert len(records) <= 2  # the first update and the last (LOG_EVERY_SECONDS apart otherwise)


def test_exact_evaluation_is_quiet_when_fast(capsys):
    plan(Predicate(lambda b, h, q, kv: (q + kv) % 3 == 0), 256, block_q=64, block_kv=64)
    assert capsys.readouterr().err == ""


CROSS = [
    (Causal(), Canvas(100), Canvas(250)),
    (Window(30, 5) | Sink(7), Canvas(100), Canvas(250)),
    (Columns(16, 3) & Causal(40), Canvas(300), Canvas(120)),
    (Window(2, 1, dim=0) & Blocks(4), Canvas((8, 10)), Canvas((12, 10))),
    (Causal(2, dim=1), Canvas((8, 10)), Canvas((12, 7))),
]


@pytest.mark.parametrize("family", ["auto", *LAYOUTS])
@pytest.mark.parametrize(("pattern", "canvas", "kv_canvas"), CROSS, ids=[str(c[0]) for c in CROSS])
def test_cross_attention_canvases_plan_exactly(pattern, canvas, kv_canvas, family):
    planned = plan(pattern, canvas, kv_canvas, block_q=16, block_kv=32, layout=family)
    np.testing.assert_array_equal(planned.to_mask(), reference_mask(pattern, canvas, kv_canvas))


def test_a_million_token_sliding_window_plans_fast_in_o_of_tiles():
    """Generous sanity bound (timings live in benchmarks/plan_speed.py): well under a second."""
    started = time.perf_counter()
    planned = plan(Window(1023, 0), 1 << 20, block_q=128, block_kv=128)
    assert time.perf_counter() - started < 1.0
    table = planned.parts[0].tables[0]
    assert table.runs.key.size <= 5 * planned.parts[0].n_q_tiles  # five runs per q tile, whatever N
    assert table.nnz == sum(range(1, 9)) + 9 * (8192 - 8)  # q tile i sees kv tiles i - 8 .. i
