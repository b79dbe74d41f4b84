"""Triton kernels (the interpreter on CPU) against the float64 reference: output, LSE and gradients.

Every IR node is in ``CATALOGUE`` and runs through the planner, ``generate_source`` and
``TritonAttention``; explicit layouts are forced with ``plan(..., layout=...)`` and the union test checks
that the planner still splits it, so the gather and merge paths stay covered. Tolerances against
float64: fp32 2e-3 (output) and 1e-2 (gradients), bf16 3e-2 for both. Shapes are small and tiles large
(64 q x 32 kv) to keep the interpreter fast.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest
import torch

from maskir.canvas import Canvas
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.score_grad import score_derivative
from maskir.codegen.common.score_mod import trace_score_mod
from maskir.codegen.triton.configs import KernelConfig, LaunchOptions
from maskir.codegen.triton.emit import generate_source
from maskir.codegen.triton.launch import TritonAttention
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
from maskir.planner import plan
from maskir.reference import reference_attention
from maskir.runtime.routing import routing_map

FWD_TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}
GRAD_TOL = {torch.float32: 1e-2, torch.bfloat16: 3e-2, torch.float16: 3e-2}
_modules = itertools.count()


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


def import_module(source: str, directory) -> object:
    path = directory / f"maskir_kernel_{next(_modules)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(
    case: Case,
    planned,
    directory,
    *,
    dtype: torch.dtype = torch.float32,
    head_dim: int = 32,
    kv_heads: int | None = None,
    score_mod=None,
    config: KernelConfig | None = None,
) -> Result:
    """Forward and backward of the kernels and of the float64 reference on the same random inputs."""
    kv_heads = kv_heads or case.heads
    generated = generate_source(
        planned,
        head_dim=head_dim,
        dtype=dtype,
        kv_heads=kv_heads,
        score_mod=score_mod,
        interpret=True,
        config=config,
    )
    attention = TritonAttention(import_module(generated.source, directory), planned, generated)
    canvas = Canvas(case.shape)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(case.batch, case.heads, canvas.size, head_dim, generator=generator).to(dtype)
    k, v = (torch.randn(case.batch, kv_heads, canvas.size, head_dim, generator=generator).to(dtype) for _ in "kv")
    dout = torch.randn(q.shape, generator=generator).to(dtype)
    named, reference = run_data(case, q, k)
    named.update(attention.static_tensors(q.device))
    tensors = [named[name] for name in generated.tensor_names]
    scale = head_dim**-0.5
    out, lse = attention.forward(q, k, v, scale=scale, tensors=tensors)
    grads = attention.backward(q, k, v, out, lse, dout, scale=scale, tensors=tensors)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(
        *leaves, case.pattern, canvas, score_mod=score_mod, scale=scale, return_lse=True, **reference
    )
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    return Result(out, lse, grads, ref_out.detach(), ref_lse.detach(), ref_grads, generated.source)


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel's result"
    return (got.double() - want).abs().max().item()


def lse_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "rows with no allowed key must have lse -inf"
    finite = torch.isfinite(want)
    return (got.double()[finite] - want[finite]).abs().max().item() if finite.any() else 0.0


@cache
def catalogue_result(index: int, directory) -> Result:
    case = CATALOGUE[index]
    planned = plan(case.pattern, Canvas(case.shape), heads=case.heads, block_q=64, block_kv=32)
    return run(case, planned, directory)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


@pytest.mark.parametrize("index", range(len(CATALOGUE)), ids=[str(c) for c in CATALOGUE])
def test_forward_matches_reference(index, module_dir):
    result = catalogue_result(index, module_dir)
    assert max_error(result.out, result.ref_out) <= FWD_TOL[torch.float32]
    assert lse_error(result.lse, result.ref_lse) <= FWD_TOL[torch.float32]


@pytest.mark.parametrize("index", range(len(CATALOGUE)), ids=[str(c) for c in CATALOGUE])
def test_gradients_match_reference(index, module_dir):
    result = catalogue_result(index, module_dir)
    for got, want in zip(result.grads, result.ref_grads):
        assert max_error(got, want) <= GRAD_TOL[torch.float32]


def check(result: Result, dtype: torch.dtype) -> None:
    assert max_error(result.out, result.ref_out) <= FWD_TOL[dtype]
    assert lse_error(result.lse, result.ref_lse) <= FWD_TOL[dtype]
    for got, want in zip(result.grads, result.ref_grads):
        assert max_error(got, want) <= GRAD_TOL[dtype]


def test_ragged_length_masks_the_last_tiles(tmp_path):
    case = Case(Window(20, 5), (100,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=32)
    check(run(case, planned, tmp_path), torch.float32)


def test_row_with_no_allowed_key_gives_zero_output_and_finite_gradients(tmp_path):
    case = Case(Causal(-1), (96,))
    result = run(case, plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=32), tmp_path)
    assert torch.all(result.out[:, :, 0] == 0)
    assert torch.all(result.lse[:, :, 0] == float("-inf"))
    assert all(torch.isfinite(g).all() for g in result.grads)
    check(result, torch.float32)


def test_gqa_head_reads_kv_head_of_its_group(tmp_path):
    case = Case(PerHead([Causal(), Window(8, 8)]), (128,), heads=4, batch=2)
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=4), tmp_path, kv_heads=2), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs(tmp_path, dtype):
    case = Case(Window(30, 0) | Sink(4), (128,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), tmp_path, dtype=dtype), dtype)


@pytest.mark.parametrize("head_dim", [16, 64, 80])
def test_head_dims_including_padded(tmp_path, head_dim):
    case = Case(Causal(), (96,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), tmp_path, head_dim=head_dim), torch.float32)


def test_split_tiles_and_chunked_steps(tmp_path):
    """GPU configurations may split a tile among programs and step through the other side in chunks."""
    case = Case(Window(20, 5) | Sink(3), (100,))
    single = LaunchOptions(num_warps=4, num_stages=1)
    config = KernelConfig(16, 16, 16, 16, 16, 16, 16, single, single, single, single)
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=32)
    check(run(case, planned, tmp_path, config=config), torch.float32)


@pytest.mark.parametrize(
    "case, layout",
    [
        (Case(Neighborhood(5), (16, 16)), "tiled"),
        (Case(Blocks(4), (16, 16)), "window-major"),
        (Case(Dilated(5, 4), (100,)), "grouped"),
    ],
    ids=["tiled", "window-major", "grouped-ragged"],
)
def test_explicit_layout_gathers_rows_by_token_table(tmp_path, case, layout):
    planned = plan(case.pattern, Canvas(case.shape), heads=2, layout=layout)
    assert planned.layout.q_tokens is not None and planned.layout.kv_tokens is not None
    check(run(case, planned, tmp_path), torch.float32)


def test_union_of_parts_merges_by_log_sum_exp(tmp_path):
    """Local + columns split into a band part and a part that gathers the kv columns (forced here by
    ranking on computed pairs: at 384 tokens the simulator's launch overhead prefers one part)."""
    case = Case((Window(63, 0) | Columns(32, 1)) & Causal(), (384,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, cost=lambda p: p.tile_counts.computed_pairs)
    assert len(planned.parts) == 2 and planned.parts[1].layout.kv_tokens is not None
    check(run(case, planned, tmp_path), torch.float32)


def alibi(score, b, h, q_idx, kv_idx):
    return score - (h + 1) * 0.125 * torch.abs(q_idx - kv_idx)


def test_score_mod_alibi(tmp_path):
    case = Case(Causal(), (96,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), tmp_path, score_mod=alibi), torch.float32)


def softcap(score, b, h, q_idx, kv_idx):
    return 2.0 * torch.tanh(score / 2.0)


def test_score_mod_softcap_gradient_uses_its_derivative(tmp_path):
    case = Case(Window(16, 16), (96,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), tmp_path, score_mod=softcap), torch.float32)


BIAS = torch.linspace(-1.0, 1.0, 7)
SCORE_MODS = {
    "scale": lambda score, b, h, q, kv: score * 0.5,
    "softcap": softcap,
    "alibi": alibi,
    "where": lambda score, b, h, q, kv: torch.where(q >= kv, score, 2.0 * score - 1.0),
    "rational": lambda score, b, h, q, kv: torch.exp(score) / (1.0 + score * score) + BIAS[(q - kv) % 7],
    "max_abs": lambda score, b, h, q, kv: torch.maximum(torch.abs(score - 0.25), torch.sqrt(score * score + 1.0)),
}


@pytest.mark.parametrize("name", SCORE_MODS)
def test_score_derivative_matches_autograd(name):
    fn = SCORE_MODS[name]
    q, kv = torch.arange(6)[:, None], torch.arange(5)[None, :]
    score = torch.linspace(-3.0, 3.0, 30, dtype=torch.float64).reshape(6, 5).requires_grad_()
    (want,) = torch.autograd.grad(fn(score, 0, 1, q, kv).sum(), score)
    derivative = score_derivative(trace_score_mod(fn))
    got = evaluate(derivative, {"score": score.detach().numpy(), "b": 0, "h": 1, "q": q.numpy(), "kv": kv.numpy()})
    assert np.allclose(np.broadcast_to(got, want.shape), want.numpy(), atol=1e-9)


def test_generated_source_names_its_constants_and_shares_the_tile_step(module_dir):
    source = catalogue_result(1, module_dir).source
    assert source.startswith("# maskir 0.1 -- Causal() on Canvas((128,)), fp32, head_dim 32, 2 heads\n")
    for name in ("BLOCK_M", "BLOCK_N", "HEAD_DIM", "GQA_GROUP", "UPCAST"):
        assert f"\n{name} = tl.constexpr(" in source
    assert source.count("def _fwd_step(") == 1 and source.count("= _fwd_step(") == 2
    assert "IS_FULL_TILE=True" in source and "IS_FULL_TILE=False" in source


@pytest.mark.parametrize(
    "kwargs, message",
    [({"head_dim": 8}, "head_dim"), ({"kv_heads": 3}, "heads_kv"), ({"dtype": torch.int8}, "dtype")],
)
def test_generate_source_rejects_bad_arguments(kwargs, message):
    planned = plan(Causal(), Canvas(64), heads=2)
    with pytest.raises(ValueError, match=message):
        generate_source(planned, **{"head_dim": 32, "dtype": torch.float32, **kwargs})
