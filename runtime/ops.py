"""``torch.library`` ops and the autograd Function around a compiled attention.

``maskir::attention_fwd`` returns (out, lse) and ``maskir::attention_bwd`` returns (dq, dk, dv) and the
gradients of the run-time tensors it is asked for (``trained``: a score_mod's bias tables, slopes); both have
fake implementations, so ``torch.compile(fullgraph=True)`` traces through them without graph breaks. The
kernels are found by ``handle`` (a string key registered by ``register``): ops take only tensors, strings
and floats. ``AttentionFunction`` (a ``torch.autograd.Function``) calls the two ops.

The registry holds kernels weakly: they live as long as the ``CompiledAttention`` that built them (and, in
eager mode, as long as an autograd graph that will call their backward), so dropping a compiled object
frees its kernels and tile tables.
"""

from __future__ import annotations

import weakref
from typing import Protocol

import torch


class Kernels(Protocol):
    """What a backend provides: forward with log-sum-exp, and the matching backward."""

    def forward(self, q, k, v, *, scale: float, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def backward(
        self, q, k, v, out, lse, dout, *, scale: float, tensors: list[torch.Tensor], trained: list[int]
    ) -> tuple[torch.Tensor, ...]:
        """(dq, dk, dv, *(d tensors[i] for i in trained)): one backward pass gives them all."""


_KERNELS: weakref.WeakValueDictionary[str, Kernels] = weakref.WeakValueDictionary()


def register(handle: str, kernels: Kernels) -> None:
    """Make ``kernels`` reachable from the ops under ``handle`` while the caller keeps them alive."""
    _KERNELS[handle] = kernels


def _kernels(handle: str) -> Kernels:
    kernels = _KERNELS.get(handle)
    if kernels is None:
        raise ValueError(
            f"No maskir kernels registered as {handle!r}: the CompiledAttention that built them was freed, or "
            "never built. Keep the maskir.compile(...) object alive while it is used (e.g. as a module attribute)."
        )
    return kernels


@torch.library.custom_op("maskir::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, handle: str, scale: float, tensors: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _kernels(handle).forward(q, k, v, scale=scale, tensors=tensors)
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, handle, scale, tensors):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("maskir::attention_bwd", mutates_args=())
def attention_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    handle: str,
    scale: float,
    tensors: list[torch.Tensor],
    trained: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    dq, dk, dv, *dtensors = _kernels(handle).backward(
        q, k, v, out, lse, dout, scale=scale, tensors=tensors, trained=trained
    )
    return dq, dk, dv, dtensors


@attention_bwd.register_fake
def _(q, k, v, out, lse, dout, handle, scale, tensors, trained):
    return (
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        [torch.empty_like(tensors[i]) for i in trained],
    )


class AttentionFunction(torch.autograd.Function):
    """out, lse = attention(q, k, v, *tensors); gradients flow to q, k, v and to the floating run-time
    tensors that require grad (what a score_mod reads); lse is returned without gradient."""

    @staticmethod
    def forward(ctx, q, k, v, handle: str, scale: float, *tensors):
        out, lse = torch.ops.maskir.attention_fwd(q, k, v, handle, scale, list(tensors))
        ctx.save_for_backward(q, k, v, out, lse, *tensors)
        ctx.handle, ctx.scale = handle, scale
        if not torch.compiler.is_compiling():
            ctx.kernels = _kernels(handle)  # the backward may run after the CompiledAttention is gone
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        trained = [i for i, needed in enumerate(ctx.needs_input_grad[5:]) if needed]
        dq, dk, dv, dtensors = torch.ops.maskir.attention_bwd(
            q, k, v, out, lse, dout.contiguous(), ctx.handle, ctx.scale, list(tensors), trained
        )
        grads: list[torch.Tensor | None] = [None] * len(tensors)
        for i, grad in zip(trained, dtensors):
            grads[i] = grad
        return dq, dk, dv, None, None, *grads
