"""Interval bounds of a mask_mod per tile (``maskir.planner.bounds``) are sound: a tile they call
"cannot be true" has no allowed pair and one they call "cannot be false" no masked pair, for every
operation the proxies model; they decide the tiles of document and window masks, and give up (None) on
what they do not model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskir.canvas import Canvas
from maskir.ir import Predicate
from maskir.planner import bounds
from maskir.planner.bounds import tile_bounds
from maskir.reference import reference_mask

DOCUMENTS = torch.tensor([0] * 37 + [1] * 90 + [2] * 50 + [3] * 123)
KEEP = torch.tensor([True] * 200 + [False] * 60 + [True] * 40)
MODULI = torch.tensor([2, 5, 3])
LIMIT = torch.tensor(150)

MASK_MODS = {
    "documents": lambda b, h, q, kv: (kv <= q) & (DOCUMENTS[q] == DOCUMENTS[kv]),
    "documents_product": lambda b, h, q, kv: (kv <= q) & (DOCUMENTS[q] == DOCUMENTS[kv]) & ((q * kv) % 7 != 0),
    "padding_table": lambda b, h, q, kv: KEEP[kv] & ~KEEP[q] | (q // 50 == kv // 30),
    "window_abs_minmax": lambda b, h, q, kv: (abs(q - kv) <= 40) | (torch.minimum(q, kv) > torch.maximum(q, LIMIT)),
    "where_mod": lambda b, h, q, kv: torch.where(q > 100, (q - kv) % 9 < 4, (kv + 3) % -5 == -2),
    "negated_divisions": lambda b, h, q, kv: ((-q) // 7 != (-kv) // -11) ^ (200 - kv < q),
    "per_head": lambda b, h, q, kv: (q >= 20) & ((q * kv + h) % MODULI[h] != 0) & (LIMIT > kv - h),
}


def _tiles(n_q, n_kv, block):
    return np.divmod(np.arange(-(-n_q // block) * -(-n_kv // block)), -(-n_kv // block))


@pytest.mark.parametrize("name", list(MASK_MODS))
@pytest.mark.parametrize(("n_q", "n_kv", "block"), [(300, 300, 16), (300, 250, 32), (77, 290, 64)])
@pytest.mark.parametrize("head", [0, 2])
def test_bounds_never_contradict_the_brute_force_mask(name, n_q, n_kv, block, head):
    predicate = Predicate(MASK_MODS[name])
    rows, cols = _tiles(n_q, n_kv, block)
    bounded = tile_bounds(predicate, n_q, n_kv, block, block, rows, cols, head)
    assert bounded is not None
    may_true, may_false = bounded
    allowed = reference_mask(predicate, Canvas((n_q,)), Canvas((n_kv,)), head=head)
    for i, (r, c) in enumerate(zip(rows, cols)):
        tile = allowed[r * block : (r + 1) * block, c * block : (c + 1) * block]
        assert may_true[i] or not tile.any(), (r, c)
        assert may_false[i] or tile.all(), (r, c)


def test_bounds_decide_every_tile_of_a_document_mask_but_the_boundaries():
    predicate = Predicate(MASK_MODS["documents"])
    rows, cols = _tiles(300, 300, 16)
    may_true, may_false = tile_bounds(predicate, 300, 300, 16, 16, rows, cols)
    allowed = reference_mask(predicate, Canvas((300,)), Canvas((300,)))
    partial = [
        allowed[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].any()
        and not allowed[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].all()
        for r, c in zip(rows, cols)
    ]
    np.testing.assert_array_equal(may_true & may_false, partial)  # open exactly where the tile is PARTIAL


@pytest.mark.parametrize(
    "mask_mod",
    [
        lambda b, h, q, kv: (q.float() / 3.0) < kv,  # float math
        lambda b, h, q, kv: torch.ones(2, 2)[q % 2, kv % 2] > 0,  # a 2-D table
        lambda b, h, q, kv: q < kv if q > 3 else q >= kv,  # Python control flow on an index
        lambda b, h, q, kv: DOCUMENTS[q + 1000] == 0,  # an index outside the table
        lambda b, h, q, kv: q % kv == 0,  # % by an index
    ],
    ids=["float", "2d_table", "control_flow", "outside_table", "mod_by_index"],
)
def test_bounds_give_up_on_what_they_do_not_model(mask_mod):
    rows, cols = _tiles(64, 64, 16)
    assert tile_bounds(Predicate(mask_mod), 64, 64, 16, 16, rows, cols) is None


def test_tiles_traced_in_slices_give_what_one_trace_gives(monkeypatch):
    """Memory stays bounded for many tiles: slices of TILES_PER_TRACE tiles, the same answer."""
    predicate = Predicate(MASK_MODS["per_head"])
    rows, cols = _tiles(300, 250, 16)
    whole = tile_bounds(predicate, 300, 250, 16, 16, rows, cols, 2)
    monkeypatch.setattr(bounds, "TILES_PER_TRACE", 7)
    sliced = tile_bounds(predicate, 300, 250, 16, 16, rows, cols, 2)
    for a, b in zip(whole, sliced):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_range_min_max_of_a_table_equals_the_slices_min_and_max(dtype):
    """The sparse tables behind a lookup ``T[q]`` give each index range's min and max, for ranges of any
    width (one entry up to the whole table) and any start."""
    rng = np.random.default_rng(0)
    values = rng.integers(-50, 50, 1000).astype(dtype)
    lo = rng.integers(0, 1000, 500)
    hi = np.minimum(lo + rng.integers(0, 1000, 500) * rng.integers(0, 2, 500), 999)
    lo, hi = np.append(lo, [0, 999, 3]), np.append(hi, [999, 999, 3])
    low, high = bounds._range_min_max(values, lo, hi)
    np.testing.assert_array_equal(low, [values[a : b + 1].min() for a, b in zip(lo, hi)])
    np.testing.assert_array_equal(high, [values[a : b + 1].max() for a, b in zip(lo, hi)])
