"""The simulator prices the decode kernels the runtime launches (maskir.sim.decode)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import maskir
from maskir import Causal, Full, Segments, Sink, Window
from maskir.sim import DecodeReport, SimReport, simulate, simulate_decode
from maskir.sim.hardware import get_hardware

LONG = 131072
GOAL_PATTERNS = {
    "full": (Full(), None),
    "causal_at_the_end": (Causal(), LONG - 1),
    "window_4k_sinks_4": ((Window(4095, 0) & Causal()) | Sink(4), LONG - 1),
    "documents": (Segments() & Causal(), LONG - 1),
}


@pytest.mark.parametrize("name", list(GOAL_PATTERNS))
def test_one_query_over_128k_cache_is_within_1_3x_of_reading_the_cache_once(name):
    """B=1, 32 query heads, 8 kv heads, D=128, bf16, H100: the decode step costs at most 1.3x the HBM time of
    reading K and V once, on at least two programs per SM."""
    pattern, offset = GOAL_PATTERNS[name]
    report = simulate(pattern, 1, kv_canvas=LONG, heads=32, kv_heads=8, q_offset=offset or 0)
    assert isinstance(report, DecodeReport)
    assert report.cache_floor_ms == pytest.approx(2 * 8 * LONG * 128 * 2 / 3.35e12 * 1e3)
    assert report.fwd_ms <= 1.3 * report.cache_floor_ms
    assert report.programs >= 2 * get_hardware("h100").sms
    assert report.training.ms > 2.5 * report.fwd_ms  # the training kernels: 32 programs, K/V per query head


def test_gqa_packing_reads_each_kv_head_once():
    packed = simulate_decode(Full(), 1, 8192, heads=32, kv_heads=8)
    per_head = simulate_decode(Full(), 1, 8192, heads=32, kv_heads=32)
    assert packed.grid.pack == 4 and per_head.grid.pack == 1
    assert per_head.kv_tiles_read == 4 * packed.kv_tiles_read == 4 * 8 * 8192 // 64


def test_simulated_grid_is_the_runtime_grid():
    """Same shape, same SM count: the simulator's grid and splits are those the runtime launches."""
    attn = maskir.compile_decode(Causal(), heads=8, kv_heads=2, head_dim=32, dtype=torch.float32, device="cpu")
    q = torch.zeros(1, 8, 3, 32)
    kernels = attn.kernels(3, 1000)
    runtime, _ = kernels.grid(np.array([997]), np.array([1000]), ring=None, sms=7, splits=None, device=q.device)
    hw = dataclasses.replace(get_hardware("h100"), sms=7)
    simulated = simulate_decode(Causal(), 3, 1000, heads=8, kv_heads=2, head_dim=32, dtype="fp32", hardware=hw)
    assert simulated.grid == runtime
    assert simulated.launches[0].schedule.programs == runtime.programs


def test_simulate_chooses_decode_by_shape():
    assert isinstance(simulate(Full(), 4, kv_canvas=4096, heads=8), DecodeReport)
    assert isinstance(simulate(Full(), 4, kv_canvas=4096, heads=8, decode=False), SimReport)
    assert isinstance(simulate(Full(), 4096, heads=8), SimReport)
    with pytest.raises(ValueError, match="decode=True needs 1-D canvases"):
        simulate(Full(), (2, 2), kv_canvas=(64, 64), decode=True)


def test_cli_simulate_prints_the_decode_grid(capsys):
    from maskir.cli import main

    main(["simulate", "Causal()", "--canvas", "1", "--kv-canvas", "4096", "--heads", "8", "--kv-heads", "2"])
    out = capsys.readouterr().out
    assert "maskir decode" in out and "4 query heads packed per program" in out and "HBM floor" in out


def test_splits_cut_the_longest_list_to_a_share_of_the_work():
    from maskir.planner.decode import choose_splits

    ragged = np.array([2048, 10, 10, 10])  # one long sequence in a batch of short ones, on 4 SMs
    splits = choose_splits(ragged, np.ones(4), sms=4)
    assert -(-2048 // splits) <= -(-int(ragged.sum()) // 8) and -(-2048 // (splits - 1)) > -(-int(ragged.sum()) // 8)
    assert choose_splits(np.full(600, 50), np.ones(600), sms=132) == 1  # enough programs already
    assert choose_splits(np.array([3]), np.ones(1), sms=132) == 3  # never more splits than tiles
    assert choose_splits(np.zeros(2, dtype=int), np.ones(2), sms=132) == 1
