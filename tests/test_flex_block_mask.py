"""Plans exported to FlexAttention: ``to_block_mask(plan)`` is ``create_block_mask`` on identity layouts, and
``backend="flex"`` (flex_attention over the plan's BlockMask, permuted layouts gathered and scattered) equals
the float64 reference on CPU (forward: torch has no flex backward on a CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import maskir
from benchmarks.catalogue import cases
from maskir import Canvas, Causal, Columns, Dilated, PerHead, Strided, Window, patterns
from maskir.codegen.flex import to_mask_mod
from maskir.codegen.flex.block_mask import to_block_mask
from maskir.ir import is_dynamic
from maskir.planner import plan
from maskir.reference import reference_attention

SUITE = [(entry.name, entry.pattern, entry.canvas) for entry in cases("small") if not is_dynamic(entry.pattern)]
HELD_OUT = [
    ("strided_or_window", Strided(16) | Window(8, 0), Canvas(512)),
    ("columns_causal", (Columns(64, 4) | Window(31, 0)) & Causal(), Canvas(384)),
    ("dilated_ragged", Dilated(24, 3), Canvas(700)),
    ("na2d_k5_ragged", patterns.natten(5), Canvas((24, 20))),
    ("per_head", PerHead([Causal(), Window(40, 40)]), Canvas(320)),
]


def dense_blocks(num_blocks: torch.Tensor, indices: torch.Tensor, n_kv_blocks: int) -> torch.Tensor:
    """bool [B, H, Q blocks, KV blocks] with the first num_blocks[..., i] indices of each row set."""
    listed = torch.arange(indices.shape[-1]) < num_blocks[..., None]
    dense = torch.zeros(*indices.shape[:-1], n_kv_blocks + 1, dtype=torch.bool)
    dense.scatter_(-1, torch.where(listed, indices.long(), n_kv_blocks), True)
    return dense[..., :n_kv_blocks]


@pytest.mark.parametrize("block", [128, 64])
@pytest.mark.parametrize("name, pattern, canvas", SUITE + HELD_OUT, ids=[c[0] for c in SUITE + HELD_OUT])
def test_identity_block_mask_equals_create_block_mask(name, pattern, canvas, block):
    heads = 2 if isinstance(pattern, PerHead) else 1
    planned = plan(pattern, canvas, heads=heads, block_q=block, block_kv=block, layout="identity")
    ours = to_block_mask(planned)
    theirs = create_block_mask(
        to_mask_mod(pattern, canvas), 1, heads, canvas.size, canvas.size, device="cpu", BLOCK_SIZE=block
    )
    n_kv = -(-canvas.size // block)
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        got = dense_blocks(getattr(ours, num), getattr(ours, idx), n_kv)
        expected = dense_blocks(getattr(theirs, num), getattr(theirs, idx), n_kv)
        assert torch.equal(got, expected), f"{num} differs for {name}"
    assert ours.seq_lengths == (canvas.size, canvas.size)
    assert ours.BLOCK_SIZE == (block, block)


def test_conservative_tile_classes_list_a_superset_of_create_block_mask():
    """A dilated neighborhood on the identity layout: the plan lists tiles of its bounding box; every tile
    create_block_mask lists is listed, and FULL ones agree (flex masks the extra tiles whole)."""
    pattern, canvas = patterns.natten(5, dilation=2), Canvas((24, 20))
    ours = to_block_mask(plan(pattern, canvas, block_q=64, block_kv=64, layout="identity"))
    theirs = create_block_mask(to_mask_mod(pattern, canvas), 1, 1, 480, 480, device="cpu", BLOCK_SIZE=64)
    assert bool((ours.to_dense() >= theirs.to_dense()).all())
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)


FIXED = (Columns(64, 4) | Window(31, 0)) & Causal()
"""A union the planner splits into a gathered-columns part and an identity part (1024 tokens, 64 x 64)."""


def test_block_mask_refuses_parts_in_different_token_orders():
    planned = plan(FIXED, Canvas(1024), block_q=64, block_kv=64)
    assert len({part.layout.name for part in planned.parts}) == 2
    with pytest.raises(ValueError, match="a BlockMask has one: plan it with layout='identity'"):
        to_block_mask(planned)


def _qkv(heads: int, kv_heads: int, n: int, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, dim, generator=generator)
    k, v = (torch.randn(1, kv_heads, n, dim, generator=generator) for _ in range(2))
    return q, k, v


def _scale_bias(score, b, h, q_idx, kv_idx):
    return score - 0.01 * (q_idx - kv_idx).abs()


@pytest.mark.parametrize(
    "pattern, canvas, layout, score_mod, kv_heads",
    [
        (patterns.sliding_window(40), Canvas(256), "identity", None, 2),
        (Causal(), Canvas(200), "identity", _scale_bias, 1),
        (patterns.natten(5), Canvas((16, 16)), "tiled", None, 2),
        (patterns.swin(4), Canvas((16, 16)), "auto", _scale_bias, 2),
        (FIXED, Canvas(1024), "auto", None, 1),
    ],
    ids=["swa_identity_gqa", "causal_ragged_score_mod", "na2d_tiled", "swin_auto", "split_union_replanned"],
)
def test_flex_backend_forward_equals_reference(pattern, canvas, layout, score_mod, kv_heads):
    compiled = maskir.compile(
        pattern, canvas, heads=2, kv_heads=kv_heads, head_dim=16, dtype=torch.float32, device="cpu",
        layout=layout, backend="flex", score_mod=score_mod, block_q=64, block_kv=64,
    )  # fmt: skip
    if layout == "tiled":
        assert not compiled.plan.parts[0].layout.is_identity
    assert len({part.layout.name for part in compiled.plan.parts}) == 1
    q, k, v = _qkv(2, kv_heads, canvas.size)
    with torch.no_grad():
        out, lse = compiled(q, k, v, return_lse=True)
    expected, expected_lse = reference_attention(
        q, k.repeat_interleave(2 // kv_heads, 1), v.repeat_interleave(2 // kv_heads, 1), pattern, canvas,
        score_mod=score_mod, return_lse=True,
    )  # fmt: skip
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-5)


def test_flex_backend_reads_segments_per_call():
    pattern, canvas = maskir.Segments() & Causal(), Canvas(256)
    compiled = maskir.compile(pattern, canvas, heads=1, head_dim=16, dtype=torch.float32, backend="flex", device="cpu")
    q, k, v = _qkv(1, 1, 256)
    segments = (torch.arange(256) // 100)[None].int()
    with torch.no_grad():
        out = compiled(q, k, v, segments=segments)
    expected = reference_attention(q, k, v, pattern, canvas, segments=(segments, segments))
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
