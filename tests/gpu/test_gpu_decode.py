"""maskir.decode on a CUDA GPU at real sizes: bf16, 32 query heads over 8 kv heads, D=128, an 8K-32K cache.

Against float64 attention on absolute positions (``tests/test_decode.reference_decode``), with
``tests/test_decode``'s bf16 tolerance; a paged cache with shuffled pages must equal the contiguous one.
"""

from __future__ import annotations

import pytest
import torch

import maskir
from maskir import Causal, Full, Segments, Sink, Window
from tests.test_decode import TOL, paged, reference_decode

pytestmark = pytest.mark.gpu

PATTERNS = {
    "full": Full(),
    "causal": Causal(),
    "window_sinks": (Window(4095, 0) & Causal()) | Sink(4),
}


def _inputs(batch, n_q, slots, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 32, n_q, 128, generator=g).to(torch.bfloat16)
    k = torch.randn(batch, 8, slots, 128, generator=g).to(torch.bfloat16)
    v = torch.randn(batch, 8, slots, 128, generator=g).to(torch.bfloat16)
    return q, k, v


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("n_q", [1, 4])
def test_decode_matches_float64_on_gpu(name, n_q):
    lens = [32768, 9001]
    q, k, v = _inputs(2, n_q, max(lens))
    out = maskir.decode(q.cuda(), k.cuda(), v.cuda(), PATTERNS[name], kv_lens=lens).cpu()
    want, _ = reference_decode(q, k, v, PATTERNS[name], lens, [n - n_q for n in lens])
    assert (out.double() - want).abs().max().item() <= TOL[torch.bfloat16]


def test_paged_documents_equal_contiguous_on_gpu():
    lens = [8192, 5000]
    q, k, v = _inputs(2, 1, 8192, seed=1)
    segments = (torch.arange(8192) // 1024).repeat(2, 1).cuda()
    k_pool, table = paged(k, lens, 16)
    v_pool, _ = paged(v, lens, 16)
    pattern = Segments() & Causal()
    contiguous = maskir.decode(q.cuda(), k.cuda(), v.cuda(), pattern, kv_lens=lens, segments=segments)
    pages = maskir.decode(
        q.cuda(), k_pool.cuda(), v_pool.cuda(), pattern, kv_lens=lens, block_table=table.cuda(), segments=segments
    )
    torch.testing.assert_close(pages, contiguous, rtol=0, atol=0)
