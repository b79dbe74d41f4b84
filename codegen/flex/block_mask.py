"""A maskir plan as a FlexAttention ``BlockMask``: flex's kernels walking maskir's tiles and token order.

``to_block_mask(plan)`` reads the plan's tile tables (O(q tiles x kv tiles): the size of the BlockMask's
own index tensors; no token pair is evaluated) into ``BlockMask.from_kv_blocks``:

    kv_num_blocks[0, h, i], kv_indices[0, h, i, :]            PARTIAL kv tiles of q tile i (mask_mod runs)
    full_kv_num_blocks[0, h, i], full_kv_indices[0, h, i, :]   FULL kv tiles (no mask_mod)
    BLOCK_SIZE = (plan.block_q, plan.block_kv), mask_mod = the pattern's predicate (``to_mask_mod``)

A union split into parts lists a tile FULL when one part has it FULL, else PARTIAL when one lists it.
Data-dependent parts (``Segments``, ``Routing``) list a superset decided per call: their tiles are all
PARTIAL, so the mask_mod reads the run-time tensors on each; so are tiles with padding positions. For an
identity layout this is ``create_block_mask`` of the same mask at the same block size wherever the plan's
tile classes are exact (every suite pattern; a conservative class, such as a dilated neighborhood's
bounding box on the identity layout, lists tiles ``create_block_mask`` leaves out: flex masks them whole). For a permuted layout (tiled, grouped, ...)
the BlockMask lives in layout order: position p of q holds token ``q_tokens[p]`` (-1: padding), so the
mask_mod (and a score_mod, ``layout_score_mod``) maps positions to tokens first; ``gather``/``scatter``
move q, k, v into that order and the output back (``runtime`` backend "flex").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from maskir.codegen.flex.mask_mod import to_mask_mod
from maskir.planner.kinds import FULL
from maskir.planner.plan import Layout, Plan


def plan_layout(plan: Plan) -> Layout:
    """The one token order of ``plan``'s parts (a BlockMask has one); ValueError when parts differ."""
    first = plan.parts[0].layout
    for part in plan.parts[1:]:
        q_same = _same(first.q_tokens, part.layout.q_tokens)
        if not (q_same and _same(first.kv_tokens, part.layout.kv_tokens)):
            raise ValueError(
                f"plan of {plan.pattern} has parts in different token orders "
                f"({', '.join(p.layout.name for p in plan.parts)}); a BlockMask has one: plan it with "
                "layout='identity' (or another single layout name) instead of 'auto'."
            )
    return first


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _padded_tiles(tokens: np.ndarray | None, size: int, block: int, n_tiles: int) -> np.ndarray:
    """bool [n_tiles]: tiles holding a position past the tokens (identity: a ragged last tile; a permuted
    order: a -1 slot)."""
    if tokens is None:
        padded = np.zeros(n_tiles, dtype=bool)
        padded[-1] = size % block != 0
        return padded
    return (np.asarray(tokens).reshape(n_tiles, block) < 0).any(axis=1)


def _tile_grid(plan: Plan, layout: Layout) -> np.ndarray:
    """int8 [heads, q tiles, kv tiles]: 2 where a tile is FULL in some part, 1 where listed otherwise. A
    tile with padding positions is never FULL (flex would attend them without a mask_mod), as in
    ``create_block_mask``, which pads the mask with False."""
    part = plan.parts[0]
    grid = np.zeros((plan.heads, part.n_q_tiles, part.n_kv_tiles), dtype=np.int8)
    for part in plan.parts:
        for h in range(plan.heads):
            q_tile, kv_tile, kind = part.tables[part.head_table[h]].pairs()
            rank = np.where((kind == FULL) & (not part.dynamic), 2, 1).astype(np.int8)
            np.maximum.at(grid[h], (q_tile, kv_tile), rank)
    q_padded = _padded_tiles(layout.q_tokens, plan.canvas.size, plan.block_q, grid.shape[1])
    kv_padded = _padded_tiles(layout.kv_tokens, plan.kv_canvas.size, plan.block_kv, grid.shape[2])
    edge = q_padded[None, :, None] | kv_padded[None, None, :]
    return np.where(edge & (grid == 2), np.int8(1), grid)


def _blocks(listed: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_blocks [1, H, Q], indices [1, H, Q, KV]) of a bool grid: listed kv tiles first, ascending."""
    selected = torch.from_numpy(listed)
    counts = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[None].to(device), order[None].to(device)


def layout_index(tokens: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """int64 token at each layout position (-1: padding), or None for the identity order."""
    return None if tokens is None else torch.as_tensor(tokens, dtype=torch.int64, device=device)


def to_block_mask(plan: Plan, *, device: torch.device | str = "cpu", tensors: Mapping[str, torch.Tensor] | None = None):
    """The ``BlockMask`` of ``plan`` (see the module docstring), on ``device``.

    ``tensors``: run-time data the pattern reads (``segments_q``/``segments_kv``, ``routing_map``), as
    ``to_mask_mod`` takes them. Sequence lengths are the layout's (padded) lengths for a permuted layout.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(plan, Plan):
        raise TypeError(f"to_block_mask needs a maskir Plan, got {type(plan).__name__}.")
    device = torch.device(device)
    layout = plan_layout(plan)
    grid = _tile_grid(plan, layout)
    partial, full = _blocks(grid == 1, device), _blocks(grid == 2, device)
    mask_mod = to_mask_mod(plan.pattern, plan.canvas, plan.kv_canvas, tensors=tensors)
    q_index = layout_index(layout.q_tokens, device)
    kv_index = layout_index(layout.kv_tokens, device)
    lengths = (
        plan.canvas.size if q_index is None else q_index.numel(),
        plan.kv_canvas.size if kv_index is None else kv_index.numel(),
    )
    return BlockMask.from_kv_blocks(
        *partial,
        *full,
        BLOCK_SIZE=(plan.block_q, plan.block_kv),
        mask_mod=in_layout_order(mask_mod, q_index, kv_index),
        seq_lengths=lengths,
    )


def in_layout_order(
    fn: Callable, q_index: torch.Tensor | None, kv_index: torch.Tensor | None, *, score: bool = False
) -> Callable:
    """``fn`` (a mask_mod, or with ``score`` a score_mod) called with layout positions instead of tokens:
    positions map to their tokens; a padding position is masked out (a score_mod sees token 0 there)."""
    if q_index is None and kv_index is None:
        return fn

    def tokens(q_idx, kv_idx):
        q_tok = q_idx if q_index is None else q_index[q_idx]
        kv_tok = kv_idx if kv_index is None else kv_index[kv_idx]
        return q_tok, kv_tok

    if score:

        def score_mod(value, b, h, q_idx, kv_idx):
            q_tok, kv_tok = tokens(q_idx, kv_idx)
            return fn(value, b, h, q_tok.clamp(min=0), kv_tok.clamp(min=0))

        return score_mod

    def mask_mod(b, h, q_idx, kv_idx):
        q_tok, kv_tok = tokens(q_idx, kv_idx)
        return (q_tok >= 0) & (kv_tok >= 0) & fn(b, h, q_tok.clamp(min=0), kv_tok.clamp(min=0))

    mask_mod.__name__ = fn.__name__
    return mask_mod
