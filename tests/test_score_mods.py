"""maskir.score_mods: each ready-made score_mod equals its paper's formula, written here in float64.

Each case builds the dense bias B[h, q, kv] from the formula (loops over coordinates, NATTEN's legacy
rpb indexing, T5's bucket rule in float64) and checks maskir's output and the gradient of the trained
tensor against float64 softmax(q k^T * scale + B) v over the allowed pairs, differentiated by autograd.
Kernel backends repeat these cases in tests/test_score_mod_grads.py.
"""

import math
from importlib.util import find_spec

import pytest
import torch

import maskir
from maskir import Blocks, Canvas, Causal, Full, Neighborhood, Window
from maskir.reference import reference_mask
from maskir.score_mods import alibi, alibi_slopes, compose, relative_position_bias, soft_cap, t5_bias

HEADS, DIM = 2, 16


def dense_attention(q, k, v, allowed, bias=None, cap=None):
    """float64 softmax over allowed pairs of (q k^T / sqrt(D) [+ bias], soft-capped by cap) times v."""
    scores = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    scores = scores if bias is None else scores + bias.double()
    scores = scores if cap is None else cap * torch.tanh(scores / cap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, -1, keepdim=True)
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse))
    return probs @ v.double()


def random_qkv(n, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, n, DIM, generator=gen, requires_grad=True) for _ in range(3)]


def allowed_mask(pattern, canvas):
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    return torch.from_numpy(reference_mask(pattern, canvas, canvas))


def check_against_formula(pattern, canvas, score_mod, bias_of, trained, backend="reference", cap=None):
    """maskir's output and d trained equal float64 autograd of dense_attention(bias_of(trained))."""
    n = math.prod(canvas) if isinstance(canvas, tuple) else canvas
    q, k, v = random_qkv(n)
    out = maskir.attention(q, k, v, pattern, canvas, score_mod=score_mod, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * weights).sum(), (q, k, v, trained))
    leaf = trained.detach().double().requires_grad_()
    expected = dense_attention(q, k, v, allowed_mask(pattern, canvas), bias_of(leaf), cap)
    want = torch.autograd.grad((expected * weights.double()).sum(), (q, k, v, leaf))
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.to(g.dtype), atol=2e-4, rtol=1e-4)


def swin_bias(table, shape):
    """B[h, q, kv] = table[h, q_y - kv_y + w - 1, ...] (Swin's relative_position_index), by loops."""
    n = math.prod(shape)
    coords = [divmod_coords(i, shape) for i in range(n)]
    index = [
        [tuple(a - b + (s - 1) // 2 for a, b, s in zip(cq, ck, table.shape[1:])) for ck in coords] for cq in coords
    ]
    return torch.stack([torch.stack([torch.stack([t[i] for i in row]) for row in index]) for t in table])


def divmod_coords(index, shape):
    coords = []
    for extent in reversed(shape):
        index, c = divmod(index, extent)
        coords.append(c)
    return tuple(reversed(coords))


@pytest.mark.parametrize(
    "pattern, shape, spans",
    [
        (Blocks(4), (12,), (7,)),
        (Blocks(4) | Blocks(4, offset=2), (8, 8), (7, 7)),
        (Blocks(2), (4, 4, 4), (3, 3, 3)),
    ],
    ids=["1d", "2d-shifted", "3d"],
)
def test_swin_relative_position_bias_equals_swin_relative_position_index(pattern, shape, spans):
    table = torch.randn(HEADS, *spans, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def bias_of(t):
        reach = max(shape)  # offsets beyond the window read zero padding (those pairs are never allowed)
        return swin_bias(torch.nn.functional.pad(t, [reach] * 2 * len(spans)), shape)

    score_mod = relative_position_bias(table, shape, convention="swin")
    check_against_formula(pattern, shape, score_mod, bias_of, table)


def natten_window_start(index, length, kernel, dilation):
    """NATTEN's legacy ``get_window_start`` (natten <= 0.17, rpb era): first key of the neighborhood."""
    half = kernel // 2
    if dilation <= 1:
        return max(index - half, 0) + (index + half >= length) * (length - index - half - 1)
    if index - half * dilation < 0:
        return index % dilation
    if index + half * dilation >= length:
        imodd, a = index % dilation, length // dilation * dilation
        b = length - a
        return length - b + imodd - 2 * half * dilation if imodd < b else a + imodd - kernel * dilation
    return index - half * dilation


def natten_pb_start(index, length, kernel, dilation):
    """NATTEN's legacy ``get_pb_start``: rpb index of the window's first key; key t reads pb_start + t."""
    half = kernel // 2
    if dilation <= 1:
        return half + (index < half) * (half - index) + (index + half >= length) * (length - index - 1 - half)
    if index - half * dilation < 0:
        return kernel - 1 - index // dilation
    if index + half * dilation >= length:
        return (length - index - 1) // dilation
    return half


def natten_bias(table, shape, kernel, dilation):
    """B[h, q, kv] by NATTEN's legacy rpb kernels: for each dim, key t of the window reads pb_start + t."""
    n = math.prod(shape)
    bias = torch.zeros(table.shape[0], n, n, dtype=table.dtype)
    bias = bias + float("nan")  # pairs outside the neighborhood must never be read
    for qi in range(n):
        cq = divmod_coords(qi, shape)
        per_dim = []
        for c, extent in zip(cq, shape):
            start = natten_window_start(c, extent, kernel, dilation)
            pb = natten_pb_start(c, extent, kernel, dilation)
            per_dim.append([(start + t * dilation, pb + t) for t in range(kernel)])
        for combo in torch.cartesian_prod(*[torch.arange(kernel)] * len(shape)).view(-1, len(shape)).tolist():
            keys = [per_dim[d][t] for d, t in enumerate(combo)]
            kv = 0
            for (key, _), extent in zip(keys, shape):
                kv = kv * extent + key
            bias[:, qi, kv] = table[(slice(None), *(idx for _, idx in keys))]
    return bias


@pytest.mark.parametrize(
    "shape, kernel, dilation", [((13,), 5, 2), ((7, 7), 3, 1), ((9, 8), 3, 2)], ids=["1d-d2", "2d", "2d-d2"]
)
def test_nat_relative_position_bias_equals_nattens_legacy_rpb(shape, kernel, dilation):
    pattern = Neighborhood(kernel, dilation=dilation)
    allowed = allowed_mask(pattern, shape)
    table = torch.randn(HEADS, *[2 * kernel - 1] * len(shape), generator=torch.Generator().manual_seed(3))
    bias = natten_bias(table, shape, kernel, dilation)
    assert torch.equal(~torch.isnan(bias[0]), allowed)  # NATTEN's legacy windows are maskir's Neighborhood
    table.requires_grad_()
    score_mod = relative_position_bias(table, shape, convention="nat", dilation=dilation)

    def bias_of(t):
        return torch.nan_to_num(natten_bias(t, shape, kernel, dilation))

    check_against_formula(pattern, shape, score_mod, bias_of, table)


def test_alibi_slopes_follow_the_papers_geometric_sequence():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    expected_6 = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]  # 4 heads, then every other of 8 heads
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected_6))


@pytest.mark.parametrize("symmetric, pattern", [(False, Causal()), (True, Window(5, 5))], ids=["causal", "symmetric"])
def test_alibi_with_learnable_slopes_equals_its_formula(symmetric, pattern):
    slopes = alibi_slopes(HEADS).requires_grad_()
    n = 24
    distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # kv - q

    def bias_of(s):
        return s[:, None, None] * (-distance.abs() if symmetric else distance)

    check_against_formula(pattern, n, alibi(slopes, symmetric=symmetric), bias_of, slopes)


def t5_bucket64(relative, bidirectional, num_buckets, max_distance):
    """T5's bucket of one relative position (kv - q), with float64 logs."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket += num_buckets * (relative > 0)
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = num_buckets // 2
    if distance < exact:
        return bucket + distance
    large = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_t5_bias_equals_t5_buckets_in_float64(bidirectional):
    n, num_buckets, max_distance = 40, 8, 20
    table = torch.randn(num_buckets, HEADS, generator=torch.Generator().manual_seed(4), requires_grad=True)
    buckets = torch.tensor(
        [[t5_bucket64(kv - q, bidirectional, num_buckets, max_distance) for kv in range(n)] for q in range(n)]
    )

    def bias_of(t):
        return t[buckets].permute(2, 0, 1)

    pattern = Full() if bidirectional else Causal()
    score_mod = t5_bias(table, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    check_against_formula(pattern, n, score_mod, bias_of, table)


def test_soft_cap_with_a_learnable_cap_after_a_bias_equals_its_formula():
    n = 16
    cap = torch.tensor(0.7, requires_grad=True)
    slopes = alibi_slopes(HEADS)
    distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    score_mod = compose(alibi(slopes), soft_cap(cap))

    q, k, v = random_qkv(n)
    out = maskir.attention(q, k, v, Causal(), score_mod=score_mod, backend="reference")
    (got,) = torch.autograd.grad(out.sum(), cap)
    leaf = cap.detach().double().requires_grad_()
    expected = dense_attention(q, k, v, allowed_mask(Causal(), n), slopes[:, None, None] * distance, leaf)
    (want,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)


def every_helper(swin, nat, slopes, t5, cap):
    """Every helper in one score_mod: Swin and NAT (dilation 2) tables on an 8 x 8 canvas, ALiBi, T5, cap."""
    return compose(
        relative_position_bias(swin, (8, 8), convention="swin"),
        relative_position_bias(nat, (8, 8), convention="nat", dilation=2),
        alibi(slopes, symmetric=True),
        t5_bias(t5, num_buckets=8, max_distance=12),
        soft_cap(cap),
    )


@pytest.mark.parametrize(
    "backend",
    ["triton", pytest.param("tvm", marks=pytest.mark.skipif(find_spec("tvm") is None, reason="no apache-tvm"))],
)
def test_every_helper_trains_on_each_kernel_backend_as_in_float64(backend):
    """One build per backend, with GQA (one kv head): the gradient of each helper's tensor equals float64
    autograd of the same helpers (whose formulas the tests above check)."""
    gen = torch.Generator().manual_seed(7)
    tensors = [
        torch.randn(HEADS, 7, 7, generator=gen),
        torch.randn(HEADS, 5, 5, generator=gen),
        alibi_slopes(HEADS),
        torch.randn(8, HEADS, generator=gen),
        torch.tensor(2.5),
    ]
    tensors = [t.requires_grad_() for t in tensors]
    pattern = Blocks(4) | Neighborhood(3, dilation=2)
    q, k, v = random_qkv(64)
    k, v = (t.detach()[:, :1].requires_grad_() for t in (k, v))
    out = maskir.attention(q, k, v, pattern, (8, 8), score_mod=every_helper(*tensors), backend=backend, enable_gqa=True)
    got = torch.autograd.grad(out.square().sum(), (q, k, v, *tensors))
    leaves = [t.detach().double().requires_grad_() for t in tensors]
    expected = maskir.reference_attention(q, k, v, pattern, (8, 8), score_mod=every_helper(*leaves))
    want = torch.autograd.grad(expected.square().sum(), (q, k, v, *leaves))
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), atol=3e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: relative_position_bias(torch.zeros(2, 4, 7), (8, 8)), "odd"),
        (lambda: relative_position_bias(torch.zeros(2, 7), (8, 8)), "table must be"),
        (lambda: relative_position_bias(torch.zeros(2, 7), 8, convention="natten"), "convention"),
        (lambda: alibi(torch.zeros(2, 2)), "slopes"),
        (lambda: t5_bias(torch.zeros(8, 2), num_buckets=32), "num_buckets=32"),
        (lambda: soft_cap(-1.0), "cap"),
    ],
)
def test_score_mod_helpers_reject_bad_arguments_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()
