"""Program scheduling (maskir.sim.schedule): greedy list scheduling in launch order and LPT order, and the
planner's vectorized estimate of the launch-order schedule (round robin capped by the fluid bound)."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskir.sim.schedule import estimate_makespan, fluid_bound, list_schedule, round_robin


def best_makespan(durations, sms):
    """Optimal makespan by trying every assignment (small cases only)."""
    best = float("inf")
    for assignment in itertools.product(range(sms), repeat=len(durations)):
        loads = np.zeros(sms)
        np.add.at(loads, list(assignment), durations)
        best = min(best, loads.max())
    return best


@pytest.mark.parametrize("order", ["launch", "lpt"])
def test_equal_programs_take_ceil_programs_over_sms_waves(order):
    s = list_schedule(np.full(2048, 3.0), 132, order)
    assert s.waves == 16
    assert s.makespan == 16 * 3.0
    assert s.loads.sum() == 2048 * 3.0
    assert s.utilization == pytest.approx(2048 / (16 * 132))


def test_one_long_program_sets_the_makespan_heaviest_first():
    durations = np.array([1.0] * 20 + [50.0] + [1.0] * 20)
    s = list_schedule(durations, 4, "lpt")
    assert s.makespan == 50.0
    assert s.waves == 11


def test_one_long_program_launched_late_starts_after_the_short_ones_before_it():
    # 20 unit programs fill 4 SMs to 5 each; the long one starts at 5; the last 20 go to the other SMs.
    durations = np.array([1.0] * 20 + [50.0] + [1.0] * 20)
    s = list_schedule(durations, 4, "launch")
    assert s.makespan == 55.0
    assert sorted(s.loads) == [11.0, 12.0, 12.0, 55.0]


@pytest.mark.parametrize("order", ["launch", "lpt"])
def test_more_sms_than_programs_is_the_longest_program(order):
    s = list_schedule(np.array([2.0, 7.0, 3.0]), 132, order)
    assert s.makespan == 7.0
    assert s.waves == 1
    assert np.count_nonzero(s.loads) == 3


def test_launch_order_puts_each_program_on_the_first_free_sm():
    # SM0: 3 then 1 (free at 3, before SM1 at 4) -> 4; SM1: 4 then 5 -> 9.
    assert list_schedule(np.array([3.0, 4.0, 1.0, 5.0]), 2, "launch").makespan == 9.0


def test_lpt_finds_the_optimum_on_a_known_case():
    # Launched short first, the long program lands on a busy SM (3); heaviest first is optimal (4).
    durations = np.array([1.0, 1.0, 2.0, 1.0, 3.0])
    assert best_makespan(durations, 2) == 4.0
    assert list_schedule(durations, 2, "lpt").makespan == 4.0
    assert list_schedule(durations, 2, "launch").makespan == 5.0


def test_lpt_meets_grahams_bound_on_its_worst_case():
    # 2m+1 jobs on m machines: LPT gives 4/3 - 1/(3m) times the optimum, exactly.
    m = 3
    durations = np.array([5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0])
    optimum = best_makespan(durations, m)
    assert optimum == 9.0
    assert list_schedule(durations, m, "lpt").makespan == pytest.approx(optimum * (4 / 3 - 1 / (3 * m)))


def test_no_programs_is_an_empty_schedule():
    s = list_schedule(np.array([]), 8)
    assert (s.makespan, s.waves, s.programs) == (0.0, 0, 0)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="sms >= 1"):
        list_schedule(np.ones(3), 0)
    with pytest.raises(ValueError, match="order must be one of"):
        list_schedule(np.ones(3), 2, "random")
    with pytest.raises(ValueError, match="non-negative"):
        list_schedule(np.array([1.0, -1.0]), 2)


@st.composite
def grids(draw):
    """(blocks of program durations, sequence of block indices, SM count): a grid of repeated head blocks."""
    blocks = draw(
        st.lists(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60), min_size=1, max_size=3)
    )
    sequence = draw(st.lists(st.integers(0, len(blocks) - 1), min_size=1, max_size=6))
    return [np.array(b) for b in blocks], np.array(sequence), draw(st.integers(1, 20))


def _concatenated(blocks, sequence) -> np.ndarray:
    return np.concatenate([blocks[g] for g in sequence])


@given(grids())
def test_round_robin_runs_program_p_on_sm_p_mod_sms(grid):
    blocks, sequence, sms = grid
    durations = _concatenated(blocks, sequence)
    s = round_robin(blocks, sequence, sms)
    expected = np.bincount(np.arange(durations.size) % sms, weights=durations, minlength=sms)
    np.testing.assert_allclose(s.loads, expected, atol=1e-9)
    assert s.programs == durations.size


@given(grids())
def test_fluid_bound_is_never_below_the_launch_order_schedule(grid):
    blocks, sequence, sms = grid
    makespan = list_schedule(_concatenated(blocks, sequence), sms, "launch").makespan
    assert fluid_bound(blocks, sequence, sms) >= makespan - 1e-9


@given(grids())
def test_estimate_is_within_one_program_of_the_launch_order_schedule(grid):
    blocks, sequence, sms = grid
    durations = _concatenated(blocks, sequence)
    makespan = list_schedule(durations, sms, "launch").makespan
    estimate = estimate_makespan(blocks, sequence, sms)
    assert estimate <= fluid_bound(blocks, sequence, sms)
    assert abs(estimate - makespan) <= durations.max() + 1e-9


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300), st.integers(1, 40))
def test_estimate_is_the_list_schedule_for_non_decreasing_programs(durations, sms):
    """Causal rows: each wave frees its SMs in SM order, so the greedy schedule is round robin."""
    durations = np.sort(durations)
    expected = list_schedule(durations, sms, "launch").makespan
    assert estimate_makespan([durations], np.zeros(1, dtype=int), sms) == pytest.approx(expected)


def test_estimate_is_the_list_schedule_for_equal_programs_over_heads():
    """Dense: 16 heads of 130 equal programs on 132 SMs take ceil(2080 / 132) = 16 waves."""
    assert estimate_makespan([np.full(130, 2.0)], np.zeros(16, dtype=int), 132) == 16 * 2.0


def test_fluid_bound_caps_round_robin_where_heads_alias_with_the_sms():
    """16 heads of causal rows (durations 1 .. 128): 128 programs per head against 132 SMs makes round robin
    pile the long rows of successive heads on the same SMs; greedy does not, and the bound says so."""
    causal = np.arange(1.0, 129.0)
    heads = np.zeros(16, dtype=int)
    greedy = list_schedule(np.tile(causal, 16), 132, "launch").makespan
    assert round_robin([causal], heads, 132).makespan > 1.3 * greedy
    assert greedy <= estimate_makespan([causal], heads, 132) <= 1.1 * greedy


def test_grid_functions_need_a_positive_sm_count():
    with pytest.raises(ValueError, match="sms=0"):
        round_robin([np.ones(3)], np.zeros(1, dtype=int), 0)
    with pytest.raises(ValueError, match="sms=0"):
        fluid_bound([np.ones(3)], np.zeros(1, dtype=int), 0)
