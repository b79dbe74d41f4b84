"""TVM TensorIR kernels (built for llvm, run on CPU) against the float64 reference: output, LSE, gradients.

The same cases as the Triton kernels (tests/kernel_cases.py): every IR node, ragged lengths, a row with no
allowed key, GQA, 16-bit inputs, explicit layouts, a union of parts, score_mods. The same plan and the
same lowered predicate feed both backends; only the emission differs. The CUDA emission is checked to
lower to sm_90 source (no GPU or nvcc needed).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
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
from strategies import canvas_and_pattern

from maskir.canvas import Canvas
from maskir.codegen.tvm.emit import generate_tvm_source
from maskir.codegen.tvm.launch import TvmAttention, cuda_source
from maskir.ir import Blocks, Causal, Columns, Dilated, Neighborhood, PerHead, Predicate, Segments, Sink, Window
from maskir.planner import plan
from maskir.reference import reference_attention

pytest.importorskip("tvm")


def run(
    case: Case,
    planned,
    *,
    dtype: torch.dtype = torch.float32,
    head_dim: int = 32,
    kv_heads: int | None = None,
    score_mod=None,
    fused: bool | None = None,
) -> Result:
    """The llvm-built TVM kernels of ``planned`` against the float64 reference (``compare``); ``fused``:
    the backward as the fused kernel (True), as dQ then dK/dV (False), or as the balance expects (None)."""
    kv_heads = kv_heads or case.heads
    generated = generate_tvm_source(planned, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, score_mod=score_mod)
    attention = TvmAttention(planned, generated)
    attention.fused_backward = fused
    return compare(
        case,
        attention,
        generated.tensor_names,
        generated.static_tensors,
        dtype=dtype,
        head_dim=head_dim,
        kv_heads=kv_heads,
        score_mod=score_mod,
        source=generated.source,
    )


@pytest.mark.parametrize("index", range(len(CATALOGUE)), ids=[str(c) for c in CATALOGUE])
def test_forward_and_both_backwards_match_reference(index):
    """Output and LSE, and the gradients of the dQ-then-dK/dV kernels and of the fused backward: one test
    per node, so its module (which holds every kernel) is built once, on one worker."""
    case = CATALOGUE[index]
    planned = plan(case.pattern, Canvas(case.shape), heads=case.heads, block_q=64, block_kv=32)
    for fused in (False, True):
        result = run(case, planned, fused=fused)
        assert max_error(result.out, result.ref_out) <= FWD_TOL[torch.float32]
        assert lse_error(result.lse, result.ref_lse) <= FWD_TOL[torch.float32]
        for got, want in zip(result.grads, result.ref_grads):
            assert max_error(got, want) <= GRAD_TOL[torch.float32], "fused" if fused else "dq-then-dkdv"


@settings(max_examples=8, deadline=None)
@given(canvas_and_pattern(depth=2))
def test_random_pattern_forward_matches_reference(canvas_pattern):
    """Random nodes and combinators on random 1-3-D canvases, 16x16 tiles, through a built TVM module."""
    canvas, pattern = canvas_pattern
    planned = plan(pattern, canvas, heads=2, block_q=16, block_kv=16)
    generated = generate_tvm_source(planned, head_dim=8, dtype=torch.float32)
    attention = TvmAttention(planned, generated)
    q, k, v = (torch.randn(1, 2, canvas.size, 8, dtype=torch.float64) for _ in "qkv")
    tensors = [generated.static_tensors[name] for name in generated.tensor_names]
    out, lse = attention.forward(q.float(), k.float(), v.float(), scale=0.5, tensors=tensors)
    ref_out, ref_lse = reference_attention(q, k, v, pattern, canvas, scale=0.5, return_lse=True)
    assert max_error(out, ref_out) <= FWD_TOL[torch.float32]
    assert lse_error(lse, ref_lse) <= FWD_TOL[torch.float32]


def test_ragged_length_and_small_tiles():
    case = Case(Window(20, 5), (100,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2, block_q=16, block_kv=32)), torch.float32)


def test_row_with_no_allowed_key_gives_zero_output_and_finite_gradients():
    case = Case(Causal(-1), (96,))
    result = run(case, plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=32))
    assert torch.all(result.out[:, :, 0] == 0)
    assert torch.all(result.lse[:, :, 0] == float("-inf"))
    assert all(torch.isfinite(g).all() for g in result.grads)
    check(result, torch.float32)


@pytest.mark.parametrize("fused", [False, True], ids=["dq-then-dkdv", "fused"])
def test_gqa_head_reads_kv_head_of_its_group(fused):
    case = Case(PerHead([Causal(), Window(8, 8)]), (128,), heads=4, batch=2)
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=4), kv_heads=2, fused=fused), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs(dtype):
    case = Case(Window(30, 0) | Sink(4), (128,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), dtype=dtype), dtype)


@pytest.mark.parametrize("head_dim", [8, 64, 80])
def test_head_dims_need_no_padding(head_dim):
    case = Case(Causal(), (96,))
    check(run(case, plan(case.pattern, Canvas(case.shape), heads=2), head_dim=head_dim), torch.float32)


@pytest.mark.parametrize(
    "case, layout",
    [
        (Case(Neighborhood(5), (16, 16)), "tiled"),
        (Case(Blocks(4), (16, 16)), "window-major"),
        (Case(Dilated(5, 4), (100,)), "grouped"),
    ],
    ids=["tiled", "window-major", "grouped-ragged"],
)
def test_explicit_layout_reads_rows_through_token_tables(case, layout):
    planned = plan(case.pattern, Canvas(case.shape), heads=2, layout=layout)
    assert planned.layout.q_tokens is not None and planned.layout.kv_tokens is not None
    check(run(case, planned), torch.float32)


def test_union_of_parts_merges_by_log_sum_exp():
    case = Case((Window(63, 0) | Columns(32, 1)) & Causal(), (384,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, cost=lambda p: p.tile_counts.computed_pairs)
    assert len(planned.parts) == 2
    check(run(case, planned), torch.float32)


@pytest.mark.parametrize("fused", [False, True], ids=["dq-then-dkdv", "fused"])
@pytest.mark.parametrize("score_mod", [alibi, softcap], ids=["alibi", "softcap"])
def test_score_mods_and_their_derivatives(score_mod, fused):
    case = Case(Window(16, 16), (96,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2)
    check(run(case, planned, score_mod=score_mod, fused=fused), torch.float32)


TEMPERATURE = torch.tensor(0.5)  # a 0-d capture
STEPS = torch.linspace(-1.0, 1.0, 12)


def _same_half(b, h, q_idx, kv_idx):
    return (q_idx < 48) == (kv_idx < 48)  # == between two bools


def _tempered_steps(score, b, h, q_idx, kv_idx):
    # floordiv of a negative dividend inside an index: TVM 0.27 miscompiles a raw floordiv there
    return score * TEMPERATURE + STEPS[(q_idx - kv_idx) // 16 + 6]


@pytest.mark.parametrize(
    "pattern, score_mod",
    [(Predicate(_same_half) & Window(20, 20), None), (Window(20, 20), _tempered_steps)],
    ids=["bool-equality", "scalar-capture-negative-floordiv"],
)
def test_expressions_tvm_needs_rewritten(pattern, score_mod):
    case = Case(pattern, (96,))
    check(run(case, plan(pattern, Canvas(96), heads=2), score_mod=score_mod), torch.float32)


def test_source_is_tvmscript_with_the_lowered_predicate_per_part():
    planned = plan(Window(4, 0) | Sink(2), Canvas(64), heads=2, block_q=16, block_kv=16)
    source = generate_tvm_source(planned, head_dim=16, dtype=torch.float32).source
    assert source.startswith(f"# maskir 0.1 -- {planned.pattern} on Canvas((64,)), float32, head_dim 16, 2 heads;")
    for name in ("def fwd_0(", "def dq_0(", "def dkdv_0(", "def bwd_0(", "@I.ir_module"):
        assert name in source
    assert source.count("for w in T.parallel(n_work):") == 4 and "threadIdx" not in source
    assert "import" not in source  # tvm.script.from_source parses it: TVMScript only, no imports


def test_only_partial_tile_pairs_evaluate_the_predicate_a_row_at_a_time():
    """The predicate masks scores only under ``if e >= partial_start`` (PARTIAL entries follow the FULL
    ones in each list), in vectorised loops over a row's lanes."""
    planned = plan(Window(20, 5), Canvas(256), heads=2, block_q=32, block_kv=32)
    source = generate_tvm_source(planned, head_dim=16, dtype=torch.float32, vector_lanes=8).source
    lines = source.splitlines()
    writes = [
        i
        for i, line in enumerate(lines)
        if line.strip().startswith("S[r, ") and "= T.Select(" in line and 'T.float32("-inf")' in line
    ]
    assert len(writes) == 4  # forward, dQ, dK/dV, fused backward
    for i in writes:
        depth = len(lines[i]) - len(lines[i].lstrip())
        guards = [
            line
            for line in lines[:i]
            if line.strip() == "if e >= partial_start:" and len(line) - len(line.lstrip()) < depth
        ]
        assert guards, "the predicate is evaluated outside the PARTIAL branch"
        assert "T.vectorized(8)" in lines[i - 1]  # one row: 32 lanes in vectors of 8


def test_partial_tiles_evaluate_what_varies_with_one_side_outside_the_other_sides_loop():
    """Segments() & Causal() in the forward (rows: keys, lanes: queries): the queries' segment ids are
    gathered once per tile, before the row loop, into a lane buffer; a key's id is one scalar per row."""
    planned = plan(Segments() & Causal(), Canvas(256), heads=2, block_q=32, block_kv=32)
    source = generate_tvm_source(planned, head_dim=16, dtype=torch.float32, vector_lanes=8).source
    forward = source[source.index("def fwd_0(") : source.index("def dq_0(")].splitlines()
    guard = next(i for i, line in enumerate(forward) if line.strip() == "if e >= partial_start:")
    row_loop = next(i for i in range(guard, len(forward)) if forward[i].strip().startswith("for r in T.serial("))
    assert any("segments_q[" in line and line.strip().startswith("pa") for line in forward[guard:row_loop])
    key_id = next(line.strip() for line in forward[row_loop:] if "segments_kv[" in line)
    assert key_id.startswith("pa") and key_id.split(" = ")[0].isidentifier()  # a scalar, not a lane buffer


@pytest.mark.parametrize("lanes, registers", [(4, 16), (8, 16), (16, 32)], ids=["neon-like", "avx2", "avx512"])
def test_kernels_shaped_for_any_vector_width_compute_the_same(lanes, registers):
    """vector_lanes / vector_registers only reshape loops (lane splits, product row blocks)."""
    case = Case(Neighborhood(3), (8, 16))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=32, block_kv=64)
    generated = generate_tvm_source(
        planned, head_dim=24, dtype=torch.float32, vector_lanes=lanes, vector_registers=registers
    )
    attention = TvmAttention(planned, generated)
    check(compare(case, attention, generated.tensor_names, generated.static_tensors, head_dim=24), torch.float32)


def test_one_and_two_threads_give_the_same_result():
    """Units are independent (each output row has one writer): the thread count changes nothing."""
    case = Case(Dilated(6, 3), (128,))
    planned = plan(case.pattern, Canvas(case.shape), heads=2, block_q=16, block_kv=16)
    generated = generate_tvm_source(planned, head_dim=16, dtype=torch.float32)
    attention = TvmAttention(planned, generated)
    q, k, v, dout = (torch.randn(1, 2, 128, 16) for _ in range(4))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out, lse = attention.forward(q, k, v, scale=0.25, tensors=[])
            results.append((out, lse, *attention.backward(q, k, v, out, lse, dout, scale=0.25, tensors=[])))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_cuda_emission_binds_blocks_and_threads_and_lowers_to_sm90_source():
    planned = plan(Neighborhood(3), Canvas((8, 8)), heads=2, block_q=16, block_kv=16)
    generated = generate_tvm_source(planned, head_dim=32, dtype=torch.bfloat16, kv_heads=1, target="cuda")
    assert 'thread="threadIdx.x"' in generated.source
    cuda = cuda_source(generated)
    for kernel in ("fwd_0_kernel", "dq_0_kernel", "dkdv_0_kernel"):
        assert f'extern "C" __global__ void __launch_bounds__(16) {kernel}(' in cuda
    assert "nv_bfloat16" in cuda


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_dim": 0}, "head_dim"),
        ({"kv_heads": 3}, "heads_kv"),
        ({"dtype": torch.int8}, "dtype"),
        ({"target": "rocm"}, "target"),
    ],
)
def test_generate_tvm_source_rejects_bad_arguments(kwargs, message):
    planned = plan(Causal(), Canvas(64), heads=2)
    with pytest.raises(ValueError, match=message):
        generate_tvm_source(planned, **{"head_dim": 32, "dtype": torch.float32, **kwargs})


def test_cpu_only_and_cuda_source_needs_a_cuda_module():
    planned = plan(Causal(), Canvas(64), heads=2, block_q=16, block_kv=16)
    generated = generate_tvm_source(planned, head_dim=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="target='cuda'"):
        cuda_source(generated)
    attention = TvmAttention(planned, generated)
    q = torch.randn(1, 2, 64, 16)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU tensors"):
            attention.forward(q.cuda(), q.cuda(), q.cuda(), scale=0.25, tensors=[])
    with pytest.raises(ValueError, match="q must be"):
        attention.forward(q[:, :1], q, q, scale=0.25, tensors=[])
