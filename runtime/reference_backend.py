"""The float64 reference as a backend: slow and exact, for checking and for patterns no kernel handles."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from maskir.canvas import Canvas
from maskir.ir import Pattern
from maskir.reference import reference_attention

TENSOR_NAMES = ("segments_q", "segments_kv", "routing_indices")
"""Run-time tensors this backend reads, in the order they are passed."""


@dataclass(frozen=True)
class ReferenceKernels:
    """forward/backward of ``maskir.reference.reference_attention`` (float64, dense), cast to q's dtype."""

    pattern: Pattern
    canvas: Canvas
    kv_canvas: Canvas
    score_mod: Callable | None
    tensor_names: tuple[str, ...]

    def _run(self, q, k, v, scale, tensors):
        named = dict(zip(self.tensor_names, tensors))
        segments = (named["segments_q"], named["segments_kv"]) if "segments_q" in named else None
        return reference_attention(
            q,
            k,
            v,
            self.pattern,
            self.canvas,
            kv_canvas=self.kv_canvas,
            score_mod=self.score_mod,
            scale=scale,
            segments=segments,
            routing=named.get("routing_indices"),
            return_lse=True,
        )

    def forward(self, q, k, v, *, scale, tensors):
        out, lse = self._run(q, k, v, scale, tensors)
        return out.to(q.dtype), lse.float()

    def backward(self, q, k, v, out, lse, dout, *, scale, tensors):
        def differentiate():
            with torch.enable_grad():
                leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
                out64, _ = self._run(*leaves, scale, tensors)
                return torch.autograd.grad(out64, leaves, dout.double())

        # A custom op runs below the Autograd dispatch key, where enable_grad records nothing; the key
        # set is thread-local, so the float64 reference is differentiated on a fresh thread.
        with ThreadPoolExecutor(max_workers=1) as worker:
            grads = worker.submit(differentiate).result()
        return tuple(g.to(t.dtype) for g, t in zip(grads, (q, k, v)))
