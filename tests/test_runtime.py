"""The public runtime: maskir.attention / maskir.compile, autograd, the torch.library ops, input checks.

These run the "reference" backend (float64 dense) so they check the runtime's plumbing on CPU quickly;
tests/test_triton_kernels.py checks the generated kernels and tests/gpu/ repeats both on a GPU.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import maskir
from maskir import Canvas, Causal, Neighborhood, Routing, Segments, Window
from maskir.reference import reference_attention


def qkv(batch=1, heads=2, n=64, dim=16, kv_heads=None, dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    shapes = [(batch, heads, n, dim), *[(batch, kv_heads or heads, n, dim)] * 2]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_(requires_grad) for s in shapes]


def test_attention_equals_the_reference_forward_and_gradients():
    q, k, v = qkv(requires_grad=True)
    out = maskir.attention(q, k, v, Window(7, 0), backend="reference")
    expected = reference_attention(q, k, v, Window(7, 0))
    torch.testing.assert_close(out, expected.float())
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float())


def test_compiled_attention_is_reusable_and_describes_itself():
    compiled = maskir.compile(
        Neighborhood(3), (8, 8), heads=2, head_dim=16, dtype=torch.float32, device="cpu", backend="reference"
    )
    q, k, v = qkv()
    first, second = compiled(q, k, v), compiled(q, k, v)
    torch.testing.assert_close(first, second)
    assert "Neighborhood(3)" in compiled.describe() and "backend reference" in compiled.describe()
    assert compiled.plan.canvas == Canvas((8, 8))


def test_return_lse_gives_minus_inf_on_empty_rows_and_zero_output():
    q, k, v = qkv()
    out, lse = maskir.attention(q, k, v, Causal(-1), backend="reference", return_lse=True)
    assert torch.all(out[:, :, 0] == 0) and torch.all(torch.isinf(lse[:, :, 0]))
    assert not torch.isnan(out).any()


def test_gqa_needs_enable_gqa_and_then_matches_the_reference():
    q, k, v = qkv(heads=4, kv_heads=2)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        maskir.attention(q, k, v, Causal(), backend="reference")
    out = maskir.attention(q, k, v, Causal(), backend="reference", enable_gqa=True)
    torch.testing.assert_close(out, reference_attention(q, k, v, Causal()).float())


def test_segments_are_required_by_segments_patterns():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="segments="):
        maskir.attention(q, k, v, Segments() & Causal(), backend="reference")
    ids = torch.repeat_interleave(torch.arange(4), 16)[None]
    out = maskir.attention(q, k, v, Segments() & Causal(), backend="reference", segments=ids)
    torch.testing.assert_close(out, reference_attention(q, k, v, Segments() & Causal(), segments=ids).float())


def test_routing_is_scored_from_q_and_k_when_not_given():
    q, k, v = qkv()
    out = maskir.attention(q, k, v, Routing(16, 2), backend="reference")
    torch.testing.assert_close(out, reference_attention(q, k, v, Routing(16, 2)).float())


def test_non_contiguous_inputs_are_made_contiguous():
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv())
    assert not q.is_contiguous()
    out = maskir.attention(q, k, v, Window(3, 3), backend="reference")
    torch.testing.assert_close(out, maskir.attention(q.contiguous(), k, v, Window(3, 3), backend="reference"))


def _check_compiled_layer(layer, q, k, v):
    """torch.compile(fullgraph=True) of ``layer``, run first (its trace plans and builds the kernels), gives
    the eager loss and gradients."""
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    expected_loss = layer(q, k, v)
    expected_grads = torch.autograd.grad(expected_loss, (q, k, v))
    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_torch_compile_fullgraph_traces_the_custom_ops_forward_and_backward():
    def layer(q, k, v):
        return maskir.attention(q * 2, k, v, Window(7, 0), backend="reference").sum()

    _check_compiled_layer(layer, *qkv(requires_grad=True))


def test_torch_compile_fullgraph_over_a_held_compiled_attention():
    attend = maskir.compile(Window(3, 3), 64, heads=2, head_dim=16, dtype=torch.float32, device="cpu")

    def layer(q, k, v):
        return attend(q * 2, k, v).sum()

    _check_compiled_layer(layer, *qkv(requires_grad=True))


def test_torch_compile_builds_triton_kernels_for_a_pattern_made_inside_the_compiled_function():
    def layer(q, k, v):
        return maskir.attention(
            q, k, v, Neighborhood(3) & Causal(), (8, 8), score_mod=lambda s, b, h, i, j: s / 2, backend="triton"
        ).sum()

    _check_compiled_layer(layer, *qkv(requires_grad=True))


@pytest.mark.parametrize(
    "pattern, segments",
    [("Window(2, 2) | Sink(4)", None), (Segments() & Causal(), torch.tensor([[0] * 20 + [1] * 44]))],
    ids=["spec text", "segments"],
)
def test_torch_compile_takes_spec_text_and_run_time_data(pattern, segments):
    def layer(q, k, v):
        return maskir.attention(q, k, v, pattern, segments=segments, backend="reference").sum()

    _check_compiled_layer(layer, *qkv(requires_grad=True))


def test_the_trace_time_build_is_marked_as_torch_compiler_marks_a_constant_result():
    from maskir.runtime.api import _build_while_tracing

    def marked():
        pass

    torch.compiler.assume_constant_result(marked)
    assert set(vars(marked)) == {"_dynamo_marked_constant"}
    assert _build_while_tracing._dynamo_marked_constant is marked._dynamo_marked_constant


def test_torch_compile_builds_a_plan_per_sequence_length():
    """Sizes are specialised, never symbolic: each length gets its own plan and graph."""
    layer = torch.compile(
        lambda q, k, v: maskir.attention(q, k, v, Window(5, 0), backend="reference"), fullgraph=True, backend="eager"
    )
    for n in (32, 48, 64):
        q, k, v = qkv(n=n)
        torch.testing.assert_close(layer(q, k, v), maskir.attention(q, k, v, Window(5, 0), backend="reference"))


def test_torch_compile_reports_a_pattern_the_canvas_cannot_hold():
    layer = torch.compile(
        lambda q, k, v: maskir.attention(q, k, v, Neighborhood(9), (8, 8), backend="reference"), fullgraph=True
    )
    with pytest.raises(Exception, match=r"Neighborhood\(9\): kernel \* dilation = 9 exceeds the canvas extent 8"):
        layer(*qkv())


@pytest.mark.parametrize(
    "make_inputs, kwargs, error, needle",
    [
        (lambda: (torch.randn(2, 64, 16),) * 3, {}, ValueError, "4-D"),
        (lambda: (*qkv()[:2], qkv(dtype=torch.float64)[2]), {}, TypeError, "dtype"),
        (lambda: (qkv()[0], *qkv(dtype=torch.float16)[1:]), {}, TypeError, "share a dtype"),
        (lambda: (*qkv()[:2], qkv(n=32)[2]), {}, ValueError, "same shape"),
        (lambda: qkv(heads=3, kv_heads=2), {"enable_gqa": True}, ValueError, "evenly divide"),
        (lambda: qkv(dim=8), {"backend": "triton"}, ValueError, r"triton: head_dim must lie in \[16, 256\], got 8"),
        (lambda: qkv(), {"canvas": (4, 4)}, ValueError, "holds 16 tokens"),
        (lambda: qkv(), {"backend": "cuda-magic"}, ValueError, "backend must be one of"),
        (lambda: ("q", "k", "v"), {}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(make_inputs, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        maskir.attention(*make_inputs(), Window(3, 0), **{"backend": "reference", **kwargs})


def test_spec_text_is_a_pattern_and_head_dims_are_the_backends_to_limit():
    q, k, v = qkv(dim=8)
    out = maskir.attention(q, k, v, "Window(7, 0)", backend="reference")
    torch.testing.assert_close(out, reference_attention(q, k, v, Window(7, 0)).float())
    with pytest.raises(TypeError, match="spec text"):
        maskir.compile(42, 64, heads=2, head_dim=16, device="cpu")


CAPTURED = torch.randn(64, 64)


def _captured_bias(score, b, h, q_idx, kv_idx):
    return score + CAPTURED[q_idx, kv_idx]


def test_rebinding_a_tensor_a_score_mod_reads_takes_effect():
    global CAPTURED
    q, k, v = qkv()
    for _ in range(2):
        out = maskir.attention(q, k, v, Causal(), score_mod=_captured_bias)
        expected = reference_attention(q, k, v, Causal(), score_mod=_captured_bias)
        torch.testing.assert_close(out, expected.float(), atol=2e-3, rtol=0)
        CAPTURED = torch.randn(64, 64) * 3


def test_a_score_mod_that_builds_its_tensor_reuses_one_build():
    from maskir.runtime import api

    def slopes(score, b, h, q_idx, kv_idx):
        return score - torch.tensor([0.5, 0.25])[h] * (q_idx - kv_idx).abs()

    q, k, v = qkv()
    before = {id(c) for c in api._COMPILED.values()}
    for _ in range(3):
        out = maskir.attention(q, k, v, Causal(), score_mod=slopes)
    assert len({id(c) for c in api._COMPILED.values()} - before) == 1
    expected = reference_attention(q, k, v, Causal(), score_mod=slopes)
    torch.testing.assert_close(out, expected.float(), atol=2e-3, rtol=0)


def test_a_score_mod_made_anew_on_every_call_reuses_one_build_and_reads_its_own_tensor():
    """A lambda written in a module's forward is a new function each call: one build, fresh tensors."""
    from maskir.runtime import api

    def forward(q, k, v, bias):
        return maskir.attention(q, k, v, Window(5, 0), score_mod=lambda s, b, h, i, j: s + bias[j])

    q, k, v = qkv()
    before = {id(c) for c in api._COMPILED.values()}
    for seed in range(3):
        bias = torch.randn(64, generator=torch.Generator().manual_seed(seed))
        expected = reference_attention(q, k, v, Window(5, 0), score_mod=lambda s, b, h, i, j: s + bias[j])  # noqa: B023
        torch.testing.assert_close(forward(q, k, v, bias), expected.float(), atol=2e-3, rtol=0)
    assert len({id(c) for c in api._COMPILED.values()} - before) == 1


def test_the_reference_backend_runs_a_score_mod_maskir_cannot_trace():
    def softplus_bias(score, b, h, q_idx, kv_idx):
        return torch.nn.functional.softplus(score)

    q, k, v = qkv()
    out = maskir.attention(q, k, v, Causal(), score_mod=softplus_bias, backend="reference")
    torch.testing.assert_close(out, reference_attention(q, k, v, Causal(), score_mod=softplus_bias).float())


def test_torch_compile_keeps_working_after_the_memo_evicts_its_entry(monkeypatch):
    from maskir.runtime import api

    monkeypatch.setattr(api, "MEMO_SIZE", 2)

    def layer(q, k, v):
        return maskir.attention(q, k, v, Window(5, 0), backend="reference").sum()

    q, k, v = qkv()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    expected = layer(q, k, v)
    torch.testing.assert_close(compiled(q, k, v), expected)
    for width in range(6, 10):  # other configurations push Window(5, 0) out of the LRU memo
        maskir.attention(q, k, v, Window(width, 0), backend="reference")
    torch.testing.assert_close(compiled(q, k, v), expected)


def test_dropping_a_compiled_attention_frees_its_kernels_but_not_a_pending_backward():
    import gc
    import weakref

    from maskir.runtime import ops

    compiled = maskir.compile(Causal(), 64, heads=2, head_dim=16, dtype=torch.float32, device="cpu")
    handle, kernels = compiled.handle, weakref.ref(compiled.kernels)
    q, k, v = qkv(requires_grad=True)
    out = compiled(q, k, v)
    del compiled
    gc.collect()
    assert kernels() is not None  # the autograd graph of `out` still needs them
    (dq,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(dq).all()
    del out
    gc.collect()
    assert kernels() is None
    with pytest.raises(ValueError, match="was freed"):
        ops._kernels(handle)


def test_a_compiled_attention_rejects_other_shapes():
    compiled = maskir.compile(
        Window(3, 0), 64, heads=2, head_dim=16, dtype=torch.float32, device="cpu", backend="reference"
    )
    with pytest.raises(ValueError, match="compile another one"):
        compiled(*qkv(n=32))


KERNEL_CASES = [
    pytest.param(Window(15, 0), {}, id="window"),
    pytest.param(Neighborhood(3), {"canvas": (8, 8)}, id="neighborhood-2d"),
    pytest.param(
        Segments() & Causal(), {"segments": torch.repeat_interleave(torch.arange(4), 16)[None]}, id="segments"
    ),
    pytest.param(Routing(16, 2) & Causal(), {}, id="routing"),
    pytest.param(Causal(), {"score_mod": lambda s, b, h, q, kv: s - (q - kv).abs() * 0.1}, id="score-mod"),
]


@pytest.mark.parametrize("backend", ["triton", "tvm"])
@pytest.mark.parametrize("pattern, kwargs", KERNEL_CASES)
def test_generated_kernels_of_each_backend_match_the_reference(pattern, kwargs, backend):
    if backend == "tvm":
        pytest.importorskip("tvm")
    q, k, v = qkv(requires_grad=True)
    out = maskir.attention(q, k, v, pattern, backend=backend, **kwargs)
    expected = reference_attention(q, k, v, pattern, **kwargs)
    torch.testing.assert_close(out, expected.float(), atol=2e-3, rtol=0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), atol=1e-2, rtol=0)


def test_triton_backend_with_gqa_and_the_kernel_source_is_readable():
    q, k, v = qkv(heads=4, kv_heads=2)
    options = {"heads": 4, "kv_heads": 2, "head_dim": 16, "dtype": torch.float32, "device": "cpu"}
    compiled = maskir.compile(Window(7, 0), 64, **options, backend="triton")
    torch.testing.assert_close(compiled(q, k, v), reference_attention(q, k, v, Window(7, 0)).float(), atol=2e-3, rtol=0)
    assert compiled.source().startswith("# maskir") and "def _fwd(" in compiled.source()


def test_tvm_backend_is_cached_readable_and_cpu_only(tmp_path):
    pytest.importorskip("tvm")
    from maskir.runtime.cache import KernelCache
    from maskir.runtime.compiled import CompiledAttention

    canvas = Canvas((8, 8))
    options = {"heads": 2, "kv_heads": 2, "head_dim": 16, "dtype": torch.float32, "device": "cpu", "backend": "tvm"}
    compiled = CompiledAttention(Neighborhood(3), canvas, canvas, **options, cache=KernelCache(tmp_path))
    library, source = sorted(KernelCache(tmp_path).entries(), key=lambda entry: entry.get("kind", "source"))
    assert source["fields"]["backend"] == "tvm" and source["fields"]["target"] == "llvm"
    assert library["kind"] == "library" and library["fields"]["target"]["kind"] == "llvm"  # the built .so
    assert compiled.source().startswith("# maskir") and "def fwd_0(" in compiled.source()
    q, k, v = qkv()
    expected = reference_attention(q, k, v, Neighborhood(3), canvas).float()
    torch.testing.assert_close(compiled(q, k, v), expected, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="backend='tvm'.*CPU" if torch.cuda.is_available() else "no CUDA device"):
        maskir.compile(Causal(), 64, heads=2, head_dim=16, device="cuda", backend="tvm")
    assert maskir.compile(Causal(), 64, heads=2, head_dim=8, backend="tvm").device.type == "cpu"


def test_a_fresh_cpu_process_runs_the_triton_backend_without_setting_the_environment(tmp_path):
    script = (
        "import torch, maskir\n"
        "q = k = v = torch.randn(1, 2, 64, 16)\n"
        "out = maskir.attention(q, k, v, maskir.Causal(), backend='triton')\n"
        "ref = maskir.reference_attention(q, k, v, maskir.Causal())\n"
        "assert (out - ref).abs().max() < 2e-3\n"
        "print('ok')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["MASKIR_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_an_entry_edited_on_disk_is_replaced_by_the_generated_source(tmp_path):
    """A cache entry whose source was changed (its metadata digest updated to match) is never imported."""
    from maskir.runtime.cache import KernelCache
    from maskir.runtime.compiled import CompiledAttention

    def compile_into(cache):
        canvas = Canvas(64)
        options = {"heads": 2, "kv_heads": 2, "head_dim": 16, "dtype": torch.float32, "device": "cpu"}
        return CompiledAttention(Causal(), canvas, canvas, **options, cache=cache)

    first = compile_into(KernelCache(tmp_path))
    (source_path,) = tmp_path.glob("*.py")
    meta_path = source_path.with_suffix(".json")
    edited = first.source() + "\nEDITED = True\n"
    source_path.write_text(edited)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(edited.encode()).hexdigest()
    meta_path.write_text(json.dumps(meta))

    second = compile_into(KernelCache(tmp_path))
    assert second.source() == first.source() and source_path.read_text() == first.source()
    q, k, v = qkv()
    torch.testing.assert_close(second(q, k, v), reference_attention(q, k, v, Causal()).float(), atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "routing, error, needle",
    [
        (torch.zeros(1, 2, 4, 2), TypeError, "integer tensor"),
        (torch.zeros(1, 2, 3, 2, dtype=torch.int64), ValueError, r"shape \[B=1, H=2, 4, topk=2\]"),
        (torch.full((1, 2, 4, 2), 4), ValueError, r"lie in \[0, 4\).*got \[4, 4\]"),
        (torch.full((1, 2, 4, 2), -1), ValueError, r"lie in \[0, 4\)"),
    ],
    ids=["float", "shape", "past the last block", "negative"],
)
def test_bad_routing_indices_raise_naming_the_problem(routing, error, needle):
    q, k, v = qkv()
    with pytest.raises(error, match=needle):
        maskir.attention(q, k, v, Routing(16, 2), backend="reference", routing=routing)
