"""Triton kernels (the interpreter on CPU) against the float64 reference: output, LSE and gradients.

Every IR node is in ``CATALOGUE`` (tests/kernel_cases.py, shared with the TVM backend's tests) and runs
through the planner, ``generate_source`` and ``TritonAttention``; explicit layouts are forced with
``plan(..., layout=...)`` and the union test checks that the planner still splits it, so the gather and
merge paths stay covered. Tolerances against float64 (``check``): fp32 2e-3 (output) and 1e-2
(gradients), 16-bit 3e-2 for both. Shapes are small and tiles large (64 q x 32 kv) to keep the
interpreter fast.
"""

from __future__ import annotations

import importlib.util
import itertools
from functools import cache

import numpy as np
import pytest
import torch
from kernel_cases import (
    CATALOGUE,
    FWD_TOL,
    GRAD_TOL,
    Case,
    Result,
    alibi,
    check,
    compare,
    lse_error,
    max_error,
    softcap,
)

from maskir.canvas import Canvas
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.score_grad import score_derivative
from maskir.codegen.common.score_mod import trace_score_mod
from maskir.codegen.triton.configs import KernelConfig, LaunchOptions, choose_config
from maskir.codegen.triton.emit import generate_source
from maskir.codegen.triton.launch import TritonAttention
from maskir.ir import (
    Blocks,
    Causal,
    Columns,
    Dilated,
    Neighborhood,
    PerHead,
    Routing,
    Segments,
    Sink,
    Window,
)
from maskir.planner import plan
from maskir.runtime.gating import CallGates, GatedKernels

_modules = itertools.count()


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
    """The interpreted Triton kernels of ``planned`` against the float64 reference (``compare``)."""
    generated = generate_source(
        planned,
        head_dim=head_dim,
        dtype=dtype,
        kv_heads=kv_heads or case.heads,
        score_mod=score_mod,
        interpret=True,
        config=config,
    )
    attention = TritonAttention(import_module(generated.source, directory), planned, generated)
    static = attention.static_tensors(torch.device("cpu"))
    if planned.dynamic:  # as the runtime runs them: each call walks the lists its data leaves open
        attention = GatedKernels(attention, CallGates(planned, generated.tensor_names))
    return compare(
        case,
        attention,
        generated.tensor_names,
        static,
        dtype=dtype,
        head_dim=head_dim,
        kv_heads=kv_heads,
        score_mod=score_mod,
        source=generated.source,
    )


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


@pytest.mark.parametrize("swap_ab", [False, True], ids=["kv-major dK/dV", "swapAB dK/dV"])
def test_split_tiles_and_chunked_steps(tmp_path, swap_ab):
    """GPU configurations may split a tile among programs and step through the other side in chunks; the
    dK/dV step may work on [q, kv] tiles (accumulating dK^T, dV^T) instead of [kv, q]."""
    case = Case(Window(20, 5) | Sink(3), (100,))
    single = LaunchOptions(num_warps=4, num_stages=1)
    config = KernelConfig(16, 16, 16, 16, 16, 16, 16, swap_ab, single, single, single, single)
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=32)
    check(run(case, planned, tmp_path, config=config), torch.float32)


@pytest.mark.parametrize(
    "block_kv, dtype, capability, swapped",
    [
        (32, torch.bfloat16, (9, 0), True),  # kv rows below wgmma's M = 64: swapAB
        (64, torch.bfloat16, (9, 0), False),
        (32, torch.float32, (9, 0), False),  # tf32 wgmma reads no transposed operands
        (32, torch.bfloat16, (8, 0), False),  # no wgmma before Hopper
    ],
)
def test_dkdv_swaps_ab_where_kv_tiles_are_too_narrow_for_wgmma(block_kv, dtype, capability, swapped):
    config = choose_config(64, block_kv, 128, dtype, interpret=False, capability=capability)
    assert config.dkdv_swap_ab is swapped
    if swapped:  # M of S and dP is the q chunk: a full 64 of them
        assert config.dkdv_chunk_m == 64


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


@pytest.mark.parametrize(
    "case, kv_heads",
    [
        (Case(Segments() & Causal(), (256,), batch=2), None),
        (Case(Segments() | Causal(), (128,), batch=2), None),  # FULL causal entries stay in the gated lists
        (Case(Routing(32, 2) & Causal(), (256,), heads=4, batch=2), 2),  # per-head lists, GQA 4:2
    ],
    ids=["documents", "documents-or-causal", "routing-gqa"],
)
def test_run_time_gates_walk_only_the_open_tiles(tmp_path, case, kv_heads):
    """Per call, the kernels walk compacted lists (maskir.runtime.gating.compact) of the tiles the data
    leaves open; FULL entries and the per-head routing choice must survive the compaction."""
    planned = plan(case.pattern, Canvas(case.shape), heads=case.heads, block_q=32, block_kv=32)
    check(run(case, planned, tmp_path, kv_heads=kv_heads), torch.float32)


def test_union_of_parts_merges_by_log_sum_exp(tmp_path):
    """Local + columns split into a band part and a part that gathers the kv columns (forced here by
    ranking on computed pairs: at 384 tokens the simulator's launch overhead prefers one part)."""
    case = Case((Window(63, 0) | Columns(32, 1)) & Causal(), (384,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, cost=lambda p: p.tile_counts.computed_pairs)
    assert len(planned.parts) == 2 and planned.parts[1].layout.kv_tokens is not None
    check(run(case, planned, tmp_path), torch.float32)


def test_score_mod_alibi(tmp_path):
    case = Case(Causal(), (96,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), tmp_path, score_mod=alibi), torch.float32)


@pytest.mark.parametrize("block_kv", [32, 64], ids=["swapAB dK/dV", "kv-major dK/dV"])
def test_score_mod_softcap_gradient_uses_its_derivative(tmp_path, block_kv):
    case = Case(Window(16, 16), (96,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=64, block_kv=block_kv)
    check(run(case, planned, tmp_path, score_mod=softcap), torch.float32)


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
