"""Trainable score_mod tensors on a CUDA GPU (compiled Triton): table gradients equal float64 autograd and
two backward runs give the same bits (each dQ program's own row of the table-gradient buffer, no atomics).

bf16 inputs at small sizes, fp32 tables; float64 truth on the same (bf16-rounded) inputs. The bar: the
table gradients' largest error is at most ``RELATIVE`` of their largest entry (bf16 P and dS in the kernels).
"""

from __future__ import annotations

import pytest
import torch

import maskir
from maskir import Blocks, Neighborhood
from maskir.reference import reference_attention
from maskir.score_mods import alibi, alibi_slopes, compose, relative_position_bias

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
HEADS, KV_HEADS, DIM = 4, 2, 64
RELATIVE = 2e-2
CASES = [
    pytest.param(Blocks(8), (32, 32), (HEADS, 15, 15), "swin", id="swin-w8"),
    pytest.param(Neighborhood(7, dilation=2), (32, 32), (HEADS, 13, 13), "nat", id="dinat-k7-d2"),
]


def _score_mod(table, slopes, canvas, convention, dilation):
    return compose(
        relative_position_bias(table, canvas, convention=convention, dilation=dilation), alibi(slopes, symmetric=True)
    )


@pytest.mark.parametrize("pattern, canvas, shape, convention", CASES)
def test_table_gradients_on_the_gpu_equal_float64_and_repeat_bitwise(pattern, canvas, shape, convention):
    dilation = 2 if convention == "nat" else 1
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    n = canvas[0] * canvas[1]

    def rand(*size):
        return torch.randn(*size, generator=generator, device=DEVICE)

    q = rand(1, HEADS, n, DIM).bfloat16().requires_grad_()
    k, v = (rand(1, KV_HEADS, n, DIM).bfloat16().requires_grad_() for _ in range(2))
    table, slopes = rand(*shape).requires_grad_(), alibi_slopes(HEADS).to(DEVICE).requires_grad_()
    dout = rand(1, HEADS, n, DIM).bfloat16()
    runs = []
    for _ in range(2):
        out = maskir.attention(
            q, k, v, pattern, canvas, score_mod=_score_mod(table, slopes, canvas, convention, dilation),
            enable_gqa=True,
        )  # fmt: skip
        runs.append(torch.autograd.grad(out, (q, k, v, table, slopes), dout))
    for first, second in zip(*runs):
        assert torch.equal(first, second)
    leaves = [t.detach().double().requires_grad_() for t in (table, slopes)]
    golden = reference_attention(q, k, v, pattern, canvas, score_mod=_score_mod(*leaves, canvas, convention, dilation))
    want = torch.autograd.grad(golden, leaves, dout.double())
    for got, expected in zip(runs[0][3:], want):
        error = (got.double() - expected).abs().max().item()
        assert error <= RELATIVE * expected.abs().max().item(), (error, expected.abs().max().item())
