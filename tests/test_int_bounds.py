"""Integers are bounded where they enter: every IR and canvas integer lies in a documented range
(``maskir.ir.INT_LIMIT``, ``maskir.canvas.MAX_TOKENS``), and at the edges of that range the plan, the
reference and the kernels agree exactly."""

import pytest
import torch

import maskir
from maskir import Blocks, Canvas, Causal, Columns, Dilated, Distance, Neighborhood, Sink, Strided, Window
from maskir.canvas import MAX_TOKENS
from maskir.ir import INT_LIMIT, Global, Routing, Stripes
from maskir.planner import plan
from maskir.reference import reference_attention, reference_mask
from maskir.spec import parse

TOO_BIG = [INT_LIMIT + 1, 2**63 - 1, 10**30]


@pytest.mark.parametrize("value", TOO_BIG + [-INT_LIMIT - 1, -(2**63)])
@pytest.mark.parametrize(
    "build, field",
    [
        (lambda v: Causal(v), "offset"),
        (lambda v: Distance(0, 1, v), "hi"),
        (lambda v: Distance(0, v, v + 1), "lo"),
        (lambda v: Blocks(4, offset=v), "offset"),
        (lambda v: Blocks((4, v)), "size"),
        (lambda v: Window(v, 0), "left"),
        (lambda v: Strided(4, v), "offset"),
        (lambda v: Neighborhood(3, stride=v), "stride"),
        (lambda v: Sink(v), "n"),
        (lambda v: Global((0, v)), "indices"),
        (lambda v: Routing(v, 2), "block"),
        (lambda v: Stripes(0, v), "width"),
    ],
    ids=[
        "Causal.offset",
        "Distance.hi",
        "Distance.lo",
        "Blocks.offset",
        "Blocks.size",
        "Window.left",
        "Strided.offset",
        "Neighborhood.stride",
        "Sink.n",
        "Global.indices",
        "Routing.block",
        "Stripes.width",
    ],
)
def test_an_integer_outside_the_range_is_a_value_error_naming_the_field(build, field, value):
    with pytest.raises(ValueError, match=rf"argument {field} must (lie in|be >=)"):
        build(value)


@pytest.mark.parametrize("digits", [19, 31])
def test_spec_text_with_a_huge_integer_is_an_error_not_an_overflow(digits):
    with pytest.raises(ValueError, match="offset"):
        parse(f"Causal({'9' * digits})")


@pytest.mark.parametrize("shape", [(MAX_TOKENS + 1,), (2**16, 2**16), (2**11, 2**11, 2**10), (2**70,)])
def test_a_canvas_past_int32_token_indices_is_refused(shape):
    with pytest.raises(ValueError, match="2\\*\\*31"):
        Canvas(shape)


def test_the_largest_canvas_is_accepted():
    assert Canvas(MAX_TOKENS).size == 2**31 and Canvas((2**15, 2**16)).size == 2**31


EDGES = [
    (Causal(INT_LIMIT), (64,)),
    (Causal(-INT_LIMIT), (64,)),
    (Causal(-63) | Sink(1), (64,)),
    (Causal(INT_LIMIT, dim=1) & Causal(-INT_LIMIT + 1, dim=0), (8, 8)),
    (Distance(0, 1, INT_LIMIT), (64,)),
    (Distance(0, 3, INT_LIMIT) | Window(1, 1), (64,)),
    (Distance(1, INT_LIMIT - 1, INT_LIMIT), (8, 8)),
    (Blocks(4, offset=INT_LIMIT), (64,)),
    (Blocks(4, offset=2**31 - 4), (8, 8)),
    (Blocks((8, 3), offset=(INT_LIMIT, INT_LIMIT - 1)), (8, 8)),
    (Strided(7, offset=INT_LIMIT), (64,)),
    (Strided(64, offset=INT_LIMIT - 1), (64,)),
    (Neighborhood(3, stride=INT_LIMIT), (64,)),
    (Neighborhood((3, 5), stride=(INT_LIMIT, 2), causal=(True, False)), (8, 8)),
    (Window(63, 63) & Dilated(31, 2), (64,)),
    (Columns(64, 64) & Causal(INT_LIMIT), (64,)),
]
EDGE_IDS = [f"{p} on {s}" for p, s in EDGES]


@pytest.mark.parametrize("pattern, shape", EDGES, ids=EDGE_IDS)
def test_plan_equals_reference_at_the_edges_of_the_range(pattern, shape):
    canvas = Canvas(shape)
    planned = plan(pattern, canvas, block_q=16, block_kv=16)
    expected = reference_mask(pattern, canvas)
    assert (planned.to_mask() == expected).all()
    assert planned.stats.allowed_pairs == int(expected.sum())


def qkv(n):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 2, n, 16, generator=generator) for _ in range(3)]


KERNEL_EDGES = [
    (Causal(INT_LIMIT) & (Blocks(4, offset=INT_LIMIT) | Strided(7, offset=INT_LIMIT)), (64,)),
    (Neighborhood((3, 5), stride=(INT_LIMIT, 2), causal=(True, False)) | Blocks((8, 3), offset=(INT_LIMIT, 2)), (8, 8)),
]


@pytest.mark.parametrize("backend", ["triton", "tvm"])
@pytest.mark.parametrize("pattern, shape", KERNEL_EDGES, ids=[f"{p} on {s}" for p, s in KERNEL_EDGES])
def test_kernels_equal_the_reference_at_the_edges_of_the_range(backend, pattern, shape):
    if backend == "tvm":
        pytest.importorskip("tvm")
    canvas = Canvas(shape)
    q, k, v = qkv(canvas.size)
    out = maskir.attention(q, k, v, pattern, canvas, backend=backend)
    torch.testing.assert_close(out, reference_attention(q, k, v, pattern, canvas).float(), atol=2e-4, rtol=0)


def test_a_mask_mod_integer_outside_the_range_is_a_value_error():
    from maskir import Predicate
    from maskir.codegen.common.lower import lower_predicate

    def far(b, h, q, kv):
        return kv <= q + 2**40

    with pytest.raises(ValueError, match="1099511627776 in the mask_mod"):
        lower_predicate(Predicate(far), Canvas(64))


@pytest.mark.parametrize("block", [2**32, 2**40, 2**31 + 16])
def test_tile_sizes_past_the_largest_canvas_are_refused(block):
    with pytest.raises(ValueError, match=r"block_q must be a power of two >= 16 and <= 2\*\*31"):
        plan(Causal(), Canvas(64), block_q=block)
