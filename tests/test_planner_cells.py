"""Predicates no rule covers are counted per 16 x 16 cell in one vectorised pass (``maskir.planner.cells``).

The tile classes read from the counts equal the per-tile exact evaluation, the plans equal the brute-force
mask (ragged canvases, cross attention, several block sizes), and eager and torch.compile'd chunks (interior
ones and ragged edge ones) give the brute-force tile classes, also for per-head masks with empty rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskir.canvas import Canvas
from maskir.ir import Predicate
from maskir.planner import cells, fallback, plan
from maskir.reference import reference_mask

DOCUMENTS = torch.tensor([0] * 37 + [1] * 90 + [2] * 50 + [3] * 123)


def _documents_and_product(b, h, q, kv):
    return (kv <= q) & (DOCUMENTS[q] == DOCUMENTS[kv]) & ((q * kv) % 7 != 0)


def _checkerboard(b, h, q, kv):
    return (q // 5 + kv // 3) % 2 == 0


@pytest.mark.parametrize("mask_mod", [_documents_and_product, _checkerboard], ids=["documents", "checkerboard"])
@pytest.mark.parametrize(("n_q", "n_kv"), [(300, 300), (200, 150), (77, 290)])
@pytest.mark.parametrize("blocks", [(16, 16), (64, 32), (128, 128)])
def test_counted_tiles_equal_per_tile_evaluation_and_the_mask(mask_mod, n_q, n_kv, blocks, monkeypatch):
    predicate = Predicate(mask_mod)
    canvas, kv_canvas = Canvas((n_q,)), Canvas((n_kv,))
    counted = plan(predicate, canvas, kv_canvas, block_q=blocks[0], block_kv=blocks[1])
    np.testing.assert_array_equal(counted.to_mask(0), reference_mask(predicate, canvas, kv_canvas))
    monkeypatch.setattr(fallback, "USE_CELLS", False)  # the per-tile path
    evaluated = plan(predicate, canvas, kv_canvas, block_q=blocks[0], block_kv=blocks[1])
    assert counted.parts[0].tables[0].runs.equals(evaluated.parts[0].tables[0].runs)


def _all_tile_kinds(predicate, n_q, n_kv, block):
    rows, cols = np.divmod(np.arange(-(-n_q // block) * -(-n_kv // block)), -(-n_kv // block))
    return cells.tile_kinds(predicate, n_q, n_kv, block, block, rows, cols)


MODULI = torch.tensor([2, 5, 3])


def _per_head_product_with_empty_rows(b, h, q, kv):
    """Rows q < 20 fully masked, a product of indices, and a per-head modulus read from a captured table."""
    return (q >= 20) & (kv <= q + 40) & ((q * kv + h) % MODULI[h] != 0)


def _brute_force_kinds(predicate, n_q, n_kv, block, head):
    """Tile classes from the whole N x N mask: EMPTY if no pair is allowed, FULL if all are, else PARTIAL."""
    allowed = reference_mask(predicate, Canvas((n_q,)), Canvas((n_kv,)), head=head)
    kinds = []
    for r in range(-(-n_q // block)):
        for c in range(-(-n_kv // block)):
            tile = allowed[r * block : (r + 1) * block, c * block : (c + 1) * block]
            kinds.append(fallback.EMPTY if not tile.any() else fallback.FULL if tile.all() else fallback.PARTIAL)
    return np.array(kinds, dtype=np.int8)


@pytest.mark.parametrize(
    ("mask_mod", "head"),
    [(_documents_and_product, 0), (_per_head_product_with_empty_rows, 0), (_per_head_product_with_empty_rows, 2)],
    ids=["documents", "per_head_0", "per_head_2"],
)
def test_compiled_and_eager_chunks_give_the_brute_force_tile_classes(mask_mod, head, monkeypatch):
    """Chunks of 128 on a 300 x 250 grid: interior chunks (no clamping) and ragged edge chunks, eager and
    torch.compile'd (dynamic offsets: one compiled loop for all interior chunks); torch's counters, not C."""
    monkeypatch.setattr(cells, "CHUNK", 128)
    monkeypatch.setattr(cells, "USE_NATIVE", False)
    predicate = Predicate(mask_mod)
    expected = _brute_force_kinds(predicate, 300, 250, 16, head)
    rows, cols = np.divmod(np.arange(expected.size), -(-250 // 16))
    for threshold in (1 << 62, 0):  # eager, then compiled
        monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", threshold)
        kinds = cells.tile_kinds(predicate, 300, 250, 16, 16, rows, cols, head)
        cells.chunk_counts.cache_clear()
        np.testing.assert_array_equal(kinds, expected)
    assert {fallback.EMPTY, fallback.PARTIAL} <= set(expected.tolist())  # the rows q < 20 and the rest


def test_dense_rows_are_counted_from_kv_zero_and_share_calls(monkeypatch):
    """Compiled: a row whose open chunks fill at least half of the row up to its last one is one call from kv 0,
    consecutive rows of one width share a call up to CALL_CELLS cells; sparse rows and edge chunks are a call
    per chunk, and so is every chunk uncompiled or when the dense rows hold fewer than FROM_ZERO_ABOVE_PAIRS
    open pairs."""
    monkeypatch.setattr(cells, "CALL_CELLS", 2 * (512 // cells.CELL) ** 2 * 3)  # two rows of three chunks
    monkeypatch.setattr(cells, "FROM_ZERO_ABOVE_PAIRS", 11 * 512**2)  # the dense rows' 11 open chunks
    counts = cells.ChunkCounts(Predicate(_checkerboard), 5 * 512 + 100, 4 * 512, 0)
    dense = [(i, j) for i in range(3) for j in range(3)] + [(3, 1), (3, 2)]  # row 3: two of three
    sparse = [(4, 3), (5, 0)]  # row 4: one of four; row 5 reaches past the canvas
    chunks, rows = counts._calls(dense + sparse, merged=True)
    assert sorted(rows) == [(0, 2, 0, 3), (2, 4, 0, 3)]
    assert sorted(chunks) == [(4, 5, 3, 4), (5, 6, 0, 1)]
    one_by_one = (sorted((i, i + 1, j, j + 1) for i, j in dense + sparse), [])
    chunks, rows = counts._calls(dense + sparse, merged=False)
    assert (sorted(chunks), rows) == one_by_one
    monkeypatch.setattr(cells, "FROM_ZERO_ABOVE_PAIRS", 11 * 512**2 + 1)  # fewer open pairs than that
    chunks, rows = counts._calls(dense + sparse, merged=True)
    assert (sorted(chunks), rows) == one_by_one


@pytest.mark.parametrize("head", [0, 2])
def test_merged_calls_give_the_brute_force_tile_classes(head, monkeypatch):
    """Chunks of 128 on a 600 x 520 grid of a per-head mask bounds leave open almost everywhere: merged
    rectangles from kv 0 (two rows each at this CALL_CELLS), whose counts are cut into chunks, and ragged edge
    chunks (torch's compiled counters, not C)."""
    monkeypatch.setattr(cells, "CHUNK", 128)
    monkeypatch.setattr(cells, "USE_NATIVE", False)
    monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", 0)
    monkeypatch.setattr(cells, "CALL_CELLS", 2 * (128 // cells.CELL) ** 2 * 4)
    monkeypatch.setattr(cells, "FROM_ZERO_ABOVE_PAIRS", 0)
    predicate = Predicate(lambda b, h, q, kv: ((q * kv + h) % MODULI[h] != 0) & (kv < 500) | (q < 16))
    expected = _brute_force_kinds(predicate, 600, 520, 16, head)
    rows, cols = np.divmod(np.arange(expected.size), -(-520 // 16))
    rows_from_zero = []
    calls = cells.ChunkCounts._calls

    def recording(self, *args):
        chunks, rows = calls(self, *args)
        rows_from_zero.extend(rows)
        return chunks, rows

    monkeypatch.setattr(cells.ChunkCounts, "_calls", recording)
    kinds = cells.tile_kinds(predicate, 600, 520, 16, 16, rows, cols, head)
    cells.chunk_counts.cache_clear()
    np.testing.assert_array_equal(kinds, expected)
    assert (0, 2, 0, 4) in rows_from_zero and (2, 4, 0, 4) in rows_from_zero  # rows 0-3, two per call
    assert set(expected.tolist()) == {fallback.EMPTY, fallback.FULL, fallback.PARTIAL}


def test_only_the_chunks_of_tiles_the_bounds_leave_open_are_evaluated(monkeypatch):
    """Causal & (a table lookup): the affine superset leaves the tiles above the diagonal out, interval
    bounds (``bounds``) prove the tiles inside one document FULL and those across documents EMPTY; only
    the chunks holding the other (PARTIAL) tiles are evaluated (no witness pass here)."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 1 << 62)
    documents = torch.arange(4096) // 700
    predicate = Predicate(lambda b, h, q, kv: (kv <= q) & (documents[q] == documents[kv]))
    planned = plan(predicate, 4096, block_q=128, block_kv=128)
    assert str(planned.pattern).startswith("(Causal() & Predicate")
    seen = []
    ensure = cells.ChunkCounts.ensure

    def recording(self, flat):
        seen.extend(divmod(int(f), self.kv_chunks) for f in flat)
        return ensure(self, flat)

    monkeypatch.setattr(cells.ChunkCounts, "ensure", recording)
    plan(predicate, 4096, block_q=128, block_kv=128)
    kinds = _brute_force_kinds(predicate, 4096, 4096, 128, 0).reshape(32, 32)
    partial = {(r * 128 // cells.CHUNK, c * 128 // cells.CHUNK) for r, c in zip(*np.nonzero(kinds == fallback.PARTIAL))}
    assert set(seen) == partial
    assert len(partial) < (4096 // cells.CHUNK) ** 2 // 2  # fewer than the causal superset's chunks


def test_counts_are_dropped_after_each_plan():
    """A later plan sees the tensors the mask_mod reads as they are then."""
    limit = torch.tensor([40])
    predicate = Predicate(lambda b, h, q, kv: (q * kv) % 3 < limit[0] % 3 + 1)
    before = plan(predicate, 128, block_q=16, block_kv=16).stats.allowed_pairs
    limit[0] = 42  # % 3 == 0: fewer pairs
    after = plan(predicate, 128, block_q=16, block_kv=16).stats.allowed_pairs
    assert after < before
    assert cells.chunk_counts.cache_info().currsize == 0


def test_bounds_that_decide_no_tile_are_not_traced_again_for_other_block_sizes(monkeypatch):
    """``(q * kv) % 7`` is opaque to interval bounds: once a spread sample of the first block size's tiles
    is left all open, the full trace and the other block sizes' traces are skipped, and the classes still
    equal the brute-force ones."""
    traced = []
    tile_bounds = cells.tile_bounds

    def recording(predicate, n_q, n_kv, q_block, kv_block, *rest):
        traced.append((q_block, kv_block))
        return tile_bounds(predicate, n_q, n_kv, q_block, kv_block, *rest)

    monkeypatch.setattr(cells, "tile_bounds", recording)
    predicate = Predicate(lambda b, h, q, kv: (q * kv) % 7 != 0)
    for block in (16, 32, 64):
        np.testing.assert_array_equal(
            _all_tile_kinds(predicate, 600, 600, block), _brute_force_kinds(predicate, 600, 600, block, 0)
        )
    assert traced == [(16, 16)]  # the sample of 38 x 38 tiles only
    cells.chunk_counts.cache_clear()


def test_bounds_that_decide_tiles_keep_being_traced():
    """A band decides most tiles at every block size, so every block size keeps its trace."""
    predicate = Predicate(lambda b, h, q, kv: (kv <= q) & (q - kv < 40))
    for block in (16, 32, 64):
        np.testing.assert_array_equal(
            _all_tile_kinds(predicate, 256, 256, block), _brute_force_kinds(predicate, 256, 256, block, 0)
        )
        assert cells.chunk_counts(predicate, 256, 256, 0).bounds_decide
    cells.chunk_counts.cache_clear()


@pytest.mark.parametrize(
    ("mask_mod", "head"),
    [(_documents_and_product, 0), (_checkerboard, 0), (_per_head_product_with_empty_rows, 1)],
    ids=["documents", "checkerboard", "per_head_1"],
)
@pytest.mark.parametrize(("n_q", "n_kv", "block"), [(300, 250, 16), (300, 300, 64), (77, 290, 32)])
def test_witness_pass_gives_the_brute_force_tile_classes(mask_mod, head, n_q, n_kv, block, monkeypatch):
    """With the witness pass on for every size, tiles whose sample holds an allowed and a masked pair are
    PARTIAL without counting, the rest (uniform samples, ragged edge tiles) are counted: the classes equal the
    brute-force ones."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 0)
    predicate = Predicate(mask_mod)
    expected = _brute_force_kinds(predicate, n_q, n_kv, block, head)
    rows, cols = np.divmod(np.arange(expected.size), -(-n_kv // block))
    np.testing.assert_array_equal(cells.tile_kinds(predicate, n_q, n_kv, block, block, rows, cols, head), expected)
    cells.chunk_counts.cache_clear()


def test_tiles_with_two_witnesses_are_not_counted(monkeypatch):
    """``(q * kv) % 7``: almost every 64 x 64 tile's 8 x 8 sample holds both kinds of pair, so only the chunks of
    the few others are counted; a mask_mod with rare allowed pairs leaves nearly every sample all masked, so
    every chunk is counted."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 0)
    counted = []
    ensure = cells.ChunkCounts.ensure

    def recording(self, flat):
        counted.extend(int(f) for f in flat)
        return ensure(self, flat)

    monkeypatch.setattr(cells.ChunkCounts, "ensure", recording)
    product = Predicate(lambda b, h, q, kv: (q * kv) % 7 != 0)
    np.testing.assert_array_equal(
        _all_tile_kinds(product, 2048, 2048, 64), _brute_force_kinds(product, 2048, 2048, 64, 0)
    )
    assert len(counted) <= 2  # of 16 chunks
    counted.clear()
    cells.chunk_counts.cache_clear()
    rare = Predicate(lambda b, h, q, kv: (q * kv) % 65537 == 1)
    np.testing.assert_array_equal(_all_tile_kinds(rare, 2048, 2048, 64), _brute_force_kinds(rare, 2048, 2048, 64, 0))
    assert len(counted) == 16
    cells.chunk_counts.cache_clear()


def test_a_mask_mod_for_two_dimensional_grids_only_skips_the_witness_pass(monkeypatch):
    """A mask_mod that indexes its arguments as 2-D grids fails on the witness pass's 3-D index tensors: the
    pass decides nothing and every tile is counted."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 0)

    def two_dimensional(b, h, q, kv):
        assert q.dim() == 2, "written for [q, 1] x [1, kv] grids"
        return (q * kv) % 7 != 0

    predicate = Predicate(two_dimensional)
    np.testing.assert_array_equal(
        _all_tile_kinds(predicate, 600, 600, 32), _brute_force_kinds(predicate, 600, 600, 32, 0)
    )
    cells.chunk_counts.cache_clear()


@pytest.mark.parametrize(
    "mask_mod", [_documents_and_product, lambda b, h, q, kv: (q * kv) % 7 != 0], ids=["documents", "product"]
)
def test_larger_blocks_reuse_the_witnesses_of_smaller_ones(mask_mod, monkeypatch):
    """Within one plan, a tile of 32 x 32 or 64 x 32 whose 16 x 16 tiles saw an allowed and a masked pair
    between them is PARTIAL without a sample of its own (ragged 300 x 300 grid); the classes equal the
    brute-force ones at every block size, and ``(q * kv) % 7`` is sampled at 16 x 16 only."""
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 0)
    sampled = []
    witnesses = cells._witnesses

    def recording(counts, q_block, kv_block, *rest):
        sampled.append((q_block, kv_block))
        return witnesses(counts, q_block, kv_block, *rest)

    monkeypatch.setattr(cells, "_witnesses", recording)
    predicate = Predicate(mask_mod)
    for q_block, kv_block in ((16, 16), (32, 32), (64, 32)):
        rows, cols = np.divmod(np.arange(-(-300 // q_block) * -(-300 // kv_block)), -(-300 // kv_block))
        allowed = reference_mask(predicate, Canvas((300,)), Canvas((300,)))
        expected = [
            allowed[r * q_block : (r + 1) * q_block, c * kv_block : (c + 1) * kv_block] for r, c in zip(rows, cols)
        ]
        expected = [fallback.EMPTY if not t.any() else fallback.FULL if t.all() else fallback.PARTIAL for t in expected]
        kinds = cells.tile_kinds(predicate, 300, 300, q_block, kv_block, rows, cols)
        np.testing.assert_array_equal(kinds, expected)
    if mask_mod is not _documents_and_product:
        assert {blocks for blocks in sampled} == {(16, 16)}
    cells.chunk_counts.cache_clear()


@pytest.mark.parametrize("head", [0, 2])
def test_open_tiles_scattered_over_chunks_are_counted_tile_by_tile(head, monkeypatch):
    """When the open tiles hold a small share of their chunks' pairs, the C counter counts those tiles alone
    (ragged edge tiles included) and no chunk is counted; the classes are the brute-force ones."""
    monkeypatch.setattr(cells, "CHUNK", 128)
    monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", 0)
    monkeypatch.setattr(cells, "SPARSE_OPEN", 0)  # any share of the chunks is small enough
    cells.chunk_counts.cache_clear()
    predicate = Predicate(_per_head_product_with_empty_rows)
    expected = _brute_force_kinds(predicate, 300, 250, 16, head)
    rows, cols = np.divmod(np.arange(expected.size), -(-250 // 16))
    kinds = cells.tile_kinds(predicate, 300, 250, 16, 16, rows, cols, head)
    np.testing.assert_array_equal(kinds, expected)
    assert not cells.chunk_counts(predicate, 300, 250, head).slot
    cells.chunk_counts.cache_clear()
