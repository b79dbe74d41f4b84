"""render_triton / render_triton_function: the rendered text, and that it runs.

The rendered ``_allowed`` runs inside a small Triton kernel (the interpreter on CPU) that writes the
[BLOCK_M, BLOCK_N] mask of every tile, with padding positions passed as -1 as the real kernels do; the
result must be the reference mask. ``_score_mod`` likewise against calling the score_mod. The text
goes through a file and importlib because ``@triton.jit`` reads the source of what it compiles.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import triton  # noqa: F401 (conftest has set TRITON_INTERPRET before this import when there is no GPU)
from hypothesis import given, settings
from strategies import canvas_and_pattern
from test_lowering import BATCH, C1, C2, C3, HEADS, checkerboard, run_time_data, same_document
from test_score_mod import SCORE_MODS, alibi, bucketed_per_head, masked_by_keep_and_length, soft_cap

from maskir.canvas import Canvas
from maskir.codegen.common import expr as E  # noqa: N812
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.expr import topo
from maskir.codegen.common.lower import lower_predicate
from maskir.codegen.common.score_mod import trace_score_mod
from maskir.codegen.triton.render import range_checks, render_triton, render_triton_function, tensor_args
from maskir.ir import (
    Blocks,
    Causal,
    Dilated,
    Distance,
    Full,
    Global,
    Neighborhood,
    PerHead,
    Predicate,
    Routing,
    Segments,
    Sink,
    Strided,
    Window,
)
from maskir.reference import reference_mask

Q, KV = E.var("q"), E.var("kv")
BLOCK = 16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

HEADER = "import triton\nimport triton.language as tl\n\n\n"

MASK_KERNEL = """
@triton.jit
def _mask_kernel(out_ptr, n_q, n_kv, heads, {params}BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    kv = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    inside = (q < n_q) & (kv < n_kv)
    b = tl.program_id(2) // heads
    h = tl.program_id(2) % heads
    allowed = _allowed(b, h, tl.where(q < n_q, q, -1), tl.where(kv < n_kv, kv, -1), {args})
    value = tl.where(allowed, 1, 0) + tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    tl.store(out_ptr + tl.program_id(2) * n_q * n_kv + q * n_kv + kv, value.to(tl.int8), mask=inside)
"""

SCORE_KERNEL = """
@triton.jit
def _score_kernel(score_ptr, out_ptr, n_q, n_kv, heads, {params}BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    kv = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    inside = (q < n_q) & (kv < n_kv)
    b = tl.program_id(2) // heads
    h = tl.program_id(2) % heads
    offsets = tl.program_id(2) * n_q * n_kv + q * n_kv + kv
    score = tl.load(score_ptr + offsets, mask=inside, other=0.0)
    value = _score_mod(score, b, h, tl.where(q < n_q, q, -1), tl.where(kv < n_kv, kv, -1), {args})
    tl.store(out_ptr + offsets, value + tl.zeros([BLOCK_M, BLOCK_N], tl.float32), mask=inside)
"""


def _import(path, source: str):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernel_source(template: str, function: str, expr: E.Expr, variables: tuple[str, ...]) -> str:
    tensors = tensor_args(expr)
    params = "".join(f"{p}, " for p in tensors)
    body = render_triton_function(function, expr, (*variables, *tensors))
    return HEADER + body + template.format(params=params, args=", ".join(tensors))


def _tensor_values(expr: E.Expr, data: dict) -> list:
    """Pointer and strides of each tensor the expression loads, in tensor_args order."""
    values = []
    for ref in expr.tensors():
        tensor = torch.as_tensor(data[ref.name] if ref.name in data else ref.data).to(DEVICE)
        values += [tensor, *tensor.stride()]
    return values


def scalar_and_block_bools(b, h, q_idx, kv_idx):
    """Bools that depend only on b and h next to ones that vary over the tile."""
    return (
        ~((h >= 1) & (q_idx >= kv_idx))
        | torch.where(q_idx < 5, h == 0, b == 1)
        | torch.where(kv_idx > 30, h == 2, q_idx == 3)
    )


MASK_CASES = [
    (Full(), C1, None),
    (Causal(), Canvas(20), Canvas(33)),
    (Window(4, 2) | Sink(3), C1, None),
    (Dilated(3, 2), C1, None),
    (Strided(4, 9), C1, None),
    (Blocks((2, 3), offset=(1, 0)), C2, None),
    (Neighborhood(3, dilation=(2, 1), stride=(1, 2), causal=(True, False)), C2, None),
    (Neighborhood(2, dilation=(1, 2, 2), causal=(True, False, True)), C3, None),
    ((Distance(0, 1, 3) & Window(2, 2, dim=1)) | (Distance(0, 0, 1) & Window(0, 0, dim=1)), C2, None),
    (Global(tuple(range(0, 36, 3))), C1, None),
    (Segments() & Causal(), C1, None),
    (Routing(8, 2), Canvas(20), Canvas(33)),
    (PerHead([Causal(), Predicate(same_document)]), C1, None),
    (Predicate(lambda b, h, q_idx, kv_idx: ((q_idx - kv_idx) % 3 == 1) | ((q_idx - kv_idx) // 4 == -1)), C1, None),
    (Predicate(checkerboard) & ~Window(2, 2), C1, None),
    (Predicate(scalar_and_block_bools), C1, None),
]


@pytest.mark.parametrize(("pattern", "canvas", "kv_canvas"), MASK_CASES, ids=lambda x: str(x))
def test_rendered_allowed_runs_and_equals_reference_mask(pattern, canvas, kv_canvas, tmp_path):
    kv_canvas = kv_canvas or canvas
    expr = lower_predicate(pattern, canvas, kv_canvas)
    module = _import(tmp_path / "mask_module.py", _kernel_source(MASK_KERNEL, "_allowed", expr, ("b", "h", "q", "kv")))
    segments, routing, block_map = run_time_data(canvas, kv_canvas, pattern)
    data = {"segments_q": segments[0], "segments_kv": segments[1], "routing_map": block_map}
    out = torch.zeros(BATCH * HEADS, canvas.size, kv_canvas.size, dtype=torch.int8, device=DEVICE)
    grid = (triton.cdiv(canvas.size, BLOCK), triton.cdiv(kv_canvas.size, BLOCK), BATCH * HEADS)
    module._mask_kernel[grid](
        out, canvas.size, kv_canvas.size, HEADS, *_tensor_values(expr, data), BLOCK_M=BLOCK, BLOCK_N=BLOCK
    )
    got = out.view(BATCH, HEADS, canvas.size, kv_canvas.size).bool().cpu().numpy()
    for b in range(BATCH):
        for h in range(HEADS):
            want = reference_mask(pattern, canvas, kv_canvas, batch=b, head=h, segments=segments, routing=routing)
            np.testing.assert_array_equal(got[b, h], want, err_msg=f"b={b}, h={h}")


@pytest.mark.parametrize("score_mod", SCORE_MODS, ids=lambda f: f.__name__)
def test_rendered_score_mod_runs_and_equals_calling_it(score_mod, tmp_path):
    from test_score_mod import B, H, N

    expr = trace_score_mod(score_mod)
    source = _kernel_source(SCORE_KERNEL, "_score_mod", expr, ("score", "b", "h", "q", "kv"))
    module = _import(tmp_path / "score_module.py", source)
    score = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(1)) * 10
    out = torch.zeros_like(score, device=DEVICE)
    grid = (triton.cdiv(N, BLOCK), triton.cdiv(N, BLOCK), B * H)
    module._score_kernel[grid](score.to(DEVICE), out, N, N, H, *_tensor_values(expr, {}), BLOCK_M=BLOCK, BLOCK_N=BLOCK)
    index = (torch.arange(B).view(-1, 1, 1, 1), torch.arange(H).view(1, -1, 1, 1))
    index += (torch.arange(N).view(1, 1, -1, 1), torch.arange(N).view(1, 1, 1, -1))
    want = torch.broadcast_to(score_mod(score.double(), *index), score.shape).float()
    torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-5)


# -- the rendered text (before/after) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        (KV <= Q, "kv <= q"),
        (E.eq(Q % 4, (KV + 1) % 4), "q % 4 == (kv + 1) % 4"),
        ((Q - KV) % 4, "tl.where((q - kv) % 4 < 0, (q - kv) % 4 + 4, (q - kv) % 4)"),
        ((Q - KV) // 4, "tl.where((q - kv) % 4 < 0, (q - kv) // 4 - 1, (q - kv) // 4)"),
        (E.minimum(abs(Q - KV), 3), "tl.minimum(tl.abs(q - kv), 3)"),
        (E.tanh(E.var("score")), "1.0 - 2.0 / (tl.exp(2.0 * score) + 1.0)"),
        (E.to_float(Q - KV) * 0.5, "(q - kv).to(tl.float32) * 0.5"),
        (E.const(True), "tl.full([1, 1], True, tl.int1)"),
        ((E.var("h") >= 1) & (KV <= Q), "tl.where(h >= 1, kv <= q, False)"),
        ((E.var("h") >= 1) | (KV <= Q), "tl.where(h >= 1, True, kv <= q)"),
        (
            E.where(KV <= Q, E.var("h") >= 1, E.eq(KV, Q)),
            "tl.where(h >= 1, (kv <= q) | (kv == q), (kv > q) & (kv == q))",
        ),
        (E.where(Q >= KV, E.var("score"), -float("inf")), 'tl.where(q >= kv, score, float("-inf"))'),
        (
            E.load(E.TensorRef("bias", "float", (None, 8)), E.var("h"), Q - KV),
            "tl.load(bias_ptr + h * bias_stride0 + (q - kv) * bias_stride1, "
            "mask=(q - kv >= 0) & (q - kv < 8), other=0).to(tl.float32)",
        ),
        (
            E.load(E.TensorRef("keep", "bool", (5,)), KV),
            "tl.load(keep_ptr + kv * keep_stride0, mask=(kv >= 0) & (kv < 5), other=0) != 0",
        ),
        (
            E.load(E.TensorRef("bias", "float", (3, 8)), E.var("h"), KV),
            "tl.load(bias_ptr + h * bias_stride0 + kv * bias_stride1, "
            "mask=tl.where((h >= 0) & (h < 3), (kv >= 0) & (kv < 8), False), other=0).to(tl.float32)",
        ),
    ],
    ids=[
        "compare",
        "mod",
        "negative_mod",
        "negative_floordiv",
        "minimum",
        "tanh",
        "to_float",
        "constant",
        "scalar_and",
        "scalar_or",
        "scalar_branch",
        "where",
        "load",
        "bool_load",
        "scalar_and_block_load",
    ],
)
def test_rendered_expression_text(expr, text):
    assert render_triton(expr) == text


def test_rendered_function_computes_shared_parts_once():
    expr = lower_predicate(Segments() & Neighborhood(3), C1)
    source = render_triton_function("_allowed", expr, ("b", "h", "q", "kv", *tensor_args(expr)))
    assert source == textwrap.dedent(
        """\
        @triton.jit
        def _allowed(b, h, q, kv, segments_kv_ptr, segments_kv_stride0, segments_kv_stride1, segments_q_ptr, segments_q_stride0, segments_q_stride1):
            e0 = tl.load(segments_q_ptr + b * segments_q_stride0 + q * segments_q_stride1, mask=(q >= 0) & (q < 37), other=0).to(tl.int32)
            e1 = tl.load(segments_kv_ptr + b * segments_kv_stride0 + kv * segments_kv_stride1, mask=(kv >= 0) & (kv < 37), other=0).to(tl.int32)
            return ((kv - (tl.minimum(tl.maximum(q, 1), 35) - 1)).to(tl.uint32, bitcast=True) <= 2) & (e0 == e1)
        """
    )


@settings(max_examples=200)
@given(canvas_and_pattern())
def test_range_checks_keep_the_predicate_s_value(canvas_pattern):
    """Pairs of bounds become in_range nodes without changing any (b, h, q, kv) value."""
    canvas, pattern = canvas_pattern
    expr = lower_predicate(pattern, canvas)
    segments, _, block_map = run_time_data(canvas, canvas, pattern)
    tables = {"segments_q": segments[0], "segments_kv": segments[1], "routing_map": block_map}
    q, kv = np.arange(-1, canvas.size)[:, None], np.arange(-1, canvas.size)[None, :]  # -1: a padding slot
    for b, h in itertools.product(range(BATCH), range(HEADS)):
        env = {"b": b, "h": h, "q": q, "kv": kv, **tables}
        np.testing.assert_array_equal(evaluate(range_checks(expr), env), evaluate(expr, env))


@pytest.mark.parametrize(
    "expr, ranges",
    [
        ((Q - 3 <= KV) & (KV <= Q), [(KV, Q - 3, 3)]),  # a causal window: kv in [q - 3, q]
        ((KV < Q + 2) & (KV > Q - 2), [(KV, Q - 1, 2)]),  # strict bounds move their constants
        ((Q >= 2) & ((Q < 4) & KV.eq(Q)), [(Q, E.const(2), 1)]),  # found through nested &
        ((Q - 3 <= KV) & (KV <= Q - 4), []),  # an empty range is left alone
        ((Q <= KV) & (KV <= 2 * Q), []),  # a width that is not constant
    ],
    ids=["window", "strict", "nested", "empty", "variable width"],
)
def test_range_checks_pair_a_lower_and_an_upper_bound_of_one_value(expr, ranges):
    found = [(n.args[0], n.args[1], n.value) for n in topo(range_checks(expr)) if n.op == "in_range"]
    assert found == ranges


def test_tensor_args_list_pointer_and_strides_sorted_by_name():
    expr = lower_predicate(Segments() & Routing(8, 2), C1)
    assert tensor_args(expr) == (
        "routing_map_ptr",
        *(f"routing_map_stride{d}" for d in range(4)),
        "segments_kv_ptr",
        "segments_kv_stride0",
        "segments_kv_stride1",
        "segments_q_ptr",
        "segments_q_stride0",
        "segments_q_stride1",
    )


def test_render_function_names_missing_args():
    expr = lower_predicate(Segments(), C1)
    with pytest.raises(ValueError, match=r"lack \['segments_kv_ptr'"):
        render_triton_function("_allowed", expr, ("b", "h", "q", "kv"))


# -- the same text compiles for a GPU (sm_90) with the real compiler, no GPU needed ---------------------

COMPILE_CHECK = """
import importlib.util, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = importlib.util.spec_from_file_location("rendered", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for kernel, signature in [(module._mask_kernel, {mask_signature}), (module._score_kernel, {score_signature})]:
    source = ASTSource(fn=kernel, signature=signature, constexprs={{"BLOCK_M": 64, "BLOCK_N": 64}})
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={{"num_warps": 4}})
print("compiled")
"""


def _signature(first: dict, expr: E.Expr) -> dict:
    signature = dict(first)
    for ref in expr.tensors():
        signature[f"{ref.name}_ptr"] = {"bool": "*i1", "int": "*i32", "float": "*fp32"}[ref.dtype]
        signature.update({f"{ref.name}_stride{d}": "i32" for d in range(ref.ndim)})
    return {**signature, "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}


def test_rendered_functions_compile_for_sm90(tmp_path):
    mask = lower_predicate(
        Neighborhood(3, dilation=2, stride=2) & Segments()
        | PerHead([Routing(8, 2), Global(tuple(range(0, 30, 3)))])
        | Predicate(lambda b, h, q_idx, kv_idx: (q_idx - kv_idx) % 3 == 1)
        | Predicate(scalar_and_block_bools),
        C2,
    )

    def every_score_feature(score, b, h, q_idx, kv_idx):
        biased = bucketed_per_head(alibi(score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)
        return soft_cap(masked_by_keep_and_length(biased, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)

    score = trace_score_mod(every_score_feature)
    source = (
        _kernel_source(MASK_KERNEL, "_allowed", mask, ("b", "h", "q", "kv"))
        + "\n"
        + render_triton_function("_score_mod", score, ("score", "b", "h", "q", "kv", *tensor_args(score)))
        + SCORE_KERNEL.format(params="".join(f"{p}, " for p in tensor_args(score)), args=", ".join(tensor_args(score)))
    )
    path = tmp_path / "rendered.py"
    path.write_text(source)
    scalars = {"n_q": "i32", "n_kv": "i32", "heads": "i32"}
    check = COMPILE_CHECK.format(
        mask_signature=_signature({"out_ptr": "*i8", **scalars}, mask),
        score_signature=_signature({"score_ptr": "*fp32", "out_ptr": "*fp32", **scalars}, score),
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", check, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
