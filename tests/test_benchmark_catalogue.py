"""The benchmark catalogue: well-formed entries, the anchors' meaning at full size, exact plans when small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maskir
from benchmarks.catalogue import CATALOGUE, NAMES, SIZES, case, cases
from maskir.ir import check_canvas
from maskir.reference import evaluate_pairs, reference_mask

ENTRIES = [CATALOGUE[name][size] for name in NAMES for size in SIZES]


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_entry_text_parses_back_to_its_pattern(entry):
    assert maskir.parse(str(entry.pattern)) == entry.pattern


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_entry_fits_its_canvas(entry):
    check_canvas(entry.pattern, entry.canvas)


def test_sizes_hold_the_documented_token_counts():
    assert {entry.tokens for entry in cases("full")} == {16384}
    assert all(2048 <= entry.tokens <= 4096 for entry in cases("medium"))
    assert all(entry.tokens <= 1024 for entry in cases("small"))


def test_sizes_of_an_entry_share_its_pattern_family():
    """Each size is built from the same node types (only the parameters and the canvas shrink)."""
    for name in NAMES:
        families = {tuple(sorted({type(node).__name__ for node in e.pattern.walk()})) for e in CATALOGUE[name].values()}
        assert len(families) == 1, name


def _natten_1d(x: np.ndarray, y: np.ndarray, extent: int, kernel: int) -> np.ndarray:
    """NATTEN, no dilation or stride: the kernel keys starting at clamp(x - kernel // 2, 0, extent - kernel)."""
    start = np.clip(x - kernel // 2, 0, extent - kernel)
    return (start <= y) & (y < start + kernel)


ANCHOR_DEFINITIONS = {
    # shared/anchors/README.md: causal = q >= kv; swa_causal_w1024 = 0 <= q - kv < 1024; na2d_128x128_k17 =
    # NATTEN 2D neighborhood kernel 17 on a 128x128 grid; swin_128x128_w8 = non-overlapping 8x8 windows.
    "dense": lambda q, kv: np.ones(np.broadcast_shapes(q.shape, kv.shape), dtype=bool),
    "causal": lambda q, kv: q >= kv,
    "swa_causal_w1024": lambda q, kv: (q - kv >= 0) & (q - kv < 1024),
    "na2d_128x128_k17": lambda q, kv: _natten_1d(q // 128, kv // 128, 128, 17) & _natten_1d(q % 128, kv % 128, 128, 17),
    "swin_128x128_w8": lambda q, kv: (q // 128 // 8 == kv // 128 // 8) & (q % 128 // 8 == kv % 128 // 8),
}


@pytest.mark.parametrize("name", ANCHOR_DEFINITIONS)
def test_full_entry_means_what_the_anchor_measured(name):
    """On sampled pairs (random, plus every kv of a few query rows) the entry equals the anchors' definition."""
    entry = case(name)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, entry.tokens, 256), [0, 1, 1023, 1024, 8191, 16383]])
    columns = np.arange(entry.tokens)
    got = evaluate_pairs(entry.pattern, entry.canvas, entry.canvas, rows, columns)
    np.testing.assert_array_equal(got, ANCHOR_DEFINITIONS[name](rows[:, None], columns[None, :]))


def test_documents_are_equal_and_contiguous():
    entry = case("documents16", "small")
    ids = entry.segment_ids(batch=2)
    assert ids.shape == (2, entry.tokens) and ids.dtype == torch.int32
    assert torch.equal(torch.bincount(ids[0]), torch.full((16,), entry.tokens // 16))
    assert bool((ids[:, 1:] >= ids[:, :-1]).all())


def test_routing_indices_only_for_routing_entries():
    q = k = torch.randn(1, 2, 1024, 16)
    assert case("causal", "small").routing_indices(q, k) is None
    chosen = case("routing_top8", "small").routing_indices(q, k)
    assert chosen.shape == (1, 2, 1024 // 64, 4)


def test_unknown_entry_or_size_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="swin_128x128_w8"):
        case("swin")
    with pytest.raises(ValueError, match="medium"):
        case("causal", "huge")


HEADS = 2


@pytest.mark.parametrize("name", NAMES)
def test_small_entry_plan_equals_reference_mask(name):
    """The planner's allowed set for the small size equals the reference, per head, with the entry's data."""
    entry = case(name, "small")
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, HEADS, entry.tokens, 16, generator=generator) for _ in range(2))
    data = {"segments": entry.segment_ids(), "routing": entry.routing_indices(q, k)}
    planned = maskir.plan(entry.pattern, entry.canvas, heads=HEADS)
    for head in range(HEADS):
        expected = reference_mask(entry.pattern, entry.canvas, head=head, **data)
        np.testing.assert_array_equal(planned.to_mask(head, **data), expected, err_msg=f"head {head}")
