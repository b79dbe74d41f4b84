"""Predicates no rule covers are counted per 16 x 16 cell in one vectorised pass (``maskir.planner.cells``).

The tile classes read from the counts equal the per-tile exact evaluation, the plans equal the brute-force
mask (ragged canvases, cross attention, several block sizes), and the torch.compile'd chunk counts what the
eager chunk counts.
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


def test_compiled_chunks_count_what_eager_chunks_count(monkeypatch):
    predicate = Predicate(_documents_and_product)
    eager = _all_tile_kinds(predicate, 300, 250, 16)
    cells.chunk_counts.cache_clear()
    monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", 0)
    compiled = _all_tile_kinds(predicate, 300, 250, 16)
    cells.chunk_counts.cache_clear()
    np.testing.assert_array_equal(compiled, eager)


def test_only_the_chunks_the_asked_tiles_touch_are_evaluated(monkeypatch):
    """Causal & (a table lookup): the affine superset leaves the chunks above the diagonal unevaluated."""
    documents = torch.arange(4096) // 700
    predicate = Predicate(lambda b, h, q, kv: (kv <= q) & (documents[q] == documents[kv]))
    planned = plan(predicate, 4096, block_q=128, block_kv=128)
    assert str(planned.pattern).startswith("(Causal() & Predicate")
    seen = []
    ensure = cells.ChunkCounts.ensure

    def recording(self, chunks):
        seen.extend((int(i), int(j)) for i, j in chunks)
        return ensure(self, chunks)

    monkeypatch.setattr(cells.ChunkCounts, "ensure", recording)
    plan(predicate, 4096, block_q=128, block_kv=128)
    assert sorted(set(seen)) == [(0, 0), (1, 0), (1, 1)]  # 2 x 2 chunks of 2048: the lower triangle


def test_counts_are_dropped_after_each_plan():
    """A later plan sees the tensors the mask_mod reads as they are then."""
    limit = torch.tensor([40])
    predicate = Predicate(lambda b, h, q, kv: (q * kv) % 3 < limit[0] % 3 + 1)
    before = plan(predicate, 128, block_q=16, block_kv=16).stats.allowed_pairs
    limit[0] = 42  # % 3 == 0: fewer pairs
    after = plan(predicate, 128, block_q=16, block_kv=16).stats.allowed_pairs
    assert after < before
    assert cells.chunk_counts.cache_info().currsize == 0
