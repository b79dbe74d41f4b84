"""maskir.attention on a CUDA GPU vs the float64 reference, at real-ish sizes, forward and gradients.

Every catalogue entry (``benchmarks/catalogue.py``) runs at its small (N <= 1024) and medium (N = 2048 to
4096) sizes, plus GQA, a ragged length and rows with no allowed key. The bar follows inductor's flex
tests (``_check_equal``): against the float64 golden, maskir's error may be at most ``FUDGE`` times that
of eager attention computed in the same low precision (masked softmax of q k^T, materialised), plus
``ATOL`` for outputs that eager gets exactly right.
"""

from __future__ import annotations

import pytest
import torch

import maskir
from benchmarks.catalogue import NAMES, Case, case
from maskir import Canvas, Causal, Window
from maskir.reference import reference_attention, reference_mask

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
FUDGE = 3.0
ATOL = 1e-3
HEADS = 2


def _inputs(n_q: int, n_kv: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)

    def rand(h, n):
        return torch.randn(1, h, n, head_dim, generator=generator, device=DEVICE, dtype=dtype).requires_grad_(True)

    q, k, v = rand(heads, n_q), rand(kv_heads, n_kv), rand(kv_heads, n_kv)
    dout = torch.randn(1, heads, n_q, head_dim, generator=generator, device=DEVICE, dtype=dtype)
    return q, k, v, dout


def _eager(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention in q's dtype, materialised (the low-precision baseline); empty rows give 0."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    empty = ~allowed.any(-1, keepdim=True)  # rows with no allowed key: finite scores, then weight 0
    probs = scores.masked_fill(~allowed & ~empty, float("-inf")).softmax(-1) * ~empty
    return probs @ v


def _allowed(pattern, canvas, heads: int, **data) -> torch.Tensor:
    masks = [torch.from_numpy(reference_mask(pattern, canvas, head=h, **data)) for h in range(heads)]
    return torch.stack(masks)[None].to(DEVICE)


def _output_and_grads(fn, q, k, v, dout):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


def check_against_reference(pattern, canvas: Canvas, q, k, v, dout, *, segments=None, routing=None):
    """maskir's output and dq, dk, dv are as close to the float64 golden as FUDGE x eager's, plus ATOL."""
    data = {"segments": segments, "routing": routing}
    gqa = q.shape[1] != k.shape[1]
    leaves64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    golden = _output_and_grads(
        lambda q, k, v: reference_attention(q, k, v, pattern, canvas, **data), *leaves64, dout.double()
    )
    allowed = _allowed(pattern, canvas, q.shape[1], **data)
    eager = _output_and_grads(lambda q, k, v: _eager(q, k, v, allowed), q, k, v, dout)
    ours = _output_and_grads(
        lambda q, k, v: maskir.attention(q, k, v, pattern, canvas, enable_gqa=gqa, **data), q, k, v, dout
    )
    for name, gold, base, got in zip(("out", "dq", "dk", "dv"), golden, eager, ours):
        assert got.dtype == q.dtype and got.shape == base.shape, name
        assert torch.isfinite(got).all(), f"{name} has NaN/inf"
        ours_err = (got.double() - gold).abs().max().item()
        eager_err = (base.double() - gold).abs().max().item()
        assert ours_err <= FUDGE * eager_err + ATOL, f"{name}: maskir error {ours_err:.3g}, eager {eager_err:.3g}"


def _run_case(entry: Case, head_dim: int, dtype: torch.dtype):
    q, k, v, dout = _inputs(entry.tokens, entry.tokens, HEADS, HEADS, head_dim, dtype)
    segments = entry.segment_ids(1, DEVICE)
    routing = entry.routing_indices(q, k)
    check_against_reference(entry.pattern, entry.canvas, q, k, v, dout, segments=segments, routing=routing)


@pytest.mark.parametrize("name", NAMES)
def test_medium_catalogue_entry_matches_reference_bf16(name):
    _run_case(case(name, "medium"), 128, torch.bfloat16)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_small_catalogue_entry_matches_reference(name, dtype, head_dim):
    _run_case(case(name, "small"), head_dim, dtype)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("name", ["causal", "swa_causal_w1024", "na2d_128x128_k17", "documents16"])
def test_gqa_matches_reference(name, kv_heads):
    """4 query heads over 1 (MQA) or 2 (GQA) key/value heads."""
    entry = case(name, "medium")
    q, k, v, dout = _inputs(entry.tokens, entry.tokens, 4, kv_heads, 128, torch.bfloat16)
    check_against_reference(entry.pattern, entry.canvas, q, k, v, dout, segments=entry.segment_ids(1, DEVICE))


@pytest.mark.parametrize("pattern", [Causal(), Window(255, 0), Window(100, 37)], ids=str)
@pytest.mark.parametrize("n", [2000, 3001])
def test_ragged_length_matches_reference(pattern, n):
    """N not a multiple of any tile size: the last q and kv tiles are masked at the edge."""
    q, k, v, dout = _inputs(n, n, HEADS, HEADS, 128, torch.bfloat16)
    check_against_reference(pattern, Canvas(n), q, k, v, dout)


def test_ragged_2d_canvas_matches_reference():
    canvas = Canvas((45, 67))
    q, k, v, dout = _inputs(canvas.size, canvas.size, HEADS, HEADS, 64, torch.float16)
    check_against_reference(maskir.patterns.natten(9), canvas, q, k, v, dout)


def test_rows_without_allowed_keys_give_zero_and_finite_grads():
    """Causal minus a 300-token window: queries 0..299 see nothing, so their output is 0 and lse -inf."""
    pattern = Causal() - Window(299, 0)
    n = 2048
    q, k, v, dout = _inputs(n, n, HEADS, HEADS, 128, torch.bfloat16)
    check_against_reference(pattern, Canvas(n), q, k, v, dout)
    out, lse = maskir.attention(q, k, v, pattern, return_lse=True)
    assert (out[:, :, :300] == 0).all()
    assert torch.isneginf(lse[:, :, :300]).all() and torch.isfinite(lse[:, :, 300:]).all()
