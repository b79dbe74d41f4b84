"""The float64 reference as a backend: slow and exact, for checking and for patterns no kernel handles."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from maskir.canvas import Canvas
from maskir.codegen.common.expr import Expr
from maskir.codegen.flex.mask_mod import evaluate_torch
from maskir.ir import Pattern
from maskir.reference import reference_attention

TENSOR_NAMES = ("segments_q", "segments_kv", "routing_indices")
"""Run-time tensors of the pattern this backend reads, in the order they are passed (the tensors a traced
score_mod reads, ``capture_0``, ``capture_1``..., follow them)."""


@dataclass(frozen=True)
class ReferenceKernels:
    """forward/backward of ``maskir.reference.reference_attention`` (float64, dense), cast to q's dtype.

    ``score_expr``: the traced score_mod when it reads tensors (``capture_*``, passed among ``tensors``):
    then the scores are that expression evaluated in float64 on the tensors of the call, so the backward
    differentiates them by autograd. Otherwise the score_mod itself is called (it need not be traceable).
    ``captured``: the tensors the traced score_mod read when it was compiled, by name.
    """

    pattern: Pattern
    canvas: Canvas
    kv_canvas: Canvas
    score_mod: Callable | None
    tensor_names: tuple[str, ...]
    score_expr: Expr | None = None
    captured: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def _score_mod(self, named: dict[str, torch.Tensor]) -> Callable | None:
        if self.score_expr is None:
            return self.score_mod
        expr, tables = self.score_expr, {name: t for name, t in named.items() if name.startswith("capture_")}

        def traced(score, b, h, q, kv):
            env = {"score": score, "b": b, "h": h, "q": q, "kv": kv}
            return evaluate_torch(expr, env, tables, torch.float64)

        return traced

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
            score_mod=self._score_mod(named),
            scale=scale,
            segments=segments,
            routing=named.get("routing_indices"),
            return_lse=True,
        )

    def static_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The tensors the traced score_mod read when it was compiled (the objects themselves, so in-place
        updates and gradients reach them)."""
        return dict(self.captured)

    def forward(self, q, k, v, *, scale, tensors):
        out, lse = self._run(q, k, v, scale, tensors)
        return out.to(q.dtype), lse.float()

    def backward(self, q, k, v, out, lse, dout, *, scale, tensors, trained: Sequence[int] = ()):
        """(dq, dk, dv, *d tensors[i] for i in ``trained``), by float64 autograd."""

        def differentiate():
            with torch.enable_grad():
                leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
                given = list(tensors)
                for i in trained:
                    given[i] = given[i].detach().double().requires_grad_()
                out64, _ = self._run(*leaves, scale, given)
                inputs = [*leaves, *(given[i] for i in trained)]
                return torch.autograd.grad(out64, inputs, dout.double(), allow_unused=True)

        # A custom op runs below the Autograd dispatch key, where enable_grad records nothing; the key
        # set is thread-local, so the float64 reference is differentiated on a fresh thread.
        with ThreadPoolExecutor(max_workers=1) as worker:
            grads = worker.submit(differentiate).result()
        likes = [q, k, v, *(tensors[i] for i in trained)]
        return tuple(torch.zeros_like(t) if g is None else g.to(t.dtype) for g, t in zip(grads, likes))


def traceable(score_mod: Callable | None) -> tuple[Expr, dict[str, torch.Tensor]] | None:
    """The traced score_mod and the tensors it reads, when maskir can trace it; None for none or an
    untraceable one (the reference backend then calls it as is, and cannot differentiate what it reads)."""
    if score_mod is None:
        return None
    from maskir.codegen.common.score_mod import trace_score_mod

    try:
        traced = trace_score_mod(score_mod)
    except Exception:  # any failure of user code under tracing: the reference backend does not need it
        return None
    return traced, {ref.name: ref.data for ref in traced.tensors() if ref.data is not None}
