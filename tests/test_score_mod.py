"""trace_score_mod: the traced expression computes what the score_mod computes on torch tensors.

Each score_mod is called directly on broadcast torch index tensors (as ``reference_attention`` does) and
its traced expression is evaluated with numpy on the same inputs; then the traced text of a few, the
captured tensors, and the rejections with their messages.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.score_mod import trace_score_mod

B, H, N = 2, 3, 11
GEN = torch.Generator().manual_seed(0)
SLOPES = torch.tensor([2.0**-1, 2.0**-2, 2.0**-3])
BIAS_1D = torch.randn(2 * N - 1, generator=GEN)
BIAS_2D = torch.randn(N, N, generator=GEN)
REL_PER_HEAD = torch.randn(H, N, generator=GEN)
KEEP = torch.rand(N, generator=GEN) > 0.5
SCALE = torch.tensor(0.75)
LENGTHS = torch.tensor([4, 9])


def alibi(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def relative_bias(score, b, h, q_idx, kv_idx):
    return score + BIAS_1D[q_idx - kv_idx + N - 1]


def relative_bias_wrapping(score, b, h, q_idx, kv_idx):
    return score + BIAS_1D[q_idx - kv_idx]  # negative offsets count from the end, as in torch


def bias_table(score, b, h, q_idx, kv_idx):
    return score + BIAS_2D[q_idx, kv_idx]


def bucketed_per_head(score, b, h, q_idx, kv_idx):
    return score + REL_PER_HEAD[h, (q_idx - kv_idx).abs()]


def soft_cap(score, b, h, q_idx, kv_idx):
    return 30 * torch.tanh(score / 30)


def causal(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx >= kv_idx, score, -float("inf"))


def gaussian(score, b, h, q_idx, kv_idx):
    return score - ((q_idx - kv_idx).float() ** 2) / 8 + torch.exp2(-h.float())


def clamped_distance(score, b, h, q_idx, kv_idx):
    return score * torch.sigmoid(score) - torch.clamp(kv_idx - q_idx, min=0, max=3) * 0.5


def trigonometry(score, b, h, q_idx, kv_idx):
    return score * torch.cos(q_idx * 0.1) + torch.sin(kv_idx.float()) + torch.log(torch.sqrt(h + 1.0))


def masked_by_keep_and_length(score, b, h, q_idx, kv_idx):
    kept = torch.where(KEEP[kv_idx] & (kv_idx < LENGTHS[b]), score, torch.zeros_like(score))
    return kept * SCALE + torch.minimum(q_idx, kv_idx) % 3 - (q_idx - kv_idx) // 4


def integer_only(score, b, h, q_idx, kv_idx):
    return q_idx - kv_idx


SCORE_MODS = [
    alibi,
    relative_bias,
    relative_bias_wrapping,
    bias_table,
    bucketed_per_head,
    soft_cap,
    causal,
    gaussian,
    clamped_distance,
    trigonometry,
    masked_by_keep_and_length,
    integer_only,
]


def _indices():
    return (
        torch.arange(B).view(-1, 1, 1, 1),
        torch.arange(H).view(1, -1, 1, 1),
        torch.arange(N).view(1, 1, -1, 1),
        torch.arange(N).view(1, 1, 1, -1),
    )


@pytest.mark.parametrize("score_mod", SCORE_MODS, ids=lambda f: f.__name__)
def test_traced_score_mod_equals_calling_it(score_mod):
    score = torch.randn(B, H, N, N, generator=GEN, dtype=torch.float64) * 10
    b, h, q, kv = _indices()
    want = torch.broadcast_to(score_mod(score, b, h, q, kv), score.shape).double().numpy()
    expr = trace_score_mod(score_mod)
    env = {"score": score.numpy(), "b": b.numpy(), "h": h.numpy(), "q": q.numpy(), "kv": kv.numpy()}
    got = np.broadcast_to(evaluate(expr, env), score.shape)
    assert expr.dtype == "float"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("score_mod", "text"),
    [
        (lambda score, b, h, q_idx, kv_idx: score, "score"),
        (soft_cap, "30 * tanh(score / 30.0)"),
        (causal, 'where(q >= kv, score, float("-inf"))'),
        (alibi, "score + load(capture_0, h) * (kv - q)"),
        (relative_bias, "score + load(capture_0, where(q - kv + 10 < 0, q - kv + 31, q - kv + 10))"),
        (relative_bias_wrapping, "score + load(capture_0, where(q - kv < 0, q - kv + 21, q - kv))"),
        (bucketed_per_head, "score + load(capture_0, h, abs(q - kv))"),
        (integer_only, "to_float(q - kv)"),
    ],
    ids=["identity", "soft_cap", "causal", "alibi", "relative_bias", "wrapping", "bucketed", "integer_only"],
)
def test_traced_text(score_mod, text):
    assert str(trace_score_mod(score_mod)) == text


def test_captured_tensors_are_named_in_first_use_order_and_attached():
    refs = trace_score_mod(masked_by_keep_and_length).tensors()
    assert [(t.name, t.dtype, t.shape) for t in refs] == [
        ("capture_0", "bool", (N,)),
        ("capture_1", "int", (B,)),
        ("capture_2", "float", ()),
    ]
    assert [t.data for t in refs] == [KEEP, LENGTHS, SCALE]
    assert refs[0].data is KEEP


def test_a_tensor_indexed_twice_is_captured_once():
    def twice(score, b, h, q_idx, kv_idx):
        return score + BIAS_2D[q_idx, kv_idx] - BIAS_2D[kv_idx, q_idx]

    assert [t.name for t in trace_score_mod(twice).tensors()] == ["capture_0"]


# -- rejections ------------------------------------------------------------------------------------


def python_if(score, b, h, q_idx, kv_idx):
    if q_idx > kv_idx:
        return score
    return score * 2


def python_min(score, b, h, q_idx, kv_idx):
    return score + min(q_idx, kv_idx)


def python_int(score, b, h, q_idx, kv_idx):
    return score + math.floor(q_idx)


def unknown_torch_function(score, b, h, q_idx, kv_idx):
    return torch.erf(score)


def unknown_method(score, b, h, q_idx, kv_idx):
    return score.sum()


def slicing(score, b, h, q_idx, kv_idx):
    return score + BIAS_2D[q_idx, :].sum()


def chained_indexing(score, b, h, q_idx, kv_idx):
    return score + BIAS_2D[q_idx][kv_idx]


def unindexed_tensor(score, b, h, q_idx, kv_idx):
    return score + BIAS_1D


def returns_bool(score, b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def float_to_int(score, b, h, q_idx, kv_idx):
    return score.long()


def float_power(score, b, h, q_idx, kv_idx):
    return score**0.5


def unsupported_keyword(score, b, h, q_idx, kv_idx):
    return torch.add(score, q_idx, alpha=2)


def bitwise_on_ints(score, b, h, q_idx, kv_idx):
    return score + (q_idx & kv_idx)


@pytest.mark.parametrize(
    ("score_mod", "message"),
    [
        (python_if, "score_mod tracing: .* Python control flow"),
        (python_min, "Python control flow"),
        (python_int, "Python control flow"),
        (unknown_torch_function, "does not support torch.erf"),
        (unknown_method, "does not support sum"),
        (slicing, "exactly one int or symbol per dim"),
        (chained_indexing, "exactly one int or symbol per dim"),
        (unindexed_tensor, "must be indexed with symbols"),
        (returns_bool, "must return the new score"),
        (float_to_int, "converting a float to an int"),
        (float_power, r"x \*\* n for a constant int"),
        (unsupported_keyword, "does not support these arguments to torch.add"),
        (bitwise_on_ints, "and .* takes bool operands, got a int"),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_untraceable_score_mod_is_rejected_naming_the_operation(score_mod, message):
    with pytest.raises(TypeError, match=message):
        trace_score_mod(score_mod)


def test_score_mod_must_be_callable():
    with pytest.raises(TypeError, match="score_mod must be callable"):
        trace_score_mod(3.0)
