"""lower_predicate: the lowered expression, evaluated on every (q, kv) pair, is the reference mask.

Every node of the IR on 1-, 2- and 3-D canvases, ragged extents, q and kv canvases of different sizes,
every head of PerHead and two batches of run-time data; then random pattern trees (hypothesis); then the
exact lowered text of a few nodes (before/after), and the rejections.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from strategies import canvas_and_pattern
from torch.nn.attention.flex_attention import and_masks, or_masks

from maskir.canvas import Canvas
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.lower import GLOBAL_INLINE_RUNS, lower_predicate
from maskir.ir import (
    NODES,
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
from maskir.reference import reference_mask

BATCH, HEADS = 2, 4

DOC_IDS = torch.tensor([0] * 7 + [1] * 12 + [2] * 9 + [3] * 9)  # 37 tokens in 4 documents
PREFIX_LENGTHS = torch.tensor([5, 11])  # per batch


def checkerboard(b, h, q_idx, kv_idx):
    return (q_idx + kv_idx) % 2 == 0


def same_document(b, h, q_idx, kv_idx):
    return DOC_IDS[q_idx] == DOC_IDS[kv_idx]


def prefix_per_batch(b, h, q_idx, kv_idx):
    return (kv_idx < PREFIX_LENGTHS[b]) | (q_idx >= kv_idx)


def band_per_head(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx >= 0) & (q_idx - kv_idx <= h + 1)


def causal_either_way(b, h, q_idx, kv_idx):
    return torch.where(h % 2 == 0, q_idx >= kv_idx, kv_idx >= q_idx)


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def near(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= 2


def distance(b, h, q_idx, kv_idx):
    return q_idx - kv_idx  # a non-bool mask_mod: allowed where nonzero


C1, C2, C3 = Canvas(37), Canvas((6, 7)), Canvas((3, 4, 5))

CATALOGUE: list[tuple[Pattern, Canvas, Canvas | None]] = [
    # 1-D, ragged extents (37 tokens)
    (Full(), C1, None),
    (Causal(), C1, None),
    (Causal(3), C1, None),
    (Causal(-2), C1, None),
    (Window(4, 2), C1, None),
    (Dilated(3, 2), C1, None),
    (Dilated(0, 1), C1, None),
    (Neighborhood(5), C1, None),
    (Neighborhood(4), C1, None),
    (Neighborhood(3, dilation=3, stride=2), C1, None),
    (Neighborhood(5, causal=True), C1, None),
    (Neighborhood(3, dilation=2, stride=3, causal=True), C1, None),
    (Neighborhood(1, stride=5), C1, None),
    (Blocks(8), C1, None),
    (Blocks(8, offset=4), C1, None),
    (Stripes(0, 5), C1, None),
    (Grid(4), Canvas(36), None),
    (Strided(5, 2), C1, None),
    (Strided(4, 9), C1, None),
    (Columns(8, 3), C1, None),
    (Sink(4), C1, None),
    (Prefix(9), C1, None),
    (Global((0, 5, 6, 7, 20)), C1, None),
    (Global(tuple(range(0, 36, 3))), C1, None),
    (Segments(), C1, None),
    (Distance(0, 2, 6), C1, None),
    (Routing(8, 2), C1, None),
    (PerHead([Causal(), Window(2, 2), Sink(3)]), C1, None),
    (PerHead([Full(), Segments() & Causal()]), C1, None),
    (Predicate(checkerboard), C1, None),
    (Predicate(same_document), C1, None),
    (Predicate(prefix_per_batch), C1, None),
    (Predicate(band_per_head), C1, None),
    (Predicate(causal_either_way), C1, None),
    (Predicate(distance), C1, None),
    (Predicate(and_masks(causal, near)), C1, None),
    (Predicate(or_masks(near, checkerboard)), C1, None),
    (Sink(4) | Window(5, 0), C1, None),
    (Causal() - Window(3, 0), C1, None),
    (~Blocks(8) & Full(), C1, None),
    (PerHead([Routing(8, 2), Dilated(2, 3)]) | Global((1,)), C1, None),
    # 2-D
    (Causal(dim=1), C2, None),
    (Window(1, 2, dim=0), C2, None),
    (Neighborhood((3, 5)), C2, None),
    (Neighborhood(3, dilation=(2, 1), stride=(1, 2), causal=(True, False)), C2, None),
    (Neighborhood((2, 4), stride=(2, 3)), C2, None),
    (Blocks((2, 3), offset=(1, 0)), C2, None),
    (Stripes(1, 3), C2, None),
    (Grid((2, 7)), C2, None),
    (Distance(1, 1, 3), C2, None),
    (Distance(0, 0, 2) & Window(2, 2, dim=1), C2, None),
    (Neighborhood(3) | Global((4, 40)), C2, None),
    # 3-D
    (Neighborhood((3, 3, 5)), C3, None),
    (Neighborhood(2, dilation=(1, 2, 2), causal=(True, False, True)), C3, None),
    (Blocks(2, offset=1), C3, None),
    (Window(1, 1, dim=2) & Causal(dim=0), C3, None),
    (Grid((3, 2, 5)), C3, None),
    (Distance(0, 1, 2) | Stripes(2, 2), C3, None),
    # q and kv canvases of different sizes (flat nodes) or shapes
    (Full(), Canvas(20), Canvas(33)),
    (Causal(5), Canvas(20), Canvas(33)),
    (Window(3, 10), Canvas(20), Canvas(33)),
    (Dilated(2, 3), Canvas(33), Canvas(20)),
    (Strided(4, 1), Canvas(20), Canvas(33)),
    (Columns(5, 2), Canvas(20), Canvas(33)),
    (Sink(3) | Prefix(7), Canvas(20), Canvas(33)),
    (Global((1, 2, 15)), Canvas(20), Canvas(33)),
    (Global(tuple(range(1, 19, 2))), Canvas(20), Canvas(33)),
    (Segments(), Canvas(20), Canvas(33)),
    (Routing(4, 3), Canvas(20), Canvas(33)),
    (Predicate(checkerboard), Canvas(20), Canvas(33)),
    (Causal(dim=0) & Distance(1, 0, 2), Canvas((4, 5)), Canvas((6, 3))),
    (Blocks(2), Canvas((4, 5)), Canvas((6, 4))),
]


def run_time_data(canvas: Canvas, kv_canvas: Canvas, pattern: Pattern, seed: int = 0):
    """Segment ids for both sides and routing choices for the pattern's Routing node, if any."""
    rng = np.random.default_rng(seed)
    segments = tuple(np.sort(rng.integers(0, 4, size=(BATCH, c.size)), axis=1) for c in (canvas, kv_canvas))
    routing = next((node for node in pattern.walk() if isinstance(node, Routing)), None)
    if routing is None:
        return segments, None, None
    q_blocks, kv_blocks = (-(-c.size // routing.block) for c in (canvas, kv_canvas))
    chosen = rng.integers(0, kv_blocks, size=(BATCH, HEADS, q_blocks, routing.topk))
    block_map = np.zeros((BATCH, HEADS, q_blocks, kv_blocks), dtype=np.int8)
    np.put_along_axis(block_map, chosen, 1, axis=3)
    return segments, chosen, block_map


def assert_lowering_matches_reference(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas | None) -> None:
    kv_canvas = kv_canvas or canvas
    expr = lower_predicate(pattern, canvas, kv_canvas)
    assert expr.dtype == "bool"
    segments, routing, block_map = run_time_data(canvas, kv_canvas, pattern)
    env = {
        "q": np.arange(canvas.size)[:, None],
        "kv": np.arange(kv_canvas.size)[None, :],
        "segments_q": segments[0],
        "segments_kv": segments[1],
        "routing_map": block_map,
    }
    for b in range(BATCH):
        for h in range(HEADS):
            got = np.broadcast_to(evaluate(expr, {**env, "b": b, "h": h}), (canvas.size, kv_canvas.size))
            want = reference_mask(pattern, canvas, kv_canvas, batch=b, head=h, segments=segments, routing=routing)
            np.testing.assert_array_equal(got, want, err_msg=f"{pattern} on {canvas}/{kv_canvas}, b={b}, h={h}")


@pytest.mark.parametrize(("pattern", "canvas", "kv_canvas"), CATALOGUE, ids=lambda x: str(x))
def test_lowered_predicate_equals_reference_mask(pattern, canvas, kv_canvas):
    assert_lowering_matches_reference(pattern, canvas, kv_canvas)


def test_catalogue_covers_every_node():
    covered = {type(node).__name__ for pattern, _, _ in CATALOGUE for node in pattern.walk()}
    assert set(NODES) - {"SlidingWindow"} | {"Predicate", "And", "Or", "Not"} <= covered


@given(canvas_and_pattern(dynamic=True))
def test_lowered_random_pattern_equals_reference_mask(canvas_pattern):
    canvas, pattern = canvas_pattern
    assume(len({node.block for node in pattern.walk() if isinstance(node, Routing)}) <= 1)
    assert_lowering_matches_reference(pattern, canvas, None)


# -- the lowered text (before/after) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "canvas", "text"),
    [
        (Full(), C1, "True"),
        (Causal(), C1, "kv <= q"),
        (Window(3, 2), C1, "(q - 3 <= kv) & (kv <= q + 2)"),
        (Full() & Causal(-1), C1, "kv <= q - 1"),
        (Dilated(3, 2), C1, "(abs(q - kv) <= 6) & (q % 2 == kv % 2)"),
        (Dilated(3, 1), C1, "abs(q - kv) <= 3"),
        (Strided(4, 9), C1, "q % 4 == (kv + 1) % 4"),
        (Blocks(4), C2, "(q // 28 == kv // 28) & (q % 7 // 4 == kv % 7 // 4)"),
        (Neighborhood(3), C1, "(min(max(q, 1), 35) - 1 <= kv) & (kv <= min(max(q, 1), 35) + 1)"),
        (Distance(1, 0, 2), C2, "abs(q % 7 - kv % 7) < 2"),
        (Global((0, 1, 2, 9)), C1, "(q <= 2) | (q == 9) | (kv <= 2) | (kv == 9)"),
        (Global(tuple(range(0, 36, 3))), C1, "(load(global_table, q) != 0) | (load(global_table, kv) != 0)"),
        (Segments(), C1, "load(segments_q, b, q) == load(segments_kv, b, kv)"),
        (Routing(8, 2), C1, "load(routing_map, b, h, q // 8, kv // 8) != 0"),
        (PerHead([Causal(), Sink(2)]), C1, "where(h % 2 == 0, kv <= q, kv < 2)"),
        (Causal() - Causal(-4), C1, "(kv <= q) & (kv > q - 4)"),
        (Predicate(checkerboard), C1, "(q + kv) % 2 == 0"),
    ],
    ids=str,
)
def test_lowered_text(pattern, canvas, text):
    assert str(lower_predicate(pattern, canvas)) == text


def test_global_table_marks_each_index_and_is_attached():
    indices = tuple(range(0, 36, 3))
    assert len(indices) > GLOBAL_INLINE_RUNS
    (table,) = lower_predicate(Global(indices), C1).tensors()
    assert (table.name, table.dtype, table.shape) == ("global_table", "int", (34,))
    assert torch.equal(torch.nonzero(table.data).flatten(), torch.tensor(indices))


def test_two_global_tables_get_two_names():
    first, second = Global(tuple(range(0, 36, 3))), Global(tuple(range(1, 36, 4)))
    names = [t.name for t in lower_predicate(first | PerHead([second, first]), C1).tensors()]
    assert names == ["global_table", "global_table_1"]


def test_dynamic_nodes_name_their_run_time_tensors():
    refs = lower_predicate(Segments() & Routing(8, 2), C1, Canvas(20)).tensors()
    assert [(t.name, t.shape, t.data) for t in refs] == [
        ("routing_map", (None, None, 5, 3), None),
        ("segments_kv", (None, 20), None),
        ("segments_q", (None, 37), None),
    ]


def test_predicate_captures_are_named_and_attached():
    refs = lower_predicate(Predicate(same_document) & Predicate(prefix_per_batch), C1).tensors()
    assert [(t.name, t.data) for t in refs] == [("mask_capture_0", DOC_IDS), ("mask_capture_1", PREFIX_LENGTHS)]
    assert refs[0].data is DOC_IDS


# -- rejections ------------------------------------------------------------------------------------


def test_lowering_checks_the_canvas():
    with pytest.raises(ValueError, match="dim=2"):
        lower_predicate(Causal(dim=2), C2)


def test_lowering_rejects_two_routing_block_sizes():
    with pytest.raises(ValueError, match="Routing block sizes 8 and 4"):
        lower_predicate(Routing(8, 2) | Routing(4, 2), C1)


def test_lowering_rejects_a_non_pattern():
    with pytest.raises(TypeError, match="needs a Pattern"):
        lower_predicate("Causal()", C1)


def test_lowering_reports_an_untraceable_mask_mod():
    def branchy(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx if q_idx > 3 else False

    with pytest.raises(TypeError, match="mask_mod tracing.*control flow"):
        lower_predicate(Predicate(branchy), C1)
