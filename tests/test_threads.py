"""Several Python threads calling maskir.attention / maskir.compile at once get correct results on the
Triton interpreter, TVM and the reference backend, and a configuration asked for by two threads at once
is built once."""

import threading

import pytest
import torch

import maskir
import maskir.runtime.api as api
from maskir import Causal, Segments, Window
from maskir.reference import reference_attention

N, D = 32, 16


def qkv(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, N, D, generator=generator) for _ in range(3)]


def run_threads(work, count):
    """Run ``work(i)`` in ``count`` threads released together; return their results (errors re-raised)."""
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def body(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise errors[0]
    return results


PATTERNS = [Causal(), Window(3, 1), Segments() & Causal()]
IDS = torch.repeat_interleave(torch.arange(4), N // 4)[None]


@pytest.mark.parametrize("backend", ["triton", "tvm", "reference"])
def test_threads_calling_attention_at_once_all_get_the_reference_result(backend):
    if backend == "tvm":
        pytest.importorskip("tvm")
    patterns = PATTERNS[:1] if backend == "tvm" else PATTERNS  # a TVM build takes seconds: one pattern

    def work(i):
        pattern = patterns[i % len(patterns)]
        q, k, v = qkv(i)
        segments = IDS if pattern is PATTERNS[2] else None
        outs = [maskir.attention(q, k, v, pattern, backend=backend, segments=segments) for _ in range(2)]
        expected = reference_attention(q, k, v, pattern, segments=segments).float()
        return [float((out - expected).abs().max()) for out in outs]

    errors = run_threads(work, 4 if backend == "tvm" else 6)
    assert max(max(e) for e in errors) < 2e-4


def test_threads_sharing_one_compiled_object_with_their_own_segments_get_their_own_masks():
    """Per-call lists are kept for the latest call: a thread must never use another thread's lists."""
    compiled = maskir.compile(Segments() & Causal(), N, heads=2, head_dim=D, dtype=torch.float32, device="cpu")

    def work(i):
        q, k, v = qkv(i)
        ids = torch.repeat_interleave(torch.arange(N // (2 + i)), 2 + i)[None]
        ids = torch.cat([ids, ids.new_full((1, N - ids.shape[1]), ids.max() + 1)], dim=1)
        errors = []
        for _ in range(3):
            out = compiled(q, k, v, segments=ids)
            expected = reference_attention(q, k, v, Segments() & Causal(), segments=ids).float()
            errors.append(float((out - expected).abs().max()))
        return max(errors)

    assert max(run_threads(work, 4)) < 2e-4


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_a_configuration_asked_for_by_threads_at_once_is_built_once(backend, monkeypatch):
    builds = []
    real_compile = api.compile

    def counting_compile(*args, **kwargs):
        builds.append(args[0])
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(api, "compile", counting_compile)
    pattern = Window(5, 2) & Causal(-1) if backend == "triton" else Window(6, 2) & Causal(-1)
    q, k, v = qkv(0)
    outs = run_threads(lambda i: maskir.attention(q, k, v, pattern, backend=backend), 4)
    assert len(builds) == 1
    assert all(torch.equal(out, outs[0]) for out in outs)


def test_one_tvm_module_compiled_by_threads_at_once_is_built_once(monkeypatch):
    pytest.importorskip("tvm")
    import maskir.codegen.tvm.launch as tvm_launch

    builds = []
    real_build = tvm_launch._build
    monkeypatch.setattr(tvm_launch, "_build", lambda *a: builds.append(1) or real_build(*a))
    pattern = Window(4, 1) & Causal(1)
    compiled = run_threads(
        lambda i: maskir.compile(pattern, N, heads=2, head_dim=D, dtype=torch.float32, backend="tvm"), 2
    )
    assert len(builds) == 1
    q, k, v = qkv(0)
    expected = reference_attention(q, k, v, pattern).float()
    assert all(float((c(q, k, v) - expected).abs().max()) < 2e-4 for c in compiled)
