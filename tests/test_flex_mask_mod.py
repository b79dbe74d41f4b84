"""The flex emission: ``to_mask_mod`` gives flex_attention exactly the reference's allowed set.

Every op of the expression DAG evaluates in torch as ``maskir.codegen.common.evaluate`` (numpy, the
executable meaning) does; every node of the IR catalogue (``tests/test_ir.py``), per batch and head, on
1-, 2- and 3-D and cross-attention canvases, gives ``create_mask(mask_mod, ...) == reference_mask``; and
flex_attention's forward on CPU with that block mask equals ``reference_attention`` (no flex backward on
CPU: TOOLCHAIN.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ir import CANVASES, CATALOGUE, defined_on, runtime_data
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from maskir import Canvas, Causal, Full, Global, Neighborhood, PerHead, Routing, Segments, Window, patterns
from maskir.codegen.common import expr as E  # noqa: N812 (the builders read as E.where, E.eq)
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.flex import evaluate_torch, to_mask_mod
from maskir.reference import reference_attention, reference_mask, routing_indices
from maskir.runtime.routing import routing_map

# -- the interpreter, op by op ---------------------------------------------------------------------

Q, KV = E.var("q"), E.var("kv")
SIGNED_Q, NONZERO_KV = Q - 7, E.where(KV < 5, KV - 6, KV - 4)  # negatives on both sides, no zero divisor
FLOAT = E.to_float(Q) * 0.25 - 1.0
SAMPLE_OPS = {
    "add": lambda: SIGNED_Q + KV,
    "sub": lambda: Q - KV,
    "mul": lambda: SIGNED_Q * NONZERO_KV,
    "truediv": lambda: E.truediv(SIGNED_Q, NONZERO_KV),
    "floordiv": lambda: E.floordiv(SIGNED_Q, NONZERO_KV),
    "mod": lambda: E.mod(SIGNED_Q, NONZERO_KV),
    "tdiv": lambda: E.tdiv(SIGNED_Q, NONZERO_KV),
    "trem": lambda: E.trem(SIGNED_Q, NONZERO_KV),
    "min": lambda: E.minimum(SIGNED_Q, KV),
    "max": lambda: E.maximum(SIGNED_Q, 3),
    "neg": lambda: -SIGNED_Q,
    "abs": lambda: abs(SIGNED_Q),
    "lt": lambda: Q < KV,
    "le": lambda: Q <= KV,
    "gt": lambda: Q > KV,
    "ge": lambda: Q >= KV,
    "eq": lambda: E.eq(Q % 3, KV % 3),
    "ne": lambda: E.ne(Q % 3, KV % 3),
    "and": lambda: (Q < KV) & (KV % 2).eq(0),
    "or": lambda: (Q < KV) | (KV % 2).eq(0),
    "not": lambda: ~E.eq(Q < KV, (KV % 2).eq(0)),
    "where": lambda: E.where(Q < KV, SIGNED_Q * 2, KV),
    "exp": lambda: E.exp(FLOAT),
    "exp2": lambda: E.exp2(FLOAT),
    "log": lambda: E.log(E.to_float(KV) + 0.5),
    "tanh": lambda: E.tanh(FLOAT),
    "sqrt": lambda: E.sqrt(E.to_float(KV)),
    "sin": lambda: E.sin(FLOAT),
    "cos": lambda: E.cos(FLOAT),
    "to_float": lambda: E.to_float(SIGNED_Q),
}


def test_every_op_has_a_torch_spelling():
    from maskir.codegen.flex.mask_mod import TORCH_OPS

    assert set(TORCH_OPS) == set(E.BUILDERS) == set(SAMPLE_OPS)


@pytest.mark.parametrize("op", SAMPLE_OPS)
def test_op_evaluates_in_torch_as_in_numpy(op):
    expr = SAMPLE_OPS[op]()
    assert op in {node.op for node in E.topo(expr)}
    q, kv = np.arange(15)[:, None], np.arange(11)[None, :]
    expected = evaluate(expr, {"q": q, "kv": kv})
    got = evaluate_torch(expr, {"q": torch.from_numpy(q), "kv": torch.from_numpy(kv)}, {})
    np.testing.assert_allclose(np.broadcast_to(got.numpy(), expected.shape), expected, rtol=1e-6)


def test_load_reads_zero_outside_the_tensor_shape():
    table = torch.tensor([5, 6, 7, 8])
    ref = E.TensorRef("table", "int", (4,))
    q = torch.tensor([-2, -1, 0, 3, 4, 9])
    got = evaluate_torch(E.load(ref, Q), {"q": q}, {"table": table})
    assert got.tolist() == [0, 0, 5, 8, 0, 0]


def test_bool_load_of_an_int8_map_is_bool():
    routing_map = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)
    ref = E.TensorRef("routing_map", "bool", (2, 2))
    got = evaluate_torch(
        E.load(ref, Q, KV) & (Q >= 0),
        {"q": torch.arange(2)[:, None], "kv": torch.arange(2)},
        {"routing_map": routing_map},
    )
    assert got.dtype == torch.bool and got.tolist() == [[True, False], [False, True]]


# -- the mask_mod on the IR catalogue ----------------------------------------------------------------

BATCH, HEADS = 2, 3


def flex_tensors(pattern, segments, routing, n_q: int, n_kv: int) -> dict[str, torch.Tensor]:
    """The run-time tensors by the lowering's names: segment ids and the routed block map."""
    tensors = {"segments_q": torch.as_tensor(segments[0]), "segments_kv": torch.as_tensor(segments[1])}
    node = next((node for node in pattern.walk() if isinstance(node, Routing)), None)
    if node is not None:
        kv_blocks = -(-n_kv // node.block)
        block_map = torch.zeros(*routing.shape[:3], kv_blocks, dtype=torch.int8)
        tensors["routing_map"] = block_map.scatter_(-1, torch.as_tensor(routing), 1)
    return tensors


@pytest.mark.parametrize("pattern", CATALOGUE, ids=str)
def test_create_mask_equals_reference_mask(pattern):
    rng = np.random.default_rng(0)
    checked = 0
    for q_shape, kv_shape in CANVASES:
        if not defined_on(pattern, q_shape, kv_shape):
            continue
        segments, routing = runtime_data(pattern, q_shape, kv_shape, rng)
        n_q, n_kv = int(np.prod(q_shape)), int(np.prod(kv_shape))
        tensors = flex_tensors(pattern, segments, routing, n_q, n_kv)
        mask_mod = to_mask_mod(pattern, Canvas(q_shape), Canvas(kv_shape), tensors=tensors)
        got = create_mask(mask_mod, BATCH, HEADS, n_q, n_kv, device="cpu")
        for b in range(BATCH):
            for h in range(HEADS):
                expected = reference_mask(
                    pattern, q_shape, kv_shape, batch=b, head=h, segments=segments, routing=routing
                )
                np.testing.assert_array_equal(
                    got[b, h].numpy(), expected, err_msg=f"q {q_shape} kv {kv_shape} b{b} h{h}"
                )
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize(
    "pattern",
    [Global(tuple(range(1, 64, 5))), patterns.bigbird(4, random_blocks=2, canvas=64)],
    ids=["global_table", "bigbird_random_table"],
)
def test_patterns_reading_static_tables_match_reference_mask(pattern):
    """A Global set lowered to a table and a Predicate indexing a captured bool table load their data."""
    mask_mod = to_mask_mod(pattern, Canvas(64))
    got = create_mask(mask_mod, 1, 1, 64, 64, device="cpu")[0, 0]
    np.testing.assert_array_equal(got.numpy(), reference_mask(pattern, Canvas(64)))


def test_mask_mod_broadcasts_over_index_tensors_like_create_mask():
    """Called directly on broadcast [B, H, Nq, Nkv] index tensors (as score_mods are), it gives create_mask's mask."""
    pattern = PerHead([Neighborhood(3), Window(2, 1, dim=1) & Causal()])
    mask_mod = to_mask_mod(pattern, Canvas((5, 6)))
    b, h = torch.arange(BATCH).view(-1, 1, 1, 1), torch.arange(HEADS).view(1, -1, 1, 1)
    q, kv = torch.arange(30).view(1, 1, -1, 1), torch.arange(30).view(1, 1, 1, -1)
    direct = torch.broadcast_to(mask_mod(b, h, q, kv), (BATCH, HEADS, 30, 30))
    assert torch.equal(direct, create_mask(mask_mod, BATCH, HEADS, 30, 30, device="cpu"))


def test_full_pattern_gives_a_bool_tensor():
    """Full() lowers to the constant True; the mask_mod still returns a tensor, as flex needs."""
    mask_mod = to_mask_mod(Full(), Canvas(8))
    mask = create_mask(mask_mod, 1, 1, 8, 8, device="cpu")
    assert mask.dtype == torch.bool and mask.all()


def test_missing_runtime_tensor_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="segments_q"):
        to_mask_mod(Segments() & Causal(), Canvas(16))


def test_pattern_argument_is_checked():
    with pytest.raises(TypeError, match="Pattern"):
        to_mask_mod("Causal()", Canvas(16))


# -- flex_attention forward on CPU ---------------------------------------------------------------

FLEX_CASES = [
    (patterns.natten(5), Canvas((16, 16))),
    (PerHead([Causal(), Window(20, 3)]), Canvas(200)),
    (patterns.document(causal=True), Canvas(256)),
    (patterns.moba(32, 2), Canvas(256)),
    (Causal() - Window(40, 0), Canvas(128)),  # queries 0..40 see nothing: output 0
]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("pattern, canvas", FLEX_CASES, ids=[str(p) for p, _ in FLEX_CASES])
def test_flex_forward_with_the_block_mask_matches_reference_attention(pattern, canvas):
    generator = torch.Generator().manual_seed(0)
    n, heads = canvas.size, 2
    q, k, v = (torch.randn(1, heads, n, 16, generator=generator) for _ in range(3))
    segments = (torch.arange(n) // (n // 4)).view(1, n).int()
    routing_node = next((node for node in pattern.walk() if isinstance(node, Routing)), None)
    routing = None
    tensors = {"segments_q": segments, "segments_kv": segments}
    if routing_node is not None:
        routing = routing_indices(q, k, routing_node)
        tensors["routing_map"] = routing_map(q, k, routing_node, routing)
    mask_mod = to_mask_mod(pattern, canvas, tensors=tensors)
    block_mask = create_block_mask(mask_mod, 1, heads, n, n, device="cpu", BLOCK_SIZE=32)
    got = flex_attention(q, k, v, block_mask=block_mask)
    data = {"segments": segments, "routing": routing}
    expected = reference_attention(q, k, v, pattern, canvas, **data)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_block_mask_and_flex_trace_the_mask_mod():
    """torch.compile traces the mask_mod (loads from run-time tensors, per-head routing) into
    create_block_mask and the flex kernel, as benchmarks/suite.py runs them on a GPU."""
    pattern, canvas, heads = patterns.moba(32, 2) & ~Segments(), Canvas(256), 2
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, canvas.size, 16, generator=generator) for _ in range(3))
    segments = (torch.arange(canvas.size) // 48).view(1, -1).int()
    routing = routing_indices(q, k, Routing(32, 2))
    tensors = {
        "segments_q": segments,
        "segments_kv": segments,
        "routing_map": routing_map(q, k, Routing(32, 2), routing),
    }
    mask_mod = to_mask_mod(pattern, canvas, tensors=tensors)
    block_mask = torch.compile(create_block_mask)(mask_mod, 1, heads, canvas.size, canvas.size, device="cpu")
    got = torch.compile(flex_attention)(q, k, v, block_mask=block_mask)
    expected = reference_attention(q, k, v, pattern, canvas, segments=segments, routing=routing)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)
