"""Attention of one set of queries over a union of disjoint key sets, each with its own pattern and canvas,
differentiable (e.g. canvas tokens over a joint sequence: text keys with ``Full()``, canvas keys with a pattern).

For parts c with scores s_cj over their allowed keys, the union's softmax is one softmax over all of them:

    lse = logsumexp_c lse_c,   out = sum_c exp(lse_c - lse) out_c.

Backward: dS_cj = P_cj (dO . v_cj - delta) with P_cj = exp(s_cj - lse) and delta = rowsum(dO * out), the
union's own P and delta. A kernel backward computes exactly this when handed the union's ``out`` and ``lse``
in place of its part's (delta is read from ``out``, P from ``lse``), as ring attention does with its blocks:
each part's dq, dk, dv come from its own kernels, and dq is their sum. The Triton and TVM backwards read
``out`` and ``lse``; the reference and flex backends recompute their forward instead, so with them a union
runs without autograd only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskir.canvas import Canvas
from maskir.codegen.backend import get as get_backend
from maskir.ir import Pattern
from maskir.runtime.backends import recomputes_forward
from maskir.runtime.compiled import CompiledAttention


def merge(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of the union from each part's (out [B, H, N, D], lse [B, H, N]); rows no part allows give
    out 0, lse -inf (as a single call does)."""
    lse = torch.logsumexp(torch.stack([part_lse for _, part_lse in parts]), dim=0)
    finite = torch.isfinite(lse)
    out = sum(
        out.float() * torch.where(finite, torch.exp(part_lse - torch.where(finite, lse, 0.0)), 0.0)[..., None]
        for out, part_lse in parts
    )
    return out.to(parts[0][0].dtype), lse


class UnionFunction(torch.autograd.Function):
    """out = softmax over the union of the parts' allowed keys; ``parts`` are CompiledAttention objects,
    followed by each part's k and v."""

    @staticmethod
    def forward(ctx, q, scale: float, compiled: tuple[CompiledAttention, ...], *kv):
        keys, values = kv[0::2], kv[1::2]
        tensors = [c._run_tensors(q, k, None, None) for c, k in zip(compiled, keys)]
        parts = [
            torch.ops.maskir.attention_fwd(q, k, v, c.handle, scale, t)
            for c, k, v, t in zip(compiled, keys, values, tensors)
        ]
        out, lse = merge(parts)
        ctx.save_for_backward(q, out, lse, *kv)
        ctx.compiled, ctx.tensors, ctx.scale = compiled, tensors, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, out, lse, *kv = ctx.saved_tensors
        dout = dout.contiguous()
        dq, grads = torch.zeros_like(q, dtype=torch.float32), []
        for c, k, v, t in zip(ctx.compiled, kv[0::2], kv[1::2], ctx.tensors):
            dq_part, dk, dv, _ = torch.ops.maskir.attention_bwd(q, k, v, out, lse, dout, c.handle, ctx.scale, t, [])
            dq += dq_part.float()
            grads += [dk, dv]
        return dq.to(q.dtype), None, None, *grads


def union_attention(
    q: torch.Tensor,
    parts: Sequence[tuple[Pattern, Canvas | tuple[int, ...], torch.Tensor, torch.Tensor]],
    *,
    canvas: Canvas | tuple[int, ...] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """q [B, H, N, D] over the union of ``parts``: (pattern, kv_canvas, k, v) each, k and v [B, H_kv, N_kv, D]
    on ``kv_canvas``, ``pattern`` relating q's ``canvas`` (default 1-D) to it. The parts' keys are disjoint
    sets (e.g. text tokens and canvas tokens of one sequence), so this is one softmax over all allowed keys.
    Differentiable in q and every k, v (module docstring) with backends "auto", "triton" and "tvm"."""
    from maskir.runtime.api import _memoised, _pattern
    from maskir.runtime.checks import check_qkv, resolve_canvas

    if not parts:
        raise ValueError("union_attention needs one or more (pattern, kv_canvas, k, v) parts.")
    compiled, kv = [], []
    for pattern, kv_canvas, k, v in parts:
        shapes = check_qkv(q, k, v, enable_gqa=k.shape[1] != q.shape[1])
        q_canvas = resolve_canvas(canvas, shapes.n_q, "canvas")
        kv_grid = resolve_canvas(kv_canvas, shapes.n_kv, "kv_canvas")
        config = (q_canvas.shape, kv_grid.shape, shapes.heads, shapes.kv_heads, shapes.head_dim, shapes.dtype)
        built, _ = _memoised(_pattern(pattern), *config, shapes.device, None, backend)
        compiled.append(built)
        kv += [k.contiguous(), v.contiguous()]
    differentiated = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *kv))
    if differentiated and recomputes_forward(get_backend(compiled[0].backend)):
        raise ValueError(
            f"union_attention differentiates through the kernels' (out, lse) backward; backend "
            f"{compiled[0].backend!r} recomputes its forward instead: use 'triton' or 'tvm' to train, or torch.no_grad()."
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return UnionFunction.apply(q.contiguous(), scale, tuple(compiled), *kv)
