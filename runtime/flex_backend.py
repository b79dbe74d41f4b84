"""FlexAttention as a backend: torch's flex_attention kernels walking a maskir plan's ``BlockMask``.

Forward: q, k, v are gathered into the plan's token order (identity: no copy), ``flex_attention`` runs
with ``to_block_mask(plan)`` (FULL tiles without the mask_mod, PARTIAL ones with it, empty ones never
visited) and the user's score_mod as flex calls it (on token indices, whatever the order), and the output
rows are scattered back to token order (padding rows dropped). A permuted order costs one gather of q, k
and v and one scatter of the output, like NATTEN's token permute. ``flex_attention`` is compiled on CUDA
(``torch.compile``, its Triton or FLASH kernels); on a CPU it runs eagerly (forward only: torch has no
flex backward there). Backward recomputes the forward under autograd on a fresh thread (the custom op
runs below the Autograd key, as the reference backend does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from maskir.codegen.flex.block_mask import in_layout_order, layout_index, plan_layout, to_block_mask
from maskir.planner import Plan

TENSOR_NAMES = ("segments_q", "segments_kv", "routing_map")
"""Run-time tensors this backend's mask_mod reads, in the order they are passed."""


@functools.cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(device: torch.device) -> Callable:
    """flex_attention compiled on CUDA, eager elsewhere."""
    if device.type == "cuda":
        return _compiled_flex()
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _gather(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """x [B, H, N, D] in layout order: position p holds token index[p], zeros where index[p] = -1."""
    if index is None:
        return x
    rows = x.index_select(2, index.clamp(min=0))
    return rows * (index >= 0).to(x.dtype)[:, None]


class FlexKernels:
    """forward/backward of ``flex_attention`` over ``plan``'s BlockMask (see the module docstring)."""

    def __init__(self, plan: Plan, score_mod: Callable | None, tensor_names: tuple[str, ...], kv_heads: int):
        self.plan, self.score_mod, self.tensor_names, self.kv_heads = plan, score_mod, tensor_names, kv_heads
        self.layout = plan_layout(plan)
        self._static: dict[torch.device, tuple] = {}

    def _masks(self, device: torch.device, tensors):
        """(block mask, q positions -> tokens, kv positions -> tokens, score_mod) on ``device``; built once
        per device for a static pattern, per call when the mask reads run-time tensors."""
        key = torch.device(device)
        if not tensors and key in self._static:
            return self._static[key]
        named = dict(zip(self.tensor_names, tensors))
        q_index = layout_index(self.layout.q_tokens, device)
        kv_index = layout_index(self.layout.kv_tokens, device)
        score_mod = None if self.score_mod is None else in_layout_order(self.score_mod, q_index, kv_index, score=True)
        masks = to_block_mask(self.plan, device=device, tensors=named), q_index, kv_index, score_mod
        if not tensors:
            self._static[key] = masks
        return masks

    def _run(self, q, k, v, scale, tensors):
        block_mask, q_index, kv_index, score_mod = self._masks(q.device, tensors)
        out, lse = _flex(q.device)(
            _gather(q, q_index),
            _gather(k, kv_index),
            _gather(v, kv_index),
            score_mod=score_mod,
            block_mask=block_mask,
            scale=scale,
            enable_gqa=self.kv_heads != q.shape[1],
            return_lse=True,
        )
        if q_index is None:
            return out, lse
        valid = q_index >= 0
        tokens = q_index[valid]
        out_tokens = out.new_zeros(q.shape[:3] + (v.shape[-1],)).index_copy(2, tokens, out[:, :, valid])
        lse_tokens = lse.new_full(q.shape[:3], float("-inf")).index_copy(2, tokens, lse[:, :, valid])
        return out_tokens, lse_tokens

    def forward(self, q, k, v, *, scale, tensors):
        out, lse = self._run(q, k, v, scale, tensors)
        return out.to(q.dtype), lse.float()

    def backward(self, q, k, v, out, lse, dout, *, scale, tensors):
        def differentiate():
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                recomputed, _ = self._run(*leaves, scale, tensors)
                return torch.autograd.grad(recomputed, leaves, dout)

        with ThreadPoolExecutor(max_workers=1) as worker:
            return worker.submit(differentiate).result()
