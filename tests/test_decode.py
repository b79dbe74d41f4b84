"""The decode path (``maskir.decode``) against float64 attention on absolute positions.

Queries of batch b sit at absolute positions q_offsets[b] + i and see cache positions < kv_lens[b] that the
pattern allows there; the reference evaluates the pattern with ``maskir.reference.evaluate_pairs`` on those
positions and a score_mod on the same absolute indices. Kernels run in Triton's interpreter (tiny shapes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maskir
from maskir import Canvas, Causal, Full, Global, PerHead, Routing, Segments, Sink, SlidingWindow, Window
from maskir.reference import evaluate_pairs
from tests.kernel_cases import alibi, softcap

TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}


def reference_decode(q, k, v, pattern, lens, offsets, *, score_mod=None, segments=None):
    """float64 out [B, H, N_q, D] and lse over a contiguous cache [B, Hkv, S, D] (position p at row p)."""
    batch, heads, n_q, dim = q.shape
    group = heads // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float64)
    for b in range(batch):
        positions = max(lens[b], offsets[b] + n_q)
        canvas = Canvas((positions,))
        q_pos = offsets[b] + np.arange(n_q)
        kv_pos = np.arange(lens[b])
        ids = None if segments is None else segments[:, :positions]
        for h in range(heads):
            allowed = torch.as_tensor(
                evaluate_pairs(pattern, canvas, canvas, q_pos, kv_pos, batch=b, head=h, segments=ids)
            )
            kh = k[b, h // group, : lens[b]].double()
            s = q[b, h].double() @ kh.T * dim**-0.5
            if score_mod is not None:
                s = score_mod(
                    s,
                    torch.tensor(b),
                    torch.tensor(h),
                    torch.as_tensor(q_pos)[:, None],
                    torch.as_tensor(kv_pos)[None, :],
                )
            s = s.masked_fill(~allowed, float("-inf"))
            row_lse = torch.logsumexp(s, -1)
            p = torch.exp(s - torch.where(torch.isinf(row_lse), 0.0, row_lse)[:, None])
            out[b, h] = p @ v[b, h // group, : lens[b]].double()
            lse[b, h] = row_lse
    return out, lse


def check_close(got, want, dtype):
    out, lse = got
    ref_out, ref_lse = want
    assert (out.double() - ref_out).abs().max().item() <= TOL[dtype]
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() <= TOL[dtype]


def tensors(batch, heads, kv_heads, n_q, slots, dim=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, slots, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, slots, dim, generator=g).to(dtype)
    return q, k, v


SWA_SINKS = (Window(255, 0) & Causal()) | Sink(4)
CASES = {
    # name: (pattern, n_q, heads, kv_heads, kv_lens, score_mod, dtype)
    "causal_q1_gqa1": (Causal(), 1, 2, 2, [300, 171], None, torch.float32),
    "swa_sinks_q3_gqa8": (SWA_SINKS, 3, 8, 1, [1000, 777], None, torch.float32),
    "full_q16_gqa4": (Full(), 16, 4, 1, [200], None, torch.float32),
    "causal_q16_gqa1_bf16": (Causal(), 16, 2, 2, [333], None, torch.bfloat16),
    "softcap_q1_gqa4": (Causal(), 1, 4, 1, [2500], softcap, torch.float32),
    "alibi_q3_gqa2": (Causal(), 3, 4, 2, [289, 130], alibi, torch.float32),
    "perhead_q1": (PerHead([Causal(), SlidingWindow(64, causal=True)]), 1, 4, 2, [500], None, torch.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decode_equals_float64_reference(name):
    pattern, n_q, heads, kv_heads, lens, score_mod, dtype = CASES[name]
    q, k, v = tensors(len(lens), heads, kv_heads, n_q, max(lens), dtype=dtype)
    got = maskir.decode(q, k, v, pattern, kv_lens=lens, score_mod=score_mod, return_lse=True)
    offsets = [n - n_q for n in lens]
    check_close(got, reference_decode(q, k, v, pattern, lens, offsets, score_mod=score_mod), dtype)


def test_decode_documents_see_only_their_segment():
    lens = [700, 450]
    q, k, v = tensors(2, 4, 1, 3, 700)
    segments = torch.tensor([[i * 3 // 700 for i in range(700)], [i // 100 for i in range(700)]])
    pattern = Segments() & Causal()
    got = maskir.decode(q, k, v, pattern, kv_lens=lens, segments=segments, return_lse=True)
    want = reference_decode(q, k, v, pattern, lens, [n - 3 for n in lens], segments=segments)
    check_close(got, want, torch.float32)


def test_decode_queries_straddling_q_tiles_and_given_offsets():
    """Queries at 286..288 span two of the plan's 16-position q tiles; offsets need not be kv_len - n_q."""
    lens, offsets = [289, 300], [286, 150]
    q, k, v = tensors(2, 2, 2, 3, 300)
    got = maskir.decode(q, k, v, SWA_SINKS, kv_lens=lens, q_offsets=offsets, return_lse=True)
    check_close(got, reference_decode(q, k, v, SWA_SINKS, lens, offsets), torch.float32)


@pytest.mark.parametrize("splits", [1, 3, 50])
def test_decode_split_count_does_not_change_the_result(splits):
    lens = [777]
    q, k, v = tensors(1, 4, 2, 1, 777)
    got = maskir.decode(q, k, v, Causal(), kv_lens=lens, num_splits=splits, return_lse=True)
    check_close(got, reference_decode(q, k, v, Causal(), lens, [776]), torch.float32)


def paged(k, lens, page_size, seed=0):
    """A shuffled page pool [pages, page_size, Hkv, D] and block table holding contiguous cache k [B, Hkv, S, D]."""
    batch, kv_heads, _, dim = k.shape
    max_pages = -(-max(lens) // page_size)
    order = torch.randperm(batch * max_pages, generator=torch.Generator().manual_seed(seed))
    table = order.view(batch, max_pages).to(torch.int32)
    pool = torch.zeros(batch * max_pages, page_size, kv_heads, dim, dtype=k.dtype)
    for b in range(batch):
        for j in range(max_pages):
            rows = k[b, :, j * page_size : (j + 1) * page_size].transpose(0, 1)
            pool[table[b, j], : rows.shape[0]] = rows
    return pool, table


def test_paged_cache_with_shuffled_pages_equals_contiguous_cache():
    lens = [530, 97]
    q, k, v = tensors(2, 4, 2, 3, 544)
    k_pool, table = paged(k, lens, 16)
    v_pool, _ = paged(v, lens, 16)
    pattern = SWA_SINKS
    contiguous = maskir.decode(q, k, v, pattern, kv_lens=lens, return_lse=True)
    paged_out = maskir.decode(q, k_pool, v_pool, pattern, kv_lens=lens, block_table=table, return_lse=True)
    torch.testing.assert_close(paged_out, contiguous, rtol=0, atol=1e-6)
    check_close(paged_out, reference_decode(q, k, v, pattern, lens, [n - 3 for n in lens]), torch.float32)


def test_ring_buffer_window_equals_full_cache_window():
    """A cache of the last 96 positions (position p at slot p % 96) gives what the full cache gives under a
    window that needs no older key: 3 queries with a window of 90 reach back 92 positions."""
    lens, ring = [1000, 461], 96
    pattern = Window(90, 0) & Causal()
    q, k, v = tensors(2, 4, 2, 3, 1000)
    full = maskir.decode(q, k, v, pattern, kv_lens=lens, return_lse=True)
    k_ring = torch.zeros(2, 2, ring, 32)
    v_ring = torch.zeros(2, 2, ring, 32)
    for b, n in enumerate(lens):
        kept = torch.arange(n - ring, n)
        k_ring[b][:, kept % ring] = k[b][:, kept]
        v_ring[b][:, kept % ring] = v[b][:, kept]
    got = maskir.decode(q, k_ring, v_ring, pattern, kv_lens=lens, ring=True, return_lse=True)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-6)
    k_pool, table = paged(k_ring, [ring, ring], 16)
    v_pool, _ = paged(v_ring, [ring, ring], 16)
    paged_ring = maskir.decode(q, k_pool, v_pool, pattern, kv_lens=lens, block_table=table, ring=True)
    torch.testing.assert_close(paged_ring, full[0], rtol=0, atol=1e-6)


def test_ring_buffer_refuses_a_pattern_that_needs_evicted_keys():
    q, k, v = tensors(1, 2, 2, 1, 96)
    with pytest.raises(ValueError, match="no longer holds key 0 "):
        maskir.decode(q, k, v, (Window(50, 0) & Causal()) | Sink(3), kv_lens=[500], ring=True)
    with pytest.raises(ValueError, match="cannot hold what"):
        maskir.decode(
            q, k, v, Segments() & Causal(), kv_lens=[500], ring=True, segments=torch.zeros(1, 500, dtype=torch.int32)
        )


def test_decode_plans_are_cached_per_kv_bucket():
    attn = maskir.compile_decode("Causal()", heads=2, head_dim=32, dtype=torch.float32, device="cpu")
    q, k, v = tensors(1, 2, 2, 1, 400)
    for n in (300, 301, 400):  # one bucket (512): one plan and one kernel module
        attn(q, k, v, kv_lens=[n])
    assert len(attn._plans) == 1 and len(attn._kernels) == 1
    assert attn.plan(400).canvas.size == 512


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kv_lens": [400]}, "kv_lens must lie in"),
        ({"q_offsets": [-1]}, "q_offsets must be >= 0"),
        ({"num_splits": 0}, "num_splits must be a positive int"),
        ({"segments": torch.zeros(1, 300, dtype=torch.int32)}, "no Segments"),
    ],
)
def test_decode_rejects_bad_arguments(kwargs, message):
    q, k, v = tensors(1, 2, 2, 1, 300)
    with pytest.raises(ValueError, match=message):
        maskir.decode(q, k, v, "Causal()", **kwargs)


def test_decode_rejects_small_pages_routing_and_gradients():
    q, k, v = tensors(1, 2, 2, 1, 64)
    pool = torch.zeros(8, 8, 2, 32)
    with pytest.raises(ValueError, match="page_size >= 16"):
        maskir.decode(q, pool, pool, "Causal()", kv_lens=[30], block_table=torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="does not run Routing"):
        maskir.decode(q, k, v, Routing(16, 2))
    with pytest.raises(ValueError, match="forward only"):
        maskir.decode(q.requires_grad_(), k, v, "Causal()")


def test_merge_kernel_is_merge_lse_fused():
    """The decode module's ``_merge`` computes ``tables.merge_lse`` (the merge of a plan's parts), -inf rows too."""
    from maskir.codegen.common.tables import merge_lse

    attn = maskir.compile_decode("Full()", heads=2, head_dim=24, dtype=torch.float32, device="cpu")
    kernels = attn.kernels(3, 100)
    g = torch.Generator().manual_seed(1)
    o_part = torch.randn(5, 2, 2, 3, 24, generator=g)
    lse_part = torch.randn(5, 2, 2, 3, generator=g) * 4
    lse_part[:, 0, 1, 2] = float("-inf")  # a row no partial saw
    lse_part[1:3, 1] = float("-inf")
    out, lse = torch.empty(2, 2, 3, 24), torch.empty(2, 2, 3)
    args = {"O_PART": o_part, "LSE_PART": lse_part, "OUT": out, "LSE": lse, "n_partials": 5, "n_rows": 12}
    kernels.launch("_merge", (1,), args)
    want_out, want_lse = merge_lse(o_part, lse_part, torch.float32)
    torch.testing.assert_close(out, want_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-5)
    assert out[0, 1, 2].abs().max() == 0 and lse[0, 1, 2] == float("-inf")


def test_compiled_attention_takes_the_decode_kernels_for_few_queries():
    """maskir.compile / maskir.attention run a no-grad forward of 3 queries over 300 keys with the decode
    kernels, in the canvases' own coordinates (queries at 0..2): the same result as the training kernels."""
    q, k, v = tensors(2, 4, 2, 3, 300)
    pattern = Causal(offset=150) & ~Window(20, 20)
    compiled = maskir.compile(
        pattern, 3, kv_canvas=300, heads=4, kv_heads=2, head_dim=32, dtype=torch.float32, backend="triton"
    )
    assert compiled._decode.applies(q, k, v, [])
    got = compiled(q, k, v, return_lse=True)
    want = maskir.reference_attention(q.double(), k.double(), v.double(), pattern, 3, kv_canvas=300, return_lse=True)
    check_close(got, want, torch.float32)
    trained = compiled(q.clone().requires_grad_(), k, v)  # needs a gradient: the training kernels
    assert not compiled._decode.applies(q.clone().requires_grad_(), k, v, [])
    torch.testing.assert_close(trained.detach(), got[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "pattern", [Full(), Causal(), SWA_SINKS, PerHead([Causal(), Window(30, 70)]), Segments() & Causal()]
)
def test_decode_lists_are_the_plan_rows_cut_to_the_valid_tiles(pattern):
    """row_lists (vectorised over lists) gives the plan's own CSR rows (FULL first), cut to [first, stop)."""
    from maskir.planner.decode import decode_plan, row_lists

    planned = decode_plan(pattern, 1024, 2)
    rng = np.random.default_rng(0)
    for table in planned.parts[0].tables:
        q_tiles = rng.integers(0, planned.parts[0].n_q_tiles, 40)
        first, stop = rng.integers(0, 8, 40), rng.integers(4, 17, 40)
        tiles, full, index = row_lists(table.runs, q_tiles, first, stop)
        bounds = np.concatenate([[0], np.cumsum(tiles)])
        for r, t in enumerate(q_tiles):
            row = table.kv_index[table.kv_start[t] : table.kv_start[t + 1]]
            kept = (row >= first[r]) & (row < stop[r])
            assert index[bounds[r] : bounds[r + 1]].tolist() == row[kept].tolist()
            assert full[r] == kept[: table.kv_full[t]].sum()


def test_a_slot_without_queries_walks_no_tiles():
    """Batch 0's 3 queries (286..288) span two q tiles, so the call has two slots; batch 1's (297..299) lie in
    one, and its second slot's list is empty (no K/V read for rows that are all masked)."""
    from maskir.planner.decode import decode_grid, decode_plan

    planned = decode_plan(Causal(), 512, 2)
    grid, lists, _ = decode_grid(planned, 2, 3, np.array([286, 297]), np.array([289, 300]), sms=4)
    assert grid.slots == 2 and grid.row_blocks == 1
    assert lists.count.reshape(2, 2).tolist() == [[5, 5], [5, 0]]  # (batch, slot): kv tiles 0..4


def test_a_window_wider_than_the_cache_decodes_on_a_bucket_that_holds_the_window():
    """Early in generation a 4096-wide window is wider than the 100-position cache: the plan's canvas is the
    smallest power of two the pattern is defined on (4096), and the result is the full-attention one."""
    from maskir.planner.decode import kv_bucket, pattern_extent

    pattern = (Window(4095, 0) & Causal()) | Sink(4)
    assert pattern_extent(pattern) == 4096 and kv_bucket(pattern, 100) == 4096
    assert kv_bucket(Causal() | Global((3, 9000)), 100) == 16384
    q, k, v = tensors(1, 2, 1, 2, 100)
    got = maskir.decode(q, k, v, pattern, kv_lens=[100], return_lse=True)
    check_close(got, reference_decode(q, k, v, Causal(), [100], [98]), torch.float32)


def test_paged_generation_example_matches_float64():
    """examples/decode_paged.py: token-by-token decoding over a shuffled page pool equals float64 attention."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "decode_paged.py"
    spec = importlib.util.spec_from_file_location("decode_paged", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(steps=2) <= TOL[torch.float32]
