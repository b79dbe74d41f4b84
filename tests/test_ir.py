"""The mask IR: value semantics of the nodes, argument and canvas checks, and every node's allowed set
(maskir.reference) against the hand-written brute force (tests/brute_force.py) on tiny canvases."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from brute_force import brute_mask

from maskir.canvas import Canvas
from maskir.ir import (
    NODES,
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    SlidingWindow,
    Strided,
    Stripes,
    Window,
    check_canvas,
)
from maskir.reference import reference_mask

# -- value semantics -------------------------------------------------------------------------------


def every_third(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx) % 3 == 0


def parity_by_head_and_batch(b, h, q_idx, kv_idx):
    return (q_idx + h + b) % 2 == kv_idx % 2


def near_or_first(b, h, q_idx, kv_idx):
    return ((q_idx - kv_idx).abs() <= 1) | (kv_idx == torch.zeros_like(kv_idx))


def test_nodes_are_frozen():
    node = Window(2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.left = 3


def test_nodes_are_equal_and_hash_equal_by_value():
    made_twice = [
        (Window(2, 1), Window(2, 1)),
        (Neighborhood(3, dilation=2, causal=True), Neighborhood(3, dilation=2, causal=True)),
        (Causal() & Sink(2), Causal() & Sink(2)),
        (PerHead([Causal(), Full()]), PerHead((Causal(), Full()))),
    ]
    for a, b in made_twice:
        assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def test_nodes_with_different_arguments_differ():
    assert Window(2, 1) != Window(1, 2)
    assert Causal() != Causal(1)
    assert Causal(dim=0) != Causal()
    assert Sink(3) != Prefix(3)
    assert Causal() & Sink(2) != Sink(2) & Causal()


def test_predicate_is_equal_only_for_the_same_callable():
    assert Predicate(every_third) == Predicate(every_third)
    assert hash(Predicate(every_third)) == hash(Predicate(every_third))
    assert Predicate(every_third) != Predicate(lambda b, h, q, kv: (q - kv) % 3 == 0)


@pytest.mark.parametrize(
    "made_from_list, made_from_tuple, field",
    [
        (Neighborhood([3, 5]), Neighborhood((3, 5)), "kernel"),
        (Neighborhood(3, dilation=[1, 2]), Neighborhood(3, dilation=(1, 2)), "dilation"),
        (Neighborhood(3, stride=[2, 1]), Neighborhood(3, stride=(2, 1)), "stride"),
        (Neighborhood(3, causal=[True, False]), Neighborhood(3, causal=(True, False)), "causal"),
        (Blocks([2, 3], offset=[1, 0]), Blocks((2, 3), offset=(1, 0)), "offset"),
        (Grid([2, 2]), Grid((2, 2)), "size"),
        (Global([4, 1]), Global((4, 1)), "indices"),
    ],
    ids=str,
)
def test_list_arguments_become_tuples(made_from_list, made_from_tuple, field):
    assert isinstance(getattr(made_from_list, field), tuple)
    assert made_from_list == made_from_tuple and hash(made_from_list) == hash(made_from_tuple)


def test_global_indices_are_sorted_and_deduplicated():
    assert Global([5, 1, 5]).indices == (1, 5)


def test_numpy_integer_arguments_are_stored_as_python_ints():
    node = Neighborhood(np.int64(3), dilation=(np.int32(1), 2))
    assert node == Neighborhood(3, dilation=(1, 2))
    assert str(Window(np.int64(3), np.int64(0))) == "Window(3, 0)"
    assert type(Global([np.int64(4)]).indices[0]) is int


def test_limits_in_messages_are_the_ones_checked_for_unequal_canvases():
    with pytest.raises(ValueError, match="must be < 13"):
        check_canvas(Dilated(7, 2), Canvas(7), Canvas(13))
    with pytest.raises(ValueError, match="canvas of 7 tokens"):
        check_canvas(Global((9,)), Canvas(13), Canvas(7))


def test_data_for_a_missing_batch_or_head_is_a_value_error():
    with pytest.raises(ValueError, match="batch=1"):
        reference_mask(Segments(), 4, segments=torch.tensor([[0, 0, 1, 1]]), batch=1)
    with pytest.raises(ValueError, match="head=3"):
        reference_mask(Routing(2, 1), 4, routing=np.zeros((1, 1, 2, 1), dtype=np.int64), head=3)


def test_an_int_per_dim_argument_applies_to_every_dim():
    assert np.array_equal(brute_mask(Neighborhood(3), (5, 6)), brute_mask(Neighborhood((3, 3)), (5, 6)))
    assert np.array_equal(reference_mask(Blocks(2), (4, 4)), reference_mask(Blocks((2, 2)), (4, 4)))


def test_operators_build_combinators():
    a, b = Causal(), Window(2, 0)
    assert a & b == And(a, b)
    assert a | b == Or(a, b)
    assert ~a == Not(a)
    assert a - b == a & ~b == And(a, Not(b))


@pytest.mark.parametrize("op", ["&", "|", "-"])
def test_operators_reject_non_patterns(op):
    with pytest.raises(TypeError, match=re.escape(op)):
        {"&": lambda: Causal() & 3, "|": lambda: Causal() | True, "-": lambda: Causal() - "x"}[op]()


# -- constructor checks ----------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: Causal(1.5), TypeError, "offset"),
    (lambda: Causal(dim=-1), ValueError, "dim"),
    (lambda: Window(-1, 0), ValueError, "left"),
    (lambda: Window(0, -2), ValueError, "right"),
    (lambda: Window(1, 1, dim=True), TypeError, "dim"),
    (lambda: SlidingWindow(0), ValueError, "size"),
    (lambda: SlidingWindow(3, causal=1), TypeError, "causal"),
    (lambda: Dilated(-1, 2), ValueError, "window"),
    (lambda: Dilated(2, 0), ValueError, "dilation"),
    (lambda: Neighborhood(0), ValueError, "kernel"),
    (lambda: Neighborhood(3.0), TypeError, "kernel"),
    (lambda: Neighborhood(()), ValueError, "kernel"),
    (lambda: Neighborhood((3, 3, 3, 3)), ValueError, "kernel"),
    (lambda: Neighborhood(3, dilation=0), ValueError, "dilation"),
    (lambda: Neighborhood(3, stride=(1, 0)), ValueError, "stride"),
    (lambda: Neighborhood(3, causal=1), TypeError, "causal"),
    (lambda: Blocks(0), ValueError, "size"),
    (lambda: Blocks(2, offset=-1), ValueError, "offset"),
    (lambda: Stripes(-1, 2), ValueError, "dim"),
    (lambda: Stripes(0, 0), ValueError, "width"),
    (lambda: Grid((2, 0)), ValueError, "size"),
    (lambda: Strided(0), ValueError, "stride"),
    (lambda: Strided(2, offset=-1), ValueError, "offset"),
    (lambda: Columns(4, 5), ValueError, "width"),
    (lambda: Columns(4, 0), ValueError, "width"),
    (lambda: Sink(0), ValueError, "n"),
    (lambda: Sink(True), TypeError, "n"),
    (lambda: Prefix(-2), ValueError, "n"),
    (lambda: Global(3), TypeError, "indices"),
    (lambda: Global([]), ValueError, "indices"),
    (lambda: Global([2, -1]), ValueError, "indices"),
    (lambda: Distance(0, 3, 3), ValueError, "hi"),
    (lambda: Distance(0, -1, 3), ValueError, "lo"),
    (lambda: Routing(0, 1), ValueError, "block"),
    (lambda: Routing(2, 0), ValueError, "topk"),
    (lambda: Routing(2, 1, scorer="max_qk"), ValueError, "scorer"),
    (lambda: Predicate(3), TypeError, "callable"),
    (lambda: PerHead([]), TypeError, "PerHead"),
    (lambda: PerHead([Causal(), 3]), TypeError, "PerHead"),
    (lambda: And(Causal(), 3), TypeError, "And"),
    (lambda: Not("Causal()"), TypeError, "Not"),
]


@pytest.mark.parametrize(
    "make, error, needle", BAD_ARGUMENTS, ids=[f"{e.__name__}-{n}-{i}" for i, (_, e, n) in enumerate(BAD_ARGUMENTS)]
)
def test_constructor_rejects_bad_argument_naming_it(make, error, needle):
    with pytest.raises(error, match=rf"\b{needle}\b"):
        make()


# -- canvas checks ---------------------------------------------------------------------------------

UNDEFINED_ON_CANVAS = [
    (Neighborhood(4, dilation=2), (7,), None, "kernel * dilation = 8"),
    (Neighborhood((3, 4)), (5, 3), None, "kernel * dilation = 4"),
    (Neighborhood((3, 3)), (7,), None, "kernel"),
    (Neighborhood(3, causal=(True, False, True)), (5, 6), None, "causal"),
    (Neighborhood(3), (7,), (8,), "equal q and kv canvases"),
    (Neighborhood(3), (5, 6), (6, 5), "equal q and kv canvases"),
    (Blocks(8), (7,), None, "exceeds the canvas extent 7"),
    (Blocks((2, 2, 2)), (4, 4), None, "size"),
    (Blocks(2), (4, 4), (16,), "same dims"),
    (Grid(3), (4, 4), None, "divide"),
    (Grid(2), (4, 4), (4, 6), "divide"),
    (Global((7,)), (7,), None, "index 7"),
    (Global((1, 9)), (13,), (7,), "index 9"),
    (Causal(dim=1), (7,), None, "dim=1"),
    (Causal(dim=0), (4, 4), (16,), "same dims"),
    (Window(1, 1, dim=2), (4, 4), None, "dim=2"),
    (Window(7, 0), (7,), None, "< 7"),
    (Window(0, 4, dim=1), (3, 4), None, "< 4"),
    (Stripes(0, 3), (2, 5), None, "width"),
    (Stripes(1, 2), (7,), None, "dim=1"),
    (Distance(1, 0, 2), (7,), None, "dim=1"),
    (Dilated(4, 2), (7,), None, "window * dilation"),
    (Sink(8), (7,), None, "n must be <= the number of kv tokens 7"),
    (Prefix(8), (13,), (7,), "kv tokens 7"),
    (Strided(8), (7,), None, "stride"),
    (Columns(8, 1), (13,), (7,), "stride"),
    (Causal() & ~Neighborhood(9), (7,), None, "kernel * dilation = 9"),
    (PerHead([Full(), Sink(9)]), (7,), None, "Sink(9)"),
]


@pytest.mark.parametrize("pattern, canvas, kv_canvas, needle", UNDEFINED_ON_CANVAS, ids=str)
def test_check_canvas_rejects_pattern_undefined_on_canvas(pattern, canvas, kv_canvas, needle):
    kv = None if kv_canvas is None else Canvas(kv_canvas)
    with pytest.raises(ValueError, match=re.escape(needle)):
        check_canvas(pattern, Canvas(canvas), kv)


def test_reference_mask_checks_the_canvas():
    with pytest.raises(ValueError, match="kernel"):
        reference_mask(Neighborhood(9), (7,))


# -- every node against the brute force ------------------------------------------------------------

CATALOGUE = [
    Full(),
    Causal(),
    Causal(2),
    Causal(-1),
    Causal(dim=0),
    Causal(1, dim=1),
    Window(2, 1),
    Window(0, 3),
    Window(1, 1, dim=1),
    SlidingWindow(3),
    SlidingWindow(4, causal=False),
    Dilated(2, 2),
    Dilated(1, 3),
    Neighborhood(1),
    Neighborhood(3),
    Neighborhood(4),
    Neighborhood(2, dilation=2),
    Neighborhood(3, stride=2),
    Neighborhood(2, stride=3),
    Neighborhood(3, causal=True),
    Neighborhood(3, stride=2, causal=True),
    Neighborhood((3, 2), dilation=(1, 2), causal=(False, True)),
    Neighborhood((2, 3, 2), dilation=(1, 1, 2), stride=(1, 2, 1), causal=(True, False, False)),
    Blocks(2),
    Blocks(3, offset=1),
    Blocks((2, 3), offset=(1, 0)),
    Stripes(0, 2),
    Stripes(1, 3),
    Grid(1),
    Grid(2),
    Grid((1, 2, 5)),
    Strided(3),
    Strided(4, offset=1),
    Strided(2, offset=5),
    Columns(4, 1),
    Columns(5, 2),
    Sink(1),
    Sink(3),
    Prefix(4),
    Global((0, 5)),
    Global((2,)),
    Segments(),
    Distance(0, 1, 3),
    Distance(1, 0, 2),
    Routing(2, 1),
    Routing(3, 2),
    Predicate(every_third),
    Predicate(parity_by_head_and_batch),
    Predicate(near_or_first),
    PerHead([Causal(), Window(1, 1), Full()]),
    PerHead([Causal() - Window(0, 0), Strided(2) | Sink(1)]),
    Causal() & Window(3, 0),
    Sink(2) | Window(1, 0),
    ~Causal(),
    Full() - Causal(),
    Neighborhood(3) | Global((0,)),
    Blocks(2) & ~Segments(),
    (Prefix(3) | Causal()) & Routing(2, 2),
    PerHead([Distance(0, 0, 1) & Window(1, 1, dim=1), Stripes(0, 1) | Columns(3, 1)]),
]

CANVASES = [
    ((1,), (1,)),
    ((7,), (7,)),
    ((13,), (13,)),
    ((12,), (12,)),
    ((13,), (7,)),
    ((7,), (13,)),
    ((5, 6), (5, 6)),
    ((4, 4), (4, 4)),
    ((4, 4), (5, 6)),
    ((3, 4, 5), (3, 4, 5)),
    ((2, 4, 5), (2, 4, 5)),
]

BATCH, HEADS = 2, 3
SAMPLES = [(0, 0), (1, 2)]


def defined_on(pattern, q_shape, kv_shape) -> bool:
    try:
        check_canvas(pattern, Canvas(q_shape), Canvas(kv_shape))
    except ValueError:
        return False
    return True


def runtime_data(pattern, q_shape, kv_shape, rng):
    """Packed-document segment ids (q, kv) and explicit routing indices for the pattern's Routing node."""
    n_q, n_kv = int(np.prod(q_shape)), int(np.prod(kv_shape))
    segments = tuple(np.sort(rng.integers(0, 3, size=(BATCH, n)), axis=1) for n in (n_q, n_kv))
    routing_node = next((node for node in pattern.walk() if isinstance(node, Routing)), None)
    if routing_node is None:
        return segments, None
    q_blocks, kv_blocks = -(-n_q // routing_node.block), -(-n_kv // routing_node.block)
    topk = min(routing_node.topk, kv_blocks)
    scores = rng.random((BATCH, HEADS, q_blocks, kv_blocks))
    return segments, np.argsort(scores, axis=-1)[..., :topk]


def test_catalogue_covers_every_node():
    in_catalogue = {type(node) for pattern in CATALOGUE for node in pattern.walk()}
    expected = {cls for cls in NODES.values() if isinstance(cls, type)} | {Predicate, And, Or, Not}
    assert expected <= in_catalogue


@pytest.mark.parametrize("pattern", CATALOGUE, ids=str)
def test_node_matches_brute_force(pattern):
    rng = np.random.default_rng(0)
    checked = []
    for q_shape, kv_shape in CANVASES:
        if not defined_on(pattern, q_shape, kv_shape):
            continue
        segments, routing = runtime_data(pattern, q_shape, kv_shape, rng)
        for batch, head in SAMPLES:
            data = dict(batch=batch, head=head, segments=segments, routing=routing)
            got = reference_mask(pattern, q_shape, kv_shape, **data)
            expected = brute_mask(pattern, q_shape, kv_shape, **data)
            assert got.shape == expected.shape
            wrong = np.argwhere(got != expected)
            assert not wrong.size, (
                f"{pattern} on q {q_shape} / kv {kv_shape}, b={batch} h={head}: (q, kv) {wrong[:5].tolist()}"
            )
        checked.append((q_shape, kv_shape))
    assert len(checked) >= 2, f"{pattern} is defined on too few test canvases: {checked}"
