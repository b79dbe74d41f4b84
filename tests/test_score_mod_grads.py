"""Trainable score_mod tensors: the gradient of every floating tensor a score_mod reads equals float64
autograd of dense attention, through maskir.attention, maskir.compile and torch.compile, on each backend.

The float64 truth calls the same score_mod on dense index tensors (``maskir.reference``) with the table
as a float64 leaf, so it shares no code with maskir's tracing or kernels.
"""

from importlib.util import find_spec

import pytest
import torch

import maskir
from maskir import Blocks, Canvas, Causal, Columns, Neighborhood, Segments, Window
from maskir.reference import reference_attention

HEADS, DIM = 4, 16
TVM = pytest.param("tvm", marks=pytest.mark.skipif(find_spec("tvm") is None, reason="apache-tvm not installed"))
KERNEL_BACKENDS = ["triton", TVM]
BACKENDS = ["reference", "triton"]
"""The runtime's plumbing (compile, optimizer steps, torch.compile) is the same for every backend: TVM runs
the kernel cases only (each TVM build takes seconds)."""


def qkv(n, heads=HEADS, kv_heads=HEADS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, heads, n, DIM), (1, kv_heads, n, DIM), (1, kv_heads, n, DIM)]
    return [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]


def table_2d(heads=HEADS, span=7, seed=1):
    return torch.randn(heads, span, span, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def coordinate_bias(table, width):
    """A hand-written 2-D bias: table[h, dy + 3, dx + 3] on a canvas of rows of ``width`` tokens."""

    def score_mod(score, b, h, q_idx, kv_idx):
        dy = torch.clamp(q_idx // width - kv_idx // width, -3, 3) + 3
        dx = torch.clamp(q_idx % width - kv_idx % width, -3, 3) + 3
        return score + table[h, dy, dx]

    return score_mod


def slopes_bias(slopes):
    return lambda score, b, h, q_idx, kv_idx: score - slopes[h] * (q_idx - kv_idx).abs()


def bucket_bias(table):
    """table[bucket, h] with bucket = min(|q - kv|, 3) + 4 * (kv > q): a table read by bucket and head."""

    def score_mod(score, b, h, q_idx, kv_idx):
        bucket = torch.clamp((q_idx - kv_idx).abs(), max=3) + torch.where(kv_idx > q_idx, 4, 0)
        return score + table[bucket, h]

    return score_mod


def check_grads(pattern, canvas, make_score_mod, trained, backend, *, kv_heads=HEADS, segments=None, atol=2e-4):
    """maskir's out and gradients (q, k, v, trained tensors) equal float64 autograd of the reference."""
    n = Canvas(canvas).size if not isinstance(canvas, Canvas) else canvas.size
    q, k, v = qkv(n, kv_heads=kv_heads)
    kwargs = {"enable_gqa": kv_heads != HEADS, "segments": segments}
    out = maskir.attention(q, k, v, pattern, canvas, score_mod=make_score_mod(*trained), backend=backend, **kwargs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad((out * weights).sum(), (q, k, v, *trained))
    leaves = [t.detach().double().requires_grad_() for t in trained]
    expected = reference_attention(q, k, v, pattern, canvas, score_mod=make_score_mod(*leaves), segments=segments)
    want = torch.autograd.grad((expected * weights.double()).sum(), (q, k, v, *leaves))
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        torch.testing.assert_close(g, w.float(), atol=atol, rtol=1e-4)
    return got


CASES = [
    pytest.param(Neighborhood(5), (8, 8), lambda t: coordinate_bias(t, 8), [table_2d()], {}, id="2d-table"),
    pytest.param(
        Causal(), 32, slopes_bias, [torch.tensor([0.5, 0.25, 0.125, 1.0], requires_grad=True)], {}, id="slopes"
    ),
    pytest.param(Window(6, 6), 32, bucket_bias, [torch.randn(8, HEADS, requires_grad=True)], {}, id="head-and-bucket"),
    pytest.param(Neighborhood(3), (8, 8), lambda t: coordinate_bias(t, 8), [table_2d()], {"kv_heads": 2}, id="gqa"),
    pytest.param(
        Causal(-4),
        32,
        slopes_bias,
        [torch.tensor([0.5, 0.25, 0.125, 1.0], requires_grad=True)],
        {},
        id="masked-rows",
    ),  # fmt: skip
    pytest.param(Blocks(4) | Window(2, 2), (8, 8), lambda t: coordinate_bias(t, 8), [table_2d()], {}, id="union"),
    pytest.param(
        Segments() & Causal(),
        32,
        bucket_bias,
        [torch.randn(8, HEADS, requires_grad=True)],
        {"segments": torch.tensor([[0] * 5 + [1] * 19 + [2] * 8])},
        id="segments",
    ),  # fmt: skip
]


TVM_CASES = ("masked-rows", "segments")  # 2-D tables and GQA on TVM: tests/test_score_mods.py


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern, canvas, make, trained, kwargs", CASES)
def test_trained_tensor_gradients_equal_float64_autograd(pattern, canvas, make, trained, kwargs, backend):
    check_grads(pattern, canvas, make, trained, backend, **kwargs)


@pytest.mark.skipif(find_spec("tvm") is None, reason="apache-tvm not installed")
@pytest.mark.parametrize("pattern, canvas, make, trained, kwargs", [c for c in CASES if c.id in TVM_CASES])
def test_trained_tensor_gradients_on_tvm_equal_float64_autograd(pattern, canvas, make, trained, kwargs):
    check_grads(pattern, canvas, make, trained, "tvm", **kwargs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_a_union_plan_of_two_parts_sums_the_table_gradients_of_both(backend):
    """Local + columns planned as a band part and a gathered-columns part (forced by ranking on computed
    pairs, as tests/test_triton_kernels.py does): each part adds its pairs' table gradients."""
    from maskir.planner import plan

    pattern, n = (Window(15, 0) | Columns(16, 1)) & Causal(), 128
    two_parts = plan(pattern, Canvas((n,)), heads=HEADS, cost=lambda p: p.tile_counts.computed_pairs)
    table = torch.randn(8, HEADS, generator=torch.Generator().manual_seed(6), requires_grad=True)
    attend = maskir.compile(
        pattern, n, heads=HEADS, head_dim=DIM, dtype=torch.float32, device="cpu", score_mod=bucket_bias(table),
        backend=backend, plan=two_parts,
    )  # fmt: skip
    assert len(attend.plan.parts) == 2
    q, k, v = qkv(n)
    got = torch.autograd.grad(attend(q, k, v).square().sum(), (q, k, v, table))
    leaf = table.detach().double().requires_grad_()
    expected = reference_attention(q, k, v, pattern, score_mod=bucket_bias(leaf))
    want = torch.autograd.grad(expected.square().sum(), (q, k, v, leaf))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), atol=5e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference"])  # on Triton: the example test below
def test_a_compiled_attention_sees_an_optimizer_step_on_its_table_without_recompiling(backend):
    table = table_2d()
    compiled = maskir.compile(
        Neighborhood(3), (8, 8), heads=HEADS, head_dim=DIM, dtype=torch.float32, device="cpu",
        score_mod=coordinate_bias(table, 8), backend=backend,
    )  # fmt: skip
    optimizer = torch.optim.SGD([table], lr=10.0)
    q, k, v = qkv(64)
    for _ in range(2):
        out = compiled(q, k, v)
        expected = reference_attention(q, k, v, Neighborhood(3), (8, 8), score_mod=coordinate_bias(table, 8))
        torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)
        optimizer.zero_grad()
        out.square().sum().backward()
        assert table.grad is not None and table.grad.abs().sum() > 0
        optimizer.step()


@pytest.mark.parametrize("backend", ["reference"])  # on Triton: the example test below
def test_a_tensor_derived_from_a_trained_one_inside_the_score_mod_is_rebuilt_each_call(backend):
    log_slopes = torch.tensor([-1.0, -2.0, -3.0, -0.5], requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - log_slopes.exp()[h] * (q_idx - kv_idx).abs()

    compiled = maskir.compile(
        Causal(), 32, heads=HEADS, head_dim=DIM, dtype=torch.float32, device="cpu", score_mod=score_mod,
        backend=backend,
    )  # fmt: skip
    q, k, v = qkv(32)
    for _ in range(2):  # a second backward would fail on a graph kept from compile time
        (grad,) = torch.autograd.grad(compiled(q, k, v).sum(), log_slopes)
        leaf = log_slopes.detach().double().requires_grad_()
        expected = reference_attention(q, k, v, Causal(), score_mod=slopes_bias(leaf.exp()))
        (want,) = torch.autograd.grad(expected.sum(), leaf)
        torch.testing.assert_close(grad, want.float(), atol=2e-4, rtol=1e-4)
        with torch.no_grad():
            log_slopes -= 0.5 * grad


@pytest.mark.parametrize("backend", ["reference"])  # on Triton: the example test below
def test_torch_compile_fullgraph_gives_table_gradients_equal_to_eager(backend):
    table = table_2d()
    compiled_attention = maskir.compile(
        Neighborhood(3), (8, 8), heads=HEADS, head_dim=DIM, dtype=torch.float32, device="cpu",
        score_mod=coordinate_bias(table, 8), backend=backend,
    )  # fmt: skip

    def layer(q, k, v):
        return compiled_attention(q, k, v).square().sum()

    q, k, v = qkv(64)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v, table))
    want = torch.autograd.grad(layer(q, k, v), (q, k, v, table))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_no_gradient_is_computed_for_a_table_that_does_not_require_grad():
    table = table_2d().detach()
    q, k, v = qkv(64)
    out = maskir.attention(q, k, v, Neighborhood(3), (8, 8), score_mod=coordinate_bias(table, 8), backend="reference")
    assert out.grad_fn is not None and len(torch.autograd.grad(out.sum(), (q,))) == 1
    with torch.no_grad():
        assert maskir.attention(q, k, v, Neighborhood(3), (8, 8), score_mod=coordinate_bias(table, 8)).grad_fn is None


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_two_backward_runs_give_bitwise_identical_gradients(backend):
    table, slopes = table_2d(), torch.tensor([0.5, 0.25, 0.125, 1.0], requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return coordinate_bias(table, 8)(score, b, h, q_idx, kv_idx) - slopes[h] * (q_idx - kv_idx).abs()

    q, k, v = qkv(64, kv_heads=2)
    runs = []
    for _ in range(2):
        out = maskir.attention(
            q, k, v, Neighborhood(5) | Blocks(4), (8, 8), score_mod=score_mod, enable_gqa=True, backend=backend
        )
        runs.append(torch.autograd.grad(out.square().sum(), (q, k, v, table, slopes)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_the_swin_block_example_trains_its_table_under_torch_compile_with_eager_gradients(monkeypatch):
    """examples/trainable_bias.py: a shifted-window block whose bias table is an nn.Parameter, compiled with
    fullgraph=True on the Triton interpreter (on a CPU "auto" takes TVM; it is held to Triton here so that the
    kernels a GPU runs are checked under torch.compile): the loss falls, the table moves, gradients equal
    eager mode."""
    import importlib.util
    from pathlib import Path

    from maskir.runtime import backends

    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("triton",))

    path = Path(__file__).resolve().parents[1] / "examples" / "trainable_bias.py"
    spec = importlib.util.spec_from_file_location("trainable_bias", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses, moved, differences = example.train(steps=3, compile_backend="aot_eager")
    assert losses[0] > losses[1] > losses[2]
    assert moved > 0
    assert set(differences) == {"relative_position_bias_table", "qkv.weight", "proj.weight"}
    assert max(differences.values()) <= 1e-6
