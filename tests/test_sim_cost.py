"""The cost model (maskir.sim.cost) on constructed plans: structure, monotonicity, floors and errors."""

from dataclasses import replace

import numpy as np
import pytest
from kernel_plans import brute_force_plan

from maskir import Blocks, Canvas, Causal, Columns, Window
from maskir.planner.plan import Layout, Plan, PlanPart, TileKind, TileTable
from maskir.sim.cost import dense_workload, plan_cost, simulate_plan, time_workload, workload
from maskir.sim.hardware import FLEX, HARDWARE, MASKIR


def table_plan(q_tile, kv_tile, kind, n_tiles: int, block: int, *, heads: int = 1) -> Plan:
    """A one-part identity plan over n_tiles x n_tiles tiles listing exactly the given tiles."""
    table = TileTable.from_pairs(np.asarray(q_tile), np.asarray(kv_tile), np.asarray(kind), n_tiles, n_tiles)
    part = PlanPart(Blocks(block), Layout("identity"), (table,), np.zeros(heads, dtype=np.int64), n_tiles, n_tiles)
    canvas = Canvas(n_tiles * block)
    return Plan(Blocks(block), canvas, canvas, heads, block, block, (part,))


def diagonal_plan(n_tiles: int, block: int, kind: int = TileKind.FULL, *, heads: int = 16) -> Plan:
    """Block-diagonal: q tile i sees kv tile i only (Blocks(block) on the identity layout)."""
    tiles = np.arange(n_tiles)
    return table_plan(tiles, tiles, np.full(n_tiles, kind), n_tiles, block, heads=heads)


def test_plan_cost_is_the_maskir_forward_time_with_the_estimated_makespan():
    plan = brute_force_plan(Causal(), Canvas(512), block_q=64, block_kv=64, heads=3)
    work = workload(plan)
    assert plan_cost(plan) == time_workload(work, "h100", kernel="maskir", scheduler="estimate").fwd_ms
    assert (
        plan_cost(plan, "a100", head_dim=64, dtype="fp16")
        == time_workload(work, "a100", head_dim=64, dtype="fp16", scheduler="estimate").fwd_ms
    )


def test_plan_cost_equals_the_simulated_forward_time_when_programs_grow_in_launch_order():
    """One head of causal rows: the estimated makespan is the list schedule's (see maskir.sim.schedule)."""
    plan = brute_force_plan(Causal(), Canvas(2048), block_q=64, block_kv=64)
    assert plan_cost(plan) == pytest.approx(simulate_plan(plan).fwd_ms)


def test_plan_cost_is_within_one_program_of_the_simulated_time_over_heads():
    """16 heads of 32 causal rows (4 waves): the estimate may miss the list schedule by one program."""
    plan = brute_force_plan(Causal(), Canvas(2048), block_q=64, block_kv=64, heads=16)
    launch = simulate_plan(plan).launches[0]
    assert plan_cost(plan) != launch.ms
    assert abs(plan_cost(plan) - launch.ms) <= launch.durations.max() * 1e3


def test_the_estimate_scheduler_keeps_no_schedule_and_unknown_schedulers_are_rejected():
    work = workload(diagonal_plan(8, 64))
    assert time_workload(work, scheduler="estimate").launches[0].schedule is None
    with pytest.raises(ValueError, match="scheduler must be one of"):
        time_workload(work, scheduler="lpt")


def test_partial_tiles_cost_more_than_full_ones():
    full, partial = diagonal_plan(64, 128, TileKind.FULL), diagonal_plan(64, 128, TileKind.PARTIAL)
    assert simulate_plan(partial).fwd_ms > simulate_plan(full).fwd_ms
    assert simulate_plan(partial, backward=True).bwd_ms > simulate_plan(full, backward=True).bwd_ms


def test_fewer_tiles_take_less_time_over_many_waves():
    causal = brute_force_plan(Causal(), Canvas(2048), block_q=64, block_kv=64)
    band = brute_force_plan(Window(127, 0), Canvas(2048), block_q=64, block_kv=64)
    dense = time_workload(dense_workload(2048, 2048, 64, 64, 1), batch=64).fwd_ms
    assert simulate_plan(band, batch=64).fwd_ms < simulate_plan(causal, batch=64).fwd_ms < dense


def test_within_one_wave_the_longest_program_decides():
    """32 q tiles x 4 heads fit on 132 SMs at once: causal's last q tile (all tiles, one PARTIAL) is the
    longest program, slower than a dense one, so causal is no faster than dense here."""
    causal = simulate_plan(brute_force_plan(Causal(), Canvas(2048), block_q=64, block_kv=64), batch=4)
    dense = time_workload(dense_workload(2048, 2048, 64, 64, 1), batch=4)
    assert causal.launches[0].schedule.waves == dense.launches[0].schedule.waves == 1
    assert causal.fwd_ms > dense.fwd_ms


def test_equal_programs_run_in_whole_waves():
    """Dense: every program is alike, so the makespan is waves x one program and grows in wave steps."""
    one_wave = time_workload(dense_workload(132 * 128, 16384, 128, 128, 1)).launches[0]
    two_waves = time_workload(dense_workload(133 * 128, 16384, 128, 128, 1)).launches[0]
    assert (one_wave.schedule.waves, two_waves.schedule.waves) == (1, 2)
    assert two_waves.schedule.makespan == pytest.approx(2 * one_wave.schedule.makespan)
    assert one_wave.schedule.utilization == pytest.approx(1.0)


def test_computed_flops_count_every_listed_tile_of_every_head_and_batch():
    plan = brute_force_plan(Causal(), Canvas(256), heads=3, block_q=32, block_kv=64)
    tiles = sum(int(t.kv_count.sum()) for t in plan.parts[0].tables) * 3  # one table shared by 3 heads
    assert simulate_plan(plan, batch=2, head_dim=64).computed_flops == 4 * 32 * 64 * 64 * tiles * 2


def test_memory_bound_plan_runs_at_the_hbm_floor():
    """Block-diagonal 64 x 64 tiles at N=16384, H=16: one small tile per program, so moving Q, K, V and O
    once through HBM (268 MB, 80 us on an H100) takes longer than the math."""
    launch = simulate_plan(diagonal_plan(256, 64), "h100").launches[0]
    assert launch.hbm_floor_ms == pytest.approx(4 * 16384 * 128 * 2 * 16 / 3.35e12 * 1e3)
    assert launch.schedule.makespan * 1e3 < launch.hbm_floor_ms
    assert launch.ms == pytest.approx(FLEX.launch_us * 1e-3 + launch.hbm_floor_ms)


def test_every_launch_pays_at_least_its_hbm_floor_and_launch_overhead():
    plan = brute_force_plan(Causal(), Canvas(512), heads=2, block_q=64, block_kv=64)
    for launch in simulate_plan(plan, backward=True).launches:
        assert launch.ms >= MASKIR.launch_us * 1e-3 + launch.hbm_floor_ms - 1e-12


def test_backward_is_one_fused_launch_for_flex_and_two_for_maskir():
    plan = brute_force_plan(Causal(), Canvas(512), block_q=64, block_kv=64)
    flex = [launch.name for launch in simulate_plan(plan, kernel="flex", backward=True).launches]
    maskir = [launch.name for launch in simulate_plan(plan, kernel="maskir", backward=True).launches]
    assert flex == ["part 0 forward", "backward preprocess", "part 0 backward"]
    assert maskir == ["part 0 forward", "backward preprocess", "part 0 dK/dV", "part 0 dQ"]
    assert simulate_plan(plan).bwd_ms is None


def test_backward_costs_more_than_forward():
    plan = brute_force_plan(Causal(), Canvas(1024), heads=8, block_q=64, block_kv=64)
    timing = simulate_plan(plan, backward=True)
    assert 2 * timing.fwd_ms < timing.bwd_ms < 5 * timing.fwd_ms  # 7 matmuls per tile to the forward's 2


def test_union_plan_runs_each_part_then_merges():
    canvas = Canvas(512)
    plan = brute_force_plan(
        Window(63, 0) | (Columns(64, 1) & Causal()),
        canvas,
        block_q=64,
        block_kv=64,
        parts=[(Window(63, 0), Layout("identity")), (Columns(64, 1) & Causal() & ~Window(63, 0), Layout("identity"))],
    )
    timing = simulate_plan(plan, backward=True)
    names = [launch.name for launch in timing.launches]
    assert names == [
        "part 0 forward",
        "part 1 forward",
        "merge forward",
        "backward preprocess",
        "part 0 dK/dV",
        "part 0 dQ",
        "part 1 dK/dV",
        "part 1 dQ",
        "merge backward",
    ]
    assert timing.fwd_ms == pytest.approx(sum(launch.ms for launch in timing.launches[:3]))


def test_faster_hardware_predicts_less_time():
    plan = brute_force_plan(Causal(), Canvas(1024), heads=16, block_q=128, block_kv=128)
    times = {name: simulate_plan(plan, name).fwd_ms for name in ("a100", "h100", "b200")}
    assert times["b200"] < times["h100"] < times["a100"]


def test_fp32_is_slower_than_bf16():
    plan = brute_force_plan(Causal(), Canvas(1024), heads=16, block_q=128, block_kv=128)
    assert simulate_plan(plan, dtype="fp32").fwd_ms > simulate_plan(plan, dtype="bf16").fwd_ms


def test_small_kv_tiles_become_bound_by_their_l2_loads():
    """A 128 x 16 tile has 1/8 of the math of 128 x 128 but 1/8 of its K/V bytes too; the fixed per-tile
    cycles then make small tiles cost more per pair."""
    wide = time_workload(dense_workload(16384, 16384, 128, 128, 16)).fwd_ms
    narrow = time_workload(dense_workload(16384, 16384, 128, 16, 16)).fwd_ms
    assert narrow > wide


def test_kernel_constants_change_the_prediction_where_they_should():
    plan = diagonal_plan(64, 128, TileKind.PARTIAL)
    base = simulate_plan(plan, kernel=FLEX).fwd_ms
    assert simulate_plan(plan, kernel=replace(FLEX, mask_ops_per_pair=0.0)).fwd_ms < base
    assert simulate_plan(plan, kernel=replace(FLEX, fwd_efficiency=1.0)).fwd_ms < base
    full = diagonal_plan(64, 128, TileKind.FULL)
    assert (
        simulate_plan(full, kernel=replace(FLEX, mask_ops_per_pair=0.0)).fwd_ms
        == simulate_plan(full, kernel=FLEX).fwd_ms
    )


def test_workload_reads_counts_without_evaluating_the_pattern():
    plan = brute_force_plan(Causal(), Canvas(256), block_q=64, block_kv=64)
    part = workload(plan).parts[0]
    ((count, full),) = part.rows("q")
    assert count.tolist() == [1, 2, 3, 4] and full.tolist() == [0, 1, 2, 3]
    ((count, full),) = part.rows("kv")
    assert count.tolist() == [4, 3, 2, 1] and full.tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": 0}, "batch must be a positive int"),
        ({"head_dim": 1.5}, "head_dim must be a positive int"),
        ({"dtype": "int8"}, "Unknown dtype 'int8'"),
        ({"hardware": "tpu"}, "Unknown hardware 'tpu'; valid names"),
        ({"kernel": "xformers"}, "Unknown kernel 'xformers'; valid names"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them(kwargs, message):
    plan = diagonal_plan(4, 32)
    with pytest.raises(ValueError, match=message):
        simulate_plan(plan, **kwargs)


def test_every_listed_gpu_prices_a_plan():
    plan = diagonal_plan(16, 64)
    for name in HARDWARE:
        assert 0 < simulate_plan(plan, name, backward=True).bwd_ms
