"""maskir.attention inside ``torch.compile(fullgraph=True)``: one graph, no breaks, forward and backward.

``fullgraph=True`` turns any graph break into an error, so compiling and running the module is the check;
the compiled module must also give the eager module's output and gradients.
"""

from __future__ import annotations

import pytest
import torch

import maskir
from maskir import Canvas, Causal, Window

pytestmark = pytest.mark.gpu


class SparseBlock(torch.nn.Module):
    """A projection, maskir attention over ``pattern`` on ``canvas``, and a projection."""

    def __init__(self, pattern, canvas: Canvas, heads: int, head_dim: int):
        super().__init__()
        self.pattern, self.canvas, self.heads = pattern, canvas, heads
        width = heads * head_dim
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.out = torch.nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, width = x.shape
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attended = maskir.attention(q, k, v, self.pattern, self.canvas)
        return self.out(attended.transpose(1, 2).reshape(batch, n, width))


def _module(pattern, canvas: Canvas) -> SparseBlock:
    torch.manual_seed(0)
    return SparseBlock(pattern, canvas, heads=4, head_dim=64).to(device="cuda", dtype=torch.bfloat16)


def _loss_and_grads(module: torch.nn.Module, fn, x: torch.Tensor):
    x = x.detach().requires_grad_(True)
    loss = fn(x).float().square().mean()
    grads = torch.autograd.grad(loss, (x, *module.parameters()))
    return loss, grads


@pytest.mark.parametrize(
    "pattern, canvas",
    [(Causal(), Canvas(1024)), (Window(255, 0), Canvas(2048)), (maskir.patterns.natten(7), Canvas((32, 32)))],
    ids=["causal", "swa256", "na2d_k7"],
)
def test_fullgraph_compile_matches_eager_forward_and_backward(pattern, canvas):
    module = _module(pattern, canvas)
    x = torch.randn(2, canvas.size, 256, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(module, fullgraph=True)
    loss, grads = _loss_and_grads(module, compiled, x)  # first: the trace builds the kernels
    eager_loss, eager_grads = _loss_and_grads(module, module, x)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-2, atol=1e-3)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-3)


def test_explain_reports_one_graph_without_breaks():
    """``torch._dynamo.explain`` over the block: a single graph and zero graph breaks."""
    module = _module(Causal(), Canvas(1024))
    x = torch.randn(1, 1024, 256, device="cuda", dtype=torch.bfloat16)
    explanation = torch._dynamo.explain(module)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
