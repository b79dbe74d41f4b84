"""Predicates on listed tiles (permuted and gathered layouts) are classified exactly (``maskir.planner.listed``).

Whatever proves a class (bounds on tile hulls, witnesses, the C counter over listed tokens, torch over gathered
tokens), every tile gets the class of its pairs in the brute-force mask; a mask_mod that cannot take 3-D index
tensors falls back to the per-tile loop; classes found once are not evaluated again in the same plan;
candidates whose tiles repeat those of smaller blocks (residue groups that fit one tile) are not priced twice;
and the two sides of a ``torch.where`` are split into parts without negating one another.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskir.canvas import Canvas
from maskir.ir import Causal, Not, Predicate, Strided, Window
from maskir.planner import cells, fallback, listed, native, plan
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.plan import Plan
from maskir.planner.single_part import candidate_plans
from maskir.planner.tiles import GatheredSide, IdentitySide, TiledSide
from maskir.planner.tiling import Tiling
from maskir.planner.union import disjoint, split_union
from maskir.reference import reference_mask

DOCUMENTS = torch.tensor([0] * 37 + [1] * 90 + [2] * 50 + [3] * 123)
MODULI = torch.tensor([2, 5, 3])

MASK_MODS = {
    "documents_product": lambda b, h, q, kv: (kv <= q) & (DOCUMENTS[q] == DOCUMENTS[kv]) & ((q * kv) % 7 != 0),
    "mixed_where": lambda b, h, q, kv: torch.where(q > kv, (q - kv) % 37 == 3, (kv * 7 + q) % 29 == 0),
    "per_head_product": lambda b, h, q, kv: (q >= 20) & ((q * kv + h) % MODULI[h] != 0),
    "sparse": lambda b, h, q, kv: (q * kv) % 257 == 1,
    "dense_band": lambda b, h, q, kv: (q - kv).abs() < 90,
}


def _sides(name: str, n: int, q_block: int, kv_block: int):
    """(q, kv) sides of one layout on an n-token canvas: permuted groups, patches with padding, gathered kv."""
    canvas = Canvas((n,))
    if name == "grouped":
        return (
            TiledSide(canvas, q_block, Tiling((n,), (7,), (q_block,), (0,))),
            TiledSide(canvas, kv_block, Tiling((n,), (7,), (kv_block,), (0,))),
        )
    if name == "groups_smaller_than_tiles":
        return (
            TiledSide(canvas, q_block, Tiling((n,), (37,), (q_block,), (0,))),
            TiledSide(canvas, kv_block, Tiling((n,), (37,), (kv_block,), (0,))),
        )
    if name == "offset_patches":
        return TiledSide(canvas, q_block, Tiling((n,), (1,), (q_block,), (5,))), IdentitySide(canvas, kv_block)
    tokens = np.flatnonzero(np.arange(n) % 3 != 1)
    return IdentitySide(canvas, q_block), GatheredSide(canvas, kv_block, tokens, "gathered")


def _brute_force(predicate, q, kv, head: int) -> np.ndarray:
    """Class of every (q tile, kv tile) from the whole mask: EMPTY if no pair is allowed, FULL if all are."""
    allowed = reference_mask(predicate, q.canvas, kv.canvas, head=head)
    kinds = np.empty((q.n_tiles, kv.n_tiles), dtype=np.int8)
    q_tokens, kv_tokens = q.token_matrix(np.arange(q.n_tiles)), kv.token_matrix(np.arange(kv.n_tiles))
    for r in range(q.n_tiles):
        for c in range(kv.n_tiles):
            tile = allowed[np.ix_(q_tokens[r][q_tokens[r] >= 0], kv_tokens[c][kv_tokens[c] >= 0])]
            kinds[r, c] = EMPTY if not tile.any() else FULL if tile.all() else PARTIAL
    return kinds


@pytest.fixture
def every_shortcut(monkeypatch):
    """Witnesses and the C counter at any size (the thresholds keep them for large grids)."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 0)
    monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", 0)
    cells.chunk_counts.cache_clear()
    yield
    cells.chunk_counts.cache_clear()


@pytest.mark.parametrize("layout", ["grouped", "groups_smaller_than_tiles", "offset_patches", "gathered"])
@pytest.mark.parametrize("name", list(MASK_MODS))
@pytest.mark.parametrize("native_counter", [True, False], ids=["c", "torch"])
def test_listed_tiles_get_the_brute_force_classes(layout, name, native_counter, every_shortcut, monkeypatch):
    monkeypatch.setattr(cells, "USE_NATIVE", native_counter)
    head = 2 if name == "per_head_product" else 0
    predicate = Predicate(MASK_MODS[name])
    q, kv = _sides(layout, 300, 64, 32)
    rows, cols = np.divmod(np.arange(q.n_tiles * kv.n_tiles), kv.n_tiles)
    kinds = listed.tile_kinds(predicate, q, kv, rows, cols, head)
    np.testing.assert_array_equal(kinds.reshape(q.n_tiles, kv.n_tiles), _brute_force(predicate, q, kv, head))
    assert (cells.chunk_counts(predicate, 300, 300, head).c_counter is not None) == native_counter


def test_a_mask_mod_for_two_dimensional_grids_only_is_evaluated_tile_by_tile(every_shortcut, monkeypatch):
    def flat_only(b, h, q, kv):
        assert q.ndim <= 2, "written for [n, 1] x [1, m] grids"
        return (q * kv) % 5 != 0

    predicate = Predicate(flat_only)
    q, kv = _sides("grouped", 200, 64, 32)
    rows, cols = np.divmod(np.arange(q.n_tiles * kv.n_tiles), kv.n_tiles)
    monkeypatch.setattr(cells, "USE_NATIVE", False)  # the torch counter, which calls it on 3-D tensors
    assert listed.tile_kinds(predicate, q, kv, rows, cols) is None
    kinds = fallback.exact_kinds(predicate, q, kv, rows, cols)
    np.testing.assert_array_equal(kinds.reshape(q.n_tiles, kv.n_tiles), _brute_force(predicate, q, kv, 0))


def test_classes_found_once_are_not_evaluated_again_in_a_plan(every_shortcut):
    calls = []

    def counted(b, h, q, kv):
        calls.append(q.shape)
        return (q * kv) % 5 != 0

    predicate = Predicate(counted)
    q, kv = _sides("grouped", 200, 64, 32)
    rows, cols = np.divmod(np.arange(q.n_tiles * kv.n_tiles), kv.n_tiles)
    first = listed.tile_kinds(predicate, q, kv, rows, cols)
    calls.clear()
    np.testing.assert_array_equal(listed.tile_kinds(predicate, q, kv, rows[::3], cols[::3]), first[::3])
    assert not calls


@pytest.mark.parametrize("n", [300, 251])
@pytest.mark.parametrize("name", ["mixed_where", "documents_product"])
def test_plans_on_permuted_layouts_equal_the_mask_and_the_per_tile_path(n, name, monkeypatch):
    predicate = Predicate(MASK_MODS[name])
    canvas = Canvas((n,))
    pattern = predicate & Strided(7, offset=3) if name == "documents_product" else predicate
    for layout in ("grouped", "tiled"):
        listed_plan = plan(pattern, canvas, layout=layout, block_q=64, block_kv=32)
        assert listed_plan.parts[0].layout.name != "identity"
        np.testing.assert_array_equal(listed_plan.to_mask(0), reference_mask(pattern, canvas))
        with monkeypatch.context() as forced:
            forced.setattr(fallback, "USE_CELLS", False)
            evaluated = plan(pattern, canvas, layout=layout, block_q=64, block_kv=32)
        assert listed_plan.parts[0].tables[0].runs.equals(evaluated.parts[0].tables[0].runs)


def test_counting_listed_tiles_in_c_skips_padding():
    predicate = Predicate(MASK_MODS["mixed_where"])
    counter = native.counter(predicate, 0, 300, 300)
    q, kv = _sides("groups_smaller_than_tiles", 300, 64, 32)
    jobs = np.array([(r, c) for r in range(q.n_tiles) for c in range(kv.n_tiles)])
    hits = counter.count_tiles(jobs, q.packed, q.count, kv.packed, kv.count)
    allowed = reference_mask(predicate, Canvas((300,)))
    expected = [allowed[np.ix_(q.packed[r, : q.count[r]], kv.packed[c, : kv.count[c]])].sum() for r, c in jobs]
    np.testing.assert_array_equal(hits, expected)


def test_candidates_whose_groups_fit_one_tile_are_priced_at_the_smallest_blocks_only():
    """Strided(997) over 4096 tokens: residue groups of at most 5 tokens, one tile each at every block."""
    canvas = Canvas((4096,))
    candidates = list(candidate_plans(Strided(997), canvas, canvas, 1, None, None, "grouped"))
    assert [(c.block_q, c.block_kv) for c in candidates] == [(64, 32)]
    wide = list(candidate_plans(Strided(7), canvas, canvas, 1, None, None, "grouped"))  # groups of 586 tokens
    assert len(wide) == 6


def test_where_terms_are_split_without_negating_the_other_side():
    """``torch.where(c, x, y)`` gives the terms c & x and ~c & y: disjoint, so a split's second part is the
    other term itself (no ~first to evaluate), and the parts still cover the pattern once."""
    below, above = Causal(-1) & Strided(97, offset=3), Not(Causal(-1)) & Window(0, 40)
    assert disjoint(below, above) and disjoint(above, below)
    assert not disjoint(Causal(-1) & Strided(97), Window(0, 40))
    canvas = Canvas((1024,))
    best = plan(below | above, canvas, block_q=64, block_kv=32)
    splits = split_union(best, lambda p: p.tile_counts.computed_pairs)
    assert splits
    for split in splits:
        first, second = (part.pattern for part in split.parts)
        assert {first, second} == {below, above}
        masks = [Plan(split.pattern, canvas, canvas, 1, 64, 32, (part,)).to_mask(0) for part in split.parts]
        assert not (masks[0] & masks[1]).any()
        np.testing.assert_array_equal(masks[0] | masks[1], reference_mask(below | above, canvas))
