"""Cases and checks shared by the kernel tests of every backend (Triton in its interpreter, TVM on llvm).

``CATALOGUE`` holds every IR node on a small canvas; ``compare`` runs a backend's forward and backward on
random inputs next to the float64 reference; ``check`` applies the tolerances: fp32 2e-3 (output and LSE)
and 1e-2 (gradients), 16-bit 3e-2 for both. Rows with no allowed key must give lse -inf, output 0 and
finite gradients (``max_error`` rejects NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskir.canvas import Canvas
from maskir.ir import (
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Pattern,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    Strided,
    Stripes,
    Window,
)
from maskir.reference import reference_attention
from maskir.runtime.routing import routing_map

FWD_TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}
GRAD_TOL = {torch.float32: 1e-2, torch.bfloat16: 3e-2, torch.float16: 3e-2}


def _no_multiple_of_three(b, h, q_idx, kv_idx):
    return ((q_idx + kv_idx) % 3 != 0) & (kv_idx <= q_idx)


@dataclass(frozen=True)
class Case:
    """A pattern on a canvas, with the head count and the run-time data it needs."""

    pattern: Pattern
    shape: tuple[int, ...]
    heads: int = 2
    batch: int = 1

    def __str__(self) -> str:
        return f"{self.pattern}@{'x'.join(map(str, self.shape))}"


CATALOGUE = [
    Case(Full(), (128,)),
    Case(Causal(), (128,)),
    Case(Causal(dim=1), (8, 16)),
    Case(Window(9, 3), (128,)),
    Case(Window(1, 2, dim=0), (8, 16)),
    Case(Dilated(6, 3), (128,)),
    Case(Neighborhood(5), (8, 16)),
    Case(Neighborhood(4, stride=2, dilation=(1, 2)), (8, 16)),
    Case(Neighborhood(3, causal=(True, False, False)), (4, 4, 8)),
    Case(Blocks(4), (8, 16)),
    Case(Blocks((4, 8), offset=(2, 4)), (8, 16)),
    Case(Stripes(1, 4), (8, 16)),
    Case(Grid(4), (8, 16)),
    Case(Strided(7, 3), (128,)),
    Case(Columns(16, 3) & Causal(), (128,)),
    Case(Sink(5) | Window(8, 0), (128,)),
    Case(Prefix(40) | Causal(), (128,)),
    Case(Global((0, 77)), (128,)),
    Case(Distance(0, 1, 3), (8, 16)),
    Case(Segments(), (128,), batch=2),
    Case(Routing(32, 2), (128,), batch=2),
    Case(PerHead([Causal(), Window(4, 4), Full(), Dilated(4, 2)]), (128,), heads=4),
    Case(Predicate(_no_multiple_of_three), (128,)),
    Case((Causal() - Window(3, 0)) | ~Strided(2), (128,)),
]


def run_data(case: Case, q: torch.Tensor, k: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """Named kernel tensors and the matching ``reference_attention`` keywords for a data-dependent case."""
    generator = torch.Generator().manual_seed(1)
    named: dict[str, torch.Tensor] = {}
    reference: dict = {}
    if any(isinstance(node, Segments) for node in case.pattern.walk()):
        starts = torch.rand(case.batch, q.shape[2], generator=generator) < 0.05
        ids = torch.cumsum(starts, dim=1).to(torch.int32)  # a few packed documents per row
        named["segments_q"] = named["segments_kv"] = ids
        reference["segments"] = ids
    node = next((n for n in case.pattern.walk() if isinstance(n, Routing)), None)
    if node is not None:
        blocks = -(-q.shape[2] // node.block)
        scores = torch.rand(case.batch, case.heads, blocks, blocks, generator=generator)
        indices = scores.argsort(dim=-1)[..., : node.topk]
        named["routing_map"] = routing_map(q, k, node, indices)
        reference["routing"] = indices
    return named, reference


@dataclass
class Result:
    """Kernel and reference outputs of one run (forward and backward)."""

    out: torch.Tensor
    lse: torch.Tensor
    grads: tuple[torch.Tensor, ...]
    ref_out: torch.Tensor
    ref_lse: torch.Tensor
    ref_grads: tuple[torch.Tensor, ...]
    source: str = field(repr=False)


def compare(
    case: Case,
    attention,
    tensor_names: tuple[str, ...],
    static: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    head_dim: int = 32,
    kv_heads: int | None = None,
    score_mod=None,
    source: str = "",
) -> Result:
    """Forward and backward of ``attention`` (a backend's kernels for ``case``) and of the float64
    reference on the same random inputs; ``static`` are the tensors the kernels read on every call."""
    kv_heads = kv_heads or case.heads
    canvas = Canvas(case.shape)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(case.batch, case.heads, canvas.size, head_dim, generator=generator).to(dtype)
    k, v = (torch.randn(case.batch, kv_heads, canvas.size, head_dim, generator=generator).to(dtype) for _ in "kv")
    dout = torch.randn(q.shape, generator=generator).to(dtype)
    named, reference = run_data(case, q, k)
    named.update(static)
    tensors = [named[name] for name in tensor_names]
    scale = head_dim**-0.5
    out, lse = attention.forward(q, k, v, scale=scale, tensors=tensors)
    grads = attention.backward(q, k, v, out, lse, dout, scale=scale, tensors=tensors)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(
        *leaves, case.pattern, canvas, score_mod=score_mod, scale=scale, return_lse=True, **reference
    )
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    return Result(out, lse, grads, ref_out.detach(), ref_lse.detach(), ref_grads, source)


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel's result"
    return (got.double() - want).abs().max().item()


def lse_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "rows with no allowed key must have lse -inf"
    finite = torch.isfinite(want)
    return (got.double()[finite] - want[finite]).abs().max().item() if finite.any() else 0.0


def check(result: Result, dtype: torch.dtype) -> None:
    assert max_error(result.out, result.ref_out) <= FWD_TOL[dtype]
    assert lse_error(result.lse, result.ref_lse) <= FWD_TOL[dtype]
    for got, want in zip(result.grads, result.ref_grads):
        assert max_error(got, want) <= GRAD_TOL[dtype]


def alibi(score, b, h, q_idx, kv_idx):
    return score - (h + 1) * 0.125 * torch.abs(q_idx - kv_idx)


def softcap(score, b, h, q_idx, kv_idx):
    return 2.0 * torch.tanh(score / 2.0)
