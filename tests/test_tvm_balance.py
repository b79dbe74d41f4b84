"""The CPU kernels' work order: units dealt to threads longest first, bins of equal length padded with -1."""

import numpy as np
import pytest
import torch

from maskir.codegen.tvm.balance import PARTIAL_COST, fuse_backward, list_costs, makespan, work_order


def test_every_unit_with_work_appears_once_and_empty_units_are_left_out():
    costs = np.array([3.0, 0.0, 1.0, 2.0, 0.0, 5.0])
    order = work_order(costs, threads=2)
    assert sorted(order[order >= 0].tolist()) == [0, 2, 3, 5]
    assert len(order) % 2 == 0 and order.dtype == torch.int32


def test_bins_are_balanced_by_cost_not_by_count():
    costs = np.array([8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    bins = work_order(costs, threads=2).reshape(2, -1)
    loads = [costs[b[b >= 0].numpy()].sum() for b in bins]
    assert loads == [8.0, 8.0]  # the long unit alone in one bin, the eight short ones in the other


def test_one_thread_takes_the_units_longest_first():
    assert work_order(np.array([1.0, 3.0, 2.0]), threads=1).tolist() == [1, 2, 0]


def test_partial_pairs_cost_more_than_full_ones():
    start = torch.tensor([0, 2, 5, 0, 1, 1], dtype=torch.int32)  # two lists of two rows: 2, 3 | 1, 0 entries
    full = torch.tensor([2, 1, 0, 0], dtype=torch.int32)
    costs = list_costs(start, full, lists=2, n_tiles=2)
    assert costs.tolist() == [[2.0, 1.0 + 2 * PARTIAL_COST], [PARTIAL_COST, 0.0]]


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match="threads"):
        work_order(np.ones(3), threads=threads)


def test_makespan_is_the_largest_bin_of_the_deal():
    costs = np.array([8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert makespan(costs, threads=2) == 8.0
    assert makespan(costs, threads=1) == 16.0


def test_backward_fuses_when_its_units_balance_and_splits_when_they_are_too_few():
    tiles = np.ones((1, 4, 8))  # (batch, kv heads, kv tiles); dQ's units alike
    assert fuse_backward(tiles, tiles, tiles.sum(-1), threads=2)  # 4 units on 2 threads: 5 products beat 3 + 4
    one_head = np.ones((1, 1, 8))
    assert not fuse_backward(one_head, one_head, one_head.sum(-1), threads=2)  # one unit leaves a thread idle
