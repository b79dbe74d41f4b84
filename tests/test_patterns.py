"""maskir.patterns: every helper's mask equals a brute force of its paper's definition.

The brute forces below are written from the papers (and, where a paper leaves a convention open, from the
authors' reference code), with loops over tokens, windows or blocks; they do not use maskir. Each is
compared with ``maskir.reference.reference_mask`` of the helper's pattern on a small canvas.
"""

from __future__ import annotations

import inspect
import itertools
import random
from math import prod

import numpy as np
import pytest

from maskir import patterns
from maskir.canvas import Canvas
from maskir.ir import Pattern, Predicate
from maskir.reference import reference_mask


def mask(pattern: Pattern, shape, **kwargs) -> np.ndarray:
    return reference_mask(pattern, Canvas(shape), **kwargs)


def pairwise(n: int, allowed) -> np.ndarray:
    """[n, n] mask of allowed(q, kv) over all pairs of flat indices."""
    return np.array([[bool(allowed(q, kv)) for kv in range(n)] for q in range(n)])


def from_groups(n: int, groups) -> np.ndarray:
    """Tokens attend to every token of their group (groups are lists of flat indices)."""
    out = np.zeros((n, n), dtype=bool)
    for group in groups:
        group = np.asarray(group).ravel()
        out[np.ix_(group, group)] = True
    return out


def per_dim(value, ndim: int) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value,) * ndim


# -- natten ---------------------------------------------------------------------------------------


def natten_keys_1d(x: int, extent: int, k: int, d: int, s: int, causal: bool) -> list[int]:
    """Coordinates one query sees in one dim: NAT's k-window clamped inside the sequence, taken inside
    the query's dilation group (DiNAT), and shared by a stride group through its leader (GNA)."""
    group = list(range(x % d, extent, d))
    i = group.index(x)
    if causal:
        leader = min(i // s * s + s - 1, len(group) - 1)
        return group[max(0, leader - k + 1) : i + 1]
    leader = min(i // s * s + s // 2, len(group) - 1)
    start = min(max(leader - k // 2, 0), len(group) - k)
    return group[start : start + k]


def natten_brute(shape, kernel, dilation=1, stride=1, causal=False) -> np.ndarray:
    nd, n = len(shape), prod(shape)
    args = [per_dim(a, nd) for a in (kernel, dilation, stride, causal)]
    out = np.zeros((n, n), dtype=bool)
    for q in range(n):
        xq = np.unravel_index(q, shape)
        keys = [natten_keys_1d(xq[d], shape[d], *(a[d] for a in args)) for d in range(nd)]
        for xk in itertools.product(*keys):
            out[q, np.ravel_multi_index(xk, shape)] = True
    return out


NATTEN_CASES = [
    ((64,), dict(kernel=7)),
    ((64,), dict(kernel=8)),
    ((64,), dict(kernel=5, dilation=3)),
    ((64,), dict(kernel=6, dilation=2, stride=3)),
    ((64,), dict(kernel=7, stride=4, causal=True)),
    ((64,), dict(kernel=(5,), dilation=(2,), stride=(2,), causal=(True,))),
    ((16, 16), dict(kernel=(5, 7))),
    ((16, 16), dict(kernel=3, dilation=2)),
    ((16, 16), dict(kernel=(5, 4), dilation=(2, 3), stride=(2, 1), causal=(True, False))),
    ((4, 6, 8), dict(kernel=(3, 3, 5), dilation=(1, 2, 1), stride=(1, 1, 2), causal=(False, False, True))),
]


@pytest.mark.parametrize("shape, kwargs", NATTEN_CASES, ids=lambda c: str(c))
def test_natten_equals_neighborhood_definition(shape, kwargs):
    expected = natten_brute(shape, **kwargs)
    assert (expected.sum(1) > 0).all()
    np.testing.assert_array_equal(mask(patterns.natten(**kwargs), shape), expected)


def test_natten_sees_exactly_kernel_keys_per_query_when_not_causal():
    counts = mask(patterns.natten((5, 7), dilation=(2, 1)), (16, 16)).sum(1)
    assert (counts == 35).all()


# -- swin, maxvit, cswin --------------------------------------------------------------------------


def window_groups(shape, window) -> np.ndarray:
    """Swin's window_partition of the token ids: one row per window."""
    (h, w), (wh, ww) = shape, window
    ids = np.arange(h * w).reshape(h // wh, wh, w // ww, ww)
    return ids.transpose(0, 2, 1, 3).reshape(-1, wh * ww)


def swin_shifted_brute(shape, window) -> np.ndarray:
    """SW-MSA as Swin computes it: roll the map by -shift, window-partition, mask pairs from different
    regions of the rolled map (Swin's img_mask / attn_mask), and roll back (ids keep original positions)."""
    (h, w), (wh, ww) = shape, window
    sh, sw = wh // 2, ww // 2
    rolled = np.roll(np.arange(h * w).reshape(h, w), (-sh, -sw), axis=(0, 1))
    region = np.zeros((h, w), dtype=int)
    label = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[hs, ws] = label
            label += 1
    out = np.zeros((h * w, h * w), dtype=bool)
    for by, bx in itertools.product(range(h // wh), range(w // ww)):
        rows, cols = slice(by * wh, (by + 1) * wh), slice(bx * ww, (bx + 1) * ww)
        ids, labels = rolled[rows, cols].ravel(), region[rows, cols].ravel()
        out[np.ix_(ids, ids)] = labels[:, None] == labels[None, :]
    return out


@pytest.mark.parametrize("shape, window", [((16, 16), 4), ((16, 16), (4, 8)), ((12, 15), (3, 5))])
def test_swin_equals_window_partition(shape, window):
    expected = from_groups(prod(shape), window_groups(shape, per_dim(window, 2)))
    np.testing.assert_array_equal(mask(patterns.swin(window), shape), expected)


@pytest.mark.parametrize(
    "shape, window", [((16, 16), 4), ((16, 16), 8), ((16, 16), (4, 8)), ((15, 15), 5), ((14, 14), 7), ((12, 12), 3)]
)
def test_shifted_swin_equals_cyclic_shift_with_swin_mask(shape, window):
    expected = swin_shifted_brute(shape, per_dim(window, 2))
    np.testing.assert_array_equal(mask(patterns.swin(window, shifted=True), shape), expected)


def grid_groups(shape, grid) -> np.ndarray:
    """MaxViT's grid partition of the token ids: a G x G grid, one row per group of tokens spaced extent/G apart."""
    (h, w), (gh, gw) = shape, grid
    ids = np.arange(h * w).reshape(gh, h // gh, gw, w // gw)
    return ids.transpose(1, 3, 0, 2).reshape(-1, gh * gw)


@pytest.mark.parametrize("block, grid", [(4, 4), ((4, 8), (2, 8)), (2, 8)])
def test_maxvit_block_and_grid_equal_partitions(block, grid):
    shape, n = (16, 16), 256
    attention = patterns.maxvit(block, grid)
    np.testing.assert_array_equal(mask(attention.block, shape), from_groups(n, window_groups(shape, per_dim(block, 2))))
    np.testing.assert_array_equal(mask(attention.grid, shape), from_groups(n, grid_groups(shape, per_dim(grid, 2))))
    assert attention == (attention.block, attention.grid)


@pytest.mark.parametrize("heads", [2, 4])
def test_cswin_first_half_of_heads_horizontal_stripes_second_half_vertical(heads):
    (h, w), sw = (16, 16), 4
    ids = np.arange(h * w).reshape(h, w)
    horizontal = from_groups(h * w, ids.reshape(h // sw, sw * w))
    vertical = from_groups(h * w, ids.T.reshape(w // sw, sw * h))
    pattern = patterns.cswin(sw, heads)
    for head in range(2 * heads):
        expected = horizontal if head % heads < heads // 2 else vertical
        np.testing.assert_array_equal(mask(pattern, (h, w), head=head), expected)


# -- halonet --------------------------------------------------------------------------------------


def halonet_brute(shape, block, halo) -> np.ndarray:
    """Each query block attends to its block grown by the halo on every side, cut at the canvas."""
    n = prod(shape)
    out = np.zeros((n, n), dtype=bool)
    for corner in itertools.product(*(range(0, extent, block) for extent in shape)):
        queries = itertools.product(*(range(c, min(c + block, extent)) for c, extent in zip(corner, shape)))
        keys = itertools.product(*(range(max(c - halo, 0), min(c + block + halo, e)) for c, e in zip(corner, shape)))
        q_ids = [np.ravel_multi_index(x, shape) for x in queries]
        kv_ids = [np.ravel_multi_index(x, shape) for x in keys]
        out[np.ix_(q_ids, kv_ids)] = True
    return out


@pytest.mark.parametrize("shape, block, halo", [((16, 16), 4, 2), ((16, 16), 4, 1), ((12, 10), 4, 1), ((64,), 8, 3)])
def test_halonet_equals_blocks_with_halo(shape, block, halo):
    np.testing.assert_array_equal(mask(patterns.halonet(block, halo, shape), shape), halonet_brute(shape, block, halo))


def test_halonet_with_equal_arguments_is_one_pattern():
    assert patterns.halonet(4, 2, (16, 16)) == patterns.halonet(4, 2, Canvas((16, 16)))
    assert patterns.halonet(4, 2, (16, 16)) != patterns.halonet(4, 1, (16, 16))


# -- language: windows, sinks, documents ----------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8])
def test_sliding_window_causal_keeps_the_last_size_tokens(size):
    expected = pairwise(64, lambda q, kv: 0 <= q - kv < size)
    np.testing.assert_array_equal(mask(patterns.sliding_window(size), 64), expected)


@pytest.mark.parametrize("size", [7, 8])
def test_sliding_window_bidirectional_keeps_half_the_size_on_each_side(size):
    expected = pairwise(64, lambda q, kv: abs(q - kv) <= size // 2)
    np.testing.assert_array_equal(mask(patterns.sliding_window(size, causal=False), 64), expected)


@pytest.mark.parametrize("window, global_tokens", [(8, (0, 10, 63)), (4, ())])
def test_longformer_equals_window_or_symmetric_global(window, global_tokens):
    expected = pairwise(64, lambda q, kv: abs(q - kv) <= window // 2 or q in global_tokens or kv in global_tokens)
    np.testing.assert_array_equal(mask(patterns.longformer(window, global_tokens), 64), expected)


def test_streaming_llm_keeps_sinks_and_recent_window():
    expected = pairwise(64, lambda q, kv: kv <= q and (kv < 4 or q - kv < 8))
    np.testing.assert_array_equal(mask(patterns.streaming_llm(4, 8), 64), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_document_attends_within_own_document(causal):
    ids = np.array([0] * 5 + [1] * 12 + [2] * 15)
    expected = pairwise(32, lambda q, kv: ids[q] == ids[kv] and (kv <= q or not causal))
    np.testing.assert_array_equal(mask(patterns.document(causal), 32, segments=ids[None]), expected)


def test_prefix_lm_is_bidirectional_in_the_prefix_and_causal_after():
    expected = pairwise(64, lambda q, kv: kv < 10 or kv <= q)
    np.testing.assert_array_equal(mask(patterns.prefix_lm(10), 64), expected)


@pytest.mark.parametrize("causal", [True, False])
def test_fixed_equals_own_block_or_summary_columns(causal):
    stride, width = 16, 2

    def allowed(i, j):
        a1 = j // stride == i // stride
        a2 = j % stride in range(stride - width, stride)
        return (a1 or a2) and (j <= i or not causal)

    np.testing.assert_array_equal(mask(patterns.fixed(stride, width, causal), 128), pairwise(128, allowed))


@pytest.mark.parametrize("causal", [True, False])
def test_strided_equals_previous_l_tokens_or_every_lth(causal):
    stride = 8

    def allowed(i, j):
        if causal:
            return j <= i and (max(0, i - stride) <= j or (i - j) % stride == 0)
        return abs(i - j) <= stride or (i - j) % stride == 0

    np.testing.assert_array_equal(mask(patterns.strided(stride, causal), 128), pairwise(128, allowed))


# -- per-head patterns: s2, moa -------------------------------------------------------------------


def s2_brute(n, stride, heads, window, block, head) -> np.ndarray:
    """The layout of S2-Attention's reference code: kv block j is a head's "vertical stride" shard when
    (j + head * step) % stride == 0 with step = max(1, stride // heads); local blocks 0 <= i - j < window;
    causal on tokens."""
    step = max(1, stride // heads)

    def allowed(q, kv):
        i, j = q // block, kv // block
        return kv <= q and (i - j < window or (j + head * step) % stride == 0)

    return pairwise(n, allowed)


@pytest.mark.parametrize(
    "n, stride, heads, window, block", [(64, 4, 4, 0, 1), (64, 8, 2, 2, 1), (128, 4, 4, 2, 8), (96, 3, 5, 1, 4)]
)
def test_s2_each_head_equals_its_vertical_stride_shard(n, stride, heads, window, block):
    pattern = patterns.s2(stride, heads, window, block)
    for head in range(heads + 1):
        expected = s2_brute(n, stride, heads, window, block, head % heads)
        np.testing.assert_array_equal(mask(pattern, n, head=head), expected)


def test_s2_heads_together_cover_the_causal_context():
    pattern = patterns.s2(stride=4, heads=4, block=2)
    union = np.logical_or.reduce([mask(pattern, 64, head=h) for h in range(4)])
    np.testing.assert_array_equal(union, np.tril(np.ones((64, 64), dtype=bool)))


@pytest.mark.parametrize("sink", [0, 4])
def test_moa_gives_each_head_its_own_causal_window(sink):
    windows = (4, 16, 64)
    pattern = patterns.moa(windows, sink=sink)
    for head in range(4):
        w = windows[head % 3]
        expected = pairwise(128, lambda q, kv, w=w: kv <= q and (q - kv < w or kv < sink))
        np.testing.assert_array_equal(mask(pattern, 128, head=head), expected)


# -- radial ---------------------------------------------------------------------------------------


def radial_brute(frames, tokens_per_frame, window) -> np.ndarray:
    """Band r = floor(log2(max(|dt|, 1))); the spatial window window >> r halves with each band."""

    def allowed(q, kv):
        (tq, sq), (tk, sk) = divmod(q, tokens_per_frame), divmod(kv, tokens_per_frame)
        band = max(abs(tq - tk), 1).bit_length() - 1
        return abs(sq - sk) < window >> band

    return pairwise(frames * tokens_per_frame, allowed)


@pytest.mark.parametrize("frames, window", [(4, 16), (8, 16), (8, 5), (8, 1), (1, 4), (16, 16)])
def test_radial_window_halves_with_each_doubling_of_frame_distance(frames, window):
    shape = (frames, 16)
    expected = radial_brute(frames, 16, window)
    np.testing.assert_array_equal(mask(patterns.radial(frames, 16, window), shape), expected)


# -- bigbird --------------------------------------------------------------------------------------


def bigbird_block_map(n, block, **kwargs) -> np.ndarray:
    """The helper's mask as a block map, after checking that every (q block, kv block) is all or nothing."""
    blocks = mask(patterns.bigbird(block, canvas=n, **kwargs), n).reshape(n // block, block, n // block, block)
    assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()
    return blocks.any(axis=(1, 3))


@pytest.mark.parametrize(
    "window_blocks, global_blocks, random_blocks, global_ids",
    [(3, 2, 3, {0, 15}), (5, 3, 2, {0, 1, 15}), (1, 0, 4, set()), (3, 2, 0, {0, 15})],
)
def test_bigbird_is_window_or_global_or_r_random_blocks(window_blocks, global_blocks, random_blocks, global_ids):
    n, block, n_blocks, radius = 128, 8, 16, window_blocks // 2
    kwargs = dict(window_blocks=window_blocks, global_blocks=global_blocks, random_blocks=random_blocks, seed=3)
    block_map = bigbird_block_map(n, block, **kwargs)
    for i in range(n_blocks):
        structured = [abs(i - j) <= radius or i in global_ids or j in global_ids for j in range(n_blocks)]
        assert all(block_map[i, structured])
        extra = block_map[i] & ~np.array(structured)
        candidates = sum(not s for s in structured)
        assert extra.sum() == (0 if i in global_ids else min(random_blocks, candidates))


def test_bigbird_random_blocks_are_fixed_by_the_seed():
    first = bigbird_block_map(128, 8, seed=7)
    np.testing.assert_array_equal(first, bigbird_block_map(128, 8, seed=7))
    assert (first != bigbird_block_map(128, 8, seed=8)).any()
    assert patterns.bigbird(8, seed=7, canvas=128) == patterns.bigbird(8, seed=7, canvas=Canvas(128))


def test_bigbird_random_draw_is_the_documented_one():
    """random.Random(seed); for each non-global q block in order, one random() key per candidate kv block
    (neither global nor in the window) in order; the r smallest keys win."""
    n_blocks, global_ids, radius, r, seed = 16, {0, 15}, 1, 3, 5
    rng = random.Random(seed)
    expected = {}
    for i in sorted(set(range(n_blocks)) - global_ids):
        candidates = [j for j in range(n_blocks) if j not in global_ids and abs(i - j) > radius]
        keys = [rng.random() for _ in candidates]
        expected[i] = sorted(candidates[int(k)] for k in np.argsort(keys)[:r])
    block_map = bigbird_block_map(128, 8, random_blocks=r, seed=seed)
    drawn = {
        i: [j for j in range(n_blocks) if block_map[i, j] and j not in global_ids and abs(i - j) > radius]
        for i in expected
    }
    assert drawn == expected


def test_bigbird_without_random_blocks_is_plain_ir():
    assert not any(isinstance(node, Predicate) for node in patterns.bigbird(8, random_blocks=0, canvas=128).walk())


# -- docstrings, text form, argument checks -------------------------------------------------------

CITATIONS = {
    patterns.natten: ("Hassani", "2023"),
    patterns.swin: ("Liu", "2021"),
    patterns.cswin: ("Dong", "2022"),
    patterns.maxvit: ("Tu", "2022"),
    patterns.halonet: ("Vaswani", "2021"),
    patterns.sliding_window: ("Beltagy", "2020"),
    patterns.longformer: ("Beltagy", "2020"),
    patterns.bigbird: ("Zaheer", "2020"),
    patterns.streaming_llm: ("Xiao", "2023"),
    patterns.s2: ("Lin", "2024"),
    patterns.moa: ("Fu", "2024"),
    patterns.moba: ("Lu", "2025"),
    patterns.radial: ("Li", "2025"),
    patterns.document: ("Krell", "2021"),
    patterns.prefix_lm: ("Raffel", "2020"),
    patterns.fixed: ("Child", "2019"),
    patterns.strided: ("Child", "2019"),
}


def test_every_helper_is_listed_with_its_paper():
    public = {
        fn
        for name, fn in inspect.getmembers(patterns, inspect.isfunction)
        if fn.__module__ == patterns.__name__ and not name.startswith("_")
    }
    assert public == set(CITATIONS)


@pytest.mark.parametrize("helper", list(CITATIONS), ids=lambda fn: fn.__name__)
def test_docstring_cites_the_paper(helper):
    author, year = CITATIONS[helper]
    doc = inspect.getdoc(helper)
    assert doc and author in doc and year in doc


PLAIN_IR = [
    patterns.natten((3, 5), dilation=(1, 2), stride=2, causal=(True, False)),
    patterns.swin(7, shifted=True),
    patterns.swin((4, 8)),
    patterns.cswin(4, heads=4),
    *patterns.maxvit(4, 8),
    patterns.sliding_window(64),
    patterns.longformer(8, (0, 5)),
    patterns.bigbird(8, random_blocks=0, canvas=128),
    patterns.streaming_llm(4, 64),
    patterns.s2(8, 4, window=2, block=4),
    patterns.moa((16, 64), sink=4),
    patterns.radial(16, 64, 32),
    patterns.document(causal=True),
    patterns.prefix_lm(16),
    patterns.fixed(128, 8),
    patterns.strided(64, causal=False),
]


@pytest.mark.parametrize("pattern", PLAIN_IR, ids=str)
def test_plain_helpers_round_trip_through_parse(pattern):
    spec = pytest.importorskip("maskir.spec")
    assert not any(isinstance(node, Predicate) for node in pattern.walk())
    assert spec.parse(str(pattern)) == pattern


BAD_ARGUMENTS = [
    (patterns.natten, ((3, 3),), dict(dilation=(1, 1, 1)), ValueError, "same length"),
    (patterns.swin, (4,), dict(shifted="yes"), TypeError, "shifted"),
    (patterns.swin, (0,), dict(shifted=True), ValueError, "window"),
    (patterns.cswin, (4, 3), {}, ValueError, "even"),
    (patterns.halonet, (0, 1, (16, 16)), {}, ValueError, "block"),
    (patterns.halonet, (4, -1, (16, 16)), {}, ValueError, "halo"),
    (patterns.halonet, (4, 1, "16x16"), {}, TypeError, "canvas"),
    (patterns.longformer, (7,), {}, ValueError, "even"),
    (patterns.longformer, (8, 3), {}, TypeError, "global_tokens"),
    (patterns.bigbird, (5,), dict(canvas=64), ValueError, "divide"),
    (patterns.bigbird, (8, 2), dict(canvas=64), ValueError, "odd"),
    (patterns.bigbird, (8, 17), dict(canvas=64), ValueError, "too wide"),
    (patterns.bigbird, (8, 3, 9), dict(canvas=64), ValueError, "global_blocks"),
    (patterns.streaming_llm, (0, 8), {}, ValueError, "sink"),
    (patterns.s2, (0, 4), {}, ValueError, "stride"),
    (patterns.moa, ([],), {}, ValueError, "windows"),
    (patterns.moa, ((4, 0),), {}, ValueError, "windows"),
    (patterns.radial, (4, 16, 17), {}, ValueError, "tokens_per_frame"),
    (patterns.document, ("yes",), {}, TypeError, "causal"),
    (patterns.prefix_lm, (0,), {}, ValueError, "prefix"),
    (patterns.fixed, (4, 5), {}, ValueError, "width"),
    (patterns.strided, (0,), {}, ValueError, "stride"),
]


@pytest.mark.parametrize("helper, args, kwargs, error, words", BAD_ARGUMENTS, ids=lambda x: getattr(x, "__name__", ""))
def test_bad_arguments_are_rejected_with_their_name(helper, args, kwargs, error, words):
    with pytest.raises(error, match=words):
        helper(*args, **kwargs)


def test_moba_is_routed_blocks_plus_own_block_causally():
    block, topk, n = 4, 2, 16
    routing = np.array([[[[0, 3], [0, 2], [1, 2], [0, 1]]]])  # kv blocks per q block, future ones included
    got = reference_mask(patterns.moba(block, topk), n, routing=routing)
    expected = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for kv in range(q + 1):
            routed = kv // block in routing[0, 0, q // block]
            expected[q, kv] = routed or kv // block == q // block
    assert np.array_equal(got, expected)
