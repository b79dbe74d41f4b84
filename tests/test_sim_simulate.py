"""maskir.simulate end to end: planning for each kernel, the report's fields and text, argument checks."""

import pytest

import maskir
from maskir import Blocks, Canvas, Causal, Neighborhood, Segments, Window
from maskir.planner import plan
from maskir.sim import SimReport, simulate
from maskir.sim.simulator import kernel_plan


def test_simulate_is_the_package_export():
    assert maskir.simulate is simulate and maskir.SimReport is SimReport


def test_flex_kernel_runs_flex_plan_identity_128_tiles():
    flex = kernel_plan("flex", Neighborhood(7), Canvas((32, 32)), heads=2)
    assert (flex.block_q, flex.block_kv, flex.layout.is_identity, flex.heads) == (128, 128, True, 2)
    report = simulate(Neighborhood(7), Canvas((32, 32)), kernel="flex", heads=2)
    assert report.predicted_speedup_vs_flex == 1.0
    assert report.fwd_ms == report.flex_fwd_ms


def test_report_holds_times_work_bounds_and_schedule():
    report = simulate(Window(255, 0), 4096, heads=4, head_dim=64)
    assert report.bwd_ms is None and report.predicted_speedup_vs_flex_fwdbwd is None
    assert report.fwd_ms > 0 and report.dense_fwd_ms > report.fwd_ms
    assert report.predicted_speedup_vs_dense == pytest.approx(report.dense_fwd_ms / report.fwd_ms)
    assert report.density == pytest.approx((256 * 4096 - 255 * 256 / 2) / 4096**2)
    assert 1 <= report.tile_bound <= report.pair_bound == pytest.approx(1 / report.density)
    assert report.useful_tflop == pytest.approx(4 * 64 * report.pairs.allowed / 1e12)
    assert report.computed_tflop >= report.useful_tflop
    assert report.waves == report.launches[0].schedule.waves >= 1
    assert report.makespan_ms <= report.fwd_ms


def test_backward_adds_bwd_time_and_the_fwdbwd_ratio():
    report = simulate(Causal(), 2048, heads=8, backward=True)
    assert report.bwd_ms > report.fwd_ms
    assert report.predicted_speedup_vs_flex_fwdbwd == pytest.approx(
        (report.flex_fwd_ms + report.flex_bwd_ms) / (report.fwd_ms + report.bwd_ms)
    )


def test_text_report_names_the_case_and_every_launch():
    text = str(simulate(Blocks(8), Canvas((64, 64)), backward=True, hardware="a100"))
    assert text.startswith("maskir on a100: Blocks(8) on Canvas((64, 64)), B=1 H=16 D=128 bf16")
    for needle in ("forward", "backward", "vs flex", "vs dense", "tile efficiency", "speed of light", "waves"):
        assert needle in text
    assert "backward preprocess" in text and "memory-bound" in text


def test_given_plan_is_priced_instead_of_planning():
    given = plan(Causal(), Canvas(1024), heads=16, block_q=64, block_kv=64, layout="identity")
    report = simulate(Causal(), 1024, plan=given)
    assert (report.block_q, report.block_kv) == (64, 64)


def test_given_plan_of_another_pattern_is_rejected():
    given = plan(Causal(), Canvas(1024), heads=16)
    with pytest.raises(ValueError, match="simulate argument plan is of Causal"):
        simulate(Window(3, 3), 1024, plan=given)


def test_cross_attention_canvases():
    report = simulate(Causal(offset=1024), 512, kv_canvas=2048, heads=2)
    assert report.canvas == "Canvas((512,)) x kv Canvas((2048,))"
    assert report.pair_bound == pytest.approx(512 * 2048 / sum(min(q + 1025, 2048) for q in range(512)))


def test_data_dependent_pattern_reports_no_pair_bound():
    report = simulate(Segments() & Causal(), 1024, heads=2)
    assert report.pair_bound is None and report.useful_tflop is None
    assert "n/a" in str(report)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="simulate needs a Pattern"):
        simulate("Causal()", 1024)
    with pytest.raises(ValueError, match="simulate argument canvas"):
        simulate(Causal(), (0,))
    with pytest.raises(ValueError, match="Unknown hardware 'v100'; valid names"):
        simulate(Causal(), 1024, hardware="v100")
    with pytest.raises(ValueError, match="Unknown kernel"):
        simulate(Causal(), 1024, kernel="sdpa")
