"""reference_attention: masked float64 softmax attention checked against direct PyTorch computations
(masked_fill + softmax, SDPA with a boolean mask), GQA, empty rows, score_mod, routing, segments and
input validation. Masks for the direct computations come from the brute force, not from maskir."""

import pytest
import torch
from brute_force import brute_mask
from torch.nn.functional import scaled_dot_product_attention as sdpa

from maskir.canvas import Canvas
from maskir.ir import (
    Blocks,
    Causal,
    Dilated,
    Full,
    Global,
    Neighborhood,
    PerHead,
    Predicate,
    Routing,
    Segments,
    Sink,
    Window,
)
from maskir.reference import reference_attention, routing_indices

B, H, D = 2, 4, 8


def qkv(n_q: int, n_kv: int | None = None, heads_kv: int = H, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n_kv = n_q if n_kv is None else n_kv
    q = torch.randn(B, H, n_q, D, generator=gen)
    k, v = (torch.randn(B, heads_kv, n_kv, D, generator=gen) for _ in range(2))
    return q, k, v


def dense_masks(pattern, canvas, kv_canvas=None, heads: int = H, **data) -> torch.Tensor:
    """The brute-force allowed set for every (batch, head): bool [B, H, Nq, Nkv]."""
    rows = [
        [torch.from_numpy(brute_mask(pattern, canvas, kv_canvas, head=h, batch=b, **data)) for h in range(heads)]
        for b in range(B)
    ]
    return torch.stack([torch.stack(row) for row in rows])


def masked_softmax(q, k, v, allowed, scale, bias=0.0):
    """softmax(q k^T * scale + bias) v in float64, disallowed scores set to -inf (rows must be non-empty)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale + bias
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs @ v.double(), torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


CASES = [
    (Full(), (12,), None),
    (Causal(), (12,), None),
    (Window(3, 1), (13,), None),
    (Dilated(2, 3), (13,), None),
    (Sink(2) | Window(2, 0), (13,), None),
    (Neighborhood(3), (4, 5), None),
    (Neighborhood((2, 3), causal=(True, False)), (4, 5), None),
    (Blocks(2, offset=1), (3, 4, 5), None),
    (PerHead([Causal(), Window(1, 1), Full(), Global((3,))]), (10,), None),
    (Window(2, 2), (5,), (9,)),
    (Causal(4), (5,), (9,)),
]


@pytest.mark.parametrize("pattern, canvas, kv_canvas", CASES, ids=str)
def test_reference_attention_matches_masked_softmax(pattern, canvas, kv_canvas):
    n_q, n_kv = Canvas(canvas).size, Canvas(kv_canvas or canvas).size
    q, k, v = qkv(n_q, n_kv)
    out, lse = reference_attention(q, k, v, pattern, canvas, kv_canvas=kv_canvas, return_lse=True)
    expected_out, expected_lse = masked_softmax(q, k, v, dense_masks(pattern, canvas, kv_canvas), D**-0.5)
    close(out, expected_out)
    close(lse, expected_lse)


@pytest.mark.parametrize("pattern, canvas, kv_canvas", CASES, ids=str)
def test_reference_attention_matches_sdpa_with_boolean_mask(pattern, canvas, kv_canvas):
    n_q, n_kv = Canvas(canvas).size, Canvas(kv_canvas or canvas).size
    q, k, v = qkv(n_q, n_kv, seed=1)
    allowed = dense_masks(pattern, canvas, kv_canvas)
    expected = sdpa(q.double(), k.double(), v.double(), attn_mask=allowed, scale=0.3)
    close(reference_attention(q, k, v, pattern, canvas, kv_canvas=kv_canvas, scale=0.3), expected)


def test_gqa_equals_repeating_kv_heads():
    pattern = PerHead([Causal(), Window(2, 2)])
    q, k, v = qkv(11, heads_kv=2, seed=2)
    out = reference_attention(q, k, v, pattern)
    repeated = reference_attention(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), pattern)
    expected_sdpa = sdpa(q.double(), k.double(), v.double(), attn_mask=dense_masks(pattern, 11), enable_gqa=True)
    close(out, repeated)
    close(out, expected_sdpa)


@pytest.mark.parametrize(
    "pattern, empty_rows",
    [(Causal(-1), [0]), (Window(0, 0) - Window(1, 1), list(range(9))), (Causal(-3), [0, 1, 2])],
    ids=str,
)
def test_fully_masked_rows_give_zero_output_and_minus_inf_lse(pattern, empty_rows):
    q, k, v = qkv(9, seed=3)
    out, lse = reference_attention(q, k, v, pattern, return_lse=True)
    assert not out.isnan().any() and not lse.isnan().any()
    assert (out[:, :, empty_rows] == 0).all()
    assert (lse[:, :, empty_rows] == float("-inf")).all()
    others = [i for i in range(9) if i not in empty_rows]
    assert torch.isfinite(lse[:, :, others]).all()


def test_score_mod_alibi_matches_manual_bias():
    slope = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - (q_idx - kv_idx).abs() * slope[h]

    q, k, v = qkv(10, seed=4)
    distance = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs().double()
    bias = -distance[None, None] * slope[None, :, None, None]
    expected, _ = masked_softmax(q, k, v, dense_masks(Causal(), 10), D**-0.5, bias)
    close(reference_attention(q, k, v, Causal(), score_mod=alibi), expected)


def test_score_mod_with_captured_bias_table_matches_manual_bias():
    table = torch.randn(B, 10, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def add_table(score, b, h, q_idx, kv_idx):
        return score + table[b, q_idx, kv_idx]

    q, k, v = qkv(10, seed=5)
    pattern = Window(3, 3)
    expected, _ = masked_softmax(q, k, v, dense_masks(pattern, 10), D**-0.5, table[:, None])
    close(reference_attention(q, k, v, pattern, score_mod=add_table), expected)


def pooled_top_k(q, k, block: int, topk: int) -> torch.Tensor:
    """Top-k kv blocks per q block by mean(q block) . mean(kv block), looped by hand: [B, H, q_blocks, topk]."""
    group = q.shape[1] // k.shape[1]

    def means(x, b, h):
        return [x[b, h, i : i + block].double().mean(0) for i in range(0, x.shape[2], block)]

    chosen = torch.zeros(B, q.shape[1], -(-q.shape[2] // block), topk, dtype=torch.long)
    for b in range(B):
        for h in range(q.shape[1]):
            kv_means = means(k, b, h // group)
            for i, q_mean in enumerate(means(q, b, h)):
                scores = torch.stack([q_mean @ m for m in kv_means])
                chosen[b, h, i] = torch.argsort(scores, descending=True, stable=True)[:topk]
    return chosen


@pytest.mark.parametrize("n, block, topk, heads_kv", [(12, 4, 1, H), (10, 4, 2, H), (13, 3, 2, 2)])
def test_routing_indices_are_top_k_blocks_by_pooled_scores(n, block, topk, heads_kv):
    q, k, _ = qkv(n, heads_kv=heads_kv, seed=6)
    assert torch.equal(routing_indices(q, k, Routing(block, topk)), pooled_top_k(q, k, block, topk))


def test_routing_ties_break_towards_the_lower_block():
    q, k, _ = qkv(12, seed=7)
    chosen = routing_indices(torch.zeros_like(q), k, Routing(4, 2))
    assert (chosen == torch.tensor([0, 1])).all()


@pytest.mark.parametrize("pattern", [Routing(4, 2), Routing(3, 1) & Causal(), Routing(2, 3) | Sink(1)], ids=str)
def test_routing_from_q_and_k_equals_routing_from_explicit_indices(pattern):
    q, k, v = qkv(13, heads_kv=2, seed=8)
    node = next(x for x in pattern.walk() if isinstance(x, Routing))
    indices = pooled_top_k(q, k, node.block, node.topk)
    out = reference_attention(q, k, v, pattern)
    expected_out = reference_attention(q, k, v, pattern, routing=indices)
    allowed = dense_masks(pattern, 13, routing=indices.numpy())
    expected_sdpa = sdpa(q.double(), k.double(), v.double(), attn_mask=allowed, enable_gqa=True)
    close(out, expected_out)
    close(out, torch.where(allowed.any(-1, keepdim=True), expected_sdpa, 0.0))


def test_segments_attend_within_each_packed_document():
    ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    q, k, v = qkv(10, seed=9)
    out = reference_attention(q, k, v, Segments() & Causal(), segments=ids)
    for b, bounds in enumerate([[(0, 3), (3, 7), (7, 10)], [(0, 6), (6, 10)]]):
        for lo, hi in bounds:
            doc = [x[b : b + 1, :, lo:hi].double() for x in (q, k, v)]
            close(out[b : b + 1, :, lo:hi], sdpa(*doc, is_causal=True))


def test_predicate_sees_batch_and_head_indices():
    def by_batch_and_head(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx) % (b + h + 1) == 0)

    q, k, v = qkv(9, seed=10)
    pattern = Predicate(by_batch_and_head)
    expected, _ = masked_softmax(q, k, v, dense_masks(pattern, 9), D**-0.5)
    close(reference_attention(q, k, v, pattern), expected)


BAD_INPUTS = {
    "q is 3-D": (lambda q, k, v: reference_attention(q[0], k, v, Full()), "q must be a 4-D tensor"),
    "k has 5 dims": (lambda q, k, v: reference_attention(q, k[None], v, Full()), "k must be a 4-D tensor"),
    "kv heads do not divide q heads": (
        lambda q, k, v: reference_attention(q, k[:, :3], v[:, :3], Full()),
        "heads_q=4, heads_kv=3",
    ),
    "k and v lengths differ": (lambda q, k, v: reference_attention(q, k, v[:, :, :5], Full()), "k and v"),
    "head dims differ": (lambda q, k, v: reference_attention(q, k[..., :4], v, Full()), "k and v"),
    "canvas smaller than N": (lambda q, k, v: reference_attention(q, k, v, Full(), (3, 3)), "N_q=12"),
    "kv canvas larger than N_kv": (lambda q, k, v: reference_attention(q, k, v, Full(), kv_canvas=13), "N_kv=12"),
    "segments of the wrong length": (
        lambda q, k, v: reference_attention(q, k, v, Segments(), segments=torch.zeros(B, 11)),
        "segments",
    ),
    "segments missing": (lambda q, k, v: reference_attention(q, k, v, Segments()), "segments"),
    "routing of the wrong shape": (
        lambda q, k, v: reference_attention(q, k, v, Routing(4, 1), routing=torch.zeros(B, H, 2, 1, dtype=torch.long)),
        "routing",
    ),
    "routing index out of range": (
        lambda q, k, v: reference_attention(q, k, v, Routing(4, 1), routing=torch.full((B, H, 3, 1), 3)),
        "routing",
    ),
}


@pytest.mark.parametrize("call, needle", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_reference_attention_rejects_bad_input(call, needle):
    q, k, v = qkv(12)
    with pytest.raises(ValueError, match=needle):
        call(q, k, v)
