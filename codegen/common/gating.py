"""Run-time tile gates of data-dependent patterns: skip the listed tiles this call's data leaves empty.

A plan of a pattern with ``Segments()`` or ``Routing`` holds a static superset: every tile the rest of the
pattern allows is PARTIAL, whatever the documents or the routing choice. When such a node is a top-level
conjunct (``Segments() & Causal()``, ``Routing(64, 8) & Causal()``, or the node alone), a tile where that
node allows no pair is empty for the whole pattern, so kernels may skip it. Per call, from the run-time
tensors, each list entry (q tile, kv tile) gets an int8 flag, 0 only where a gate proves the tile empty:

- ``Segments()``: the tile's segment ids span [min, max] on each side (padding slots left out); the
  ranges of the two tiles must overlap. Exact for contiguous documents, a superset otherwise.
- ``Routing(block, k)``: the tile's tokens touch routing blocks [min, max] (``token // block``) on each
  side; some block pair in that rectangle must be chosen, read from 2-D prefix sums of the block map.

Flags are [B, H, entries], H being 1 (broadcast) when no gate depends on the head. The cost is
O(N + entries + routing blocks) torch operations on the device: no host work, no synchronisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from maskir.codegen.common.tables import PartTables, identity_tokens, part_tables
from maskir.ir import And, Pattern, Routing, Segments
from maskir.planner.plan import Plan, TileTable

_FAR = 2**30
"""Beyond any segment id or block index: the range of a tile with no token is [_FAR, -_FAR] (empty)."""


def gating_nodes(pattern: Pattern) -> tuple[Segments | Routing, ...]:
    """The Segments/Routing nodes among the top-level conjuncts of ``pattern`` (nested And flattened)."""
    if isinstance(pattern, And):
        return gating_nodes(pattern.left) + gating_nodes(pattern.right)
    return (pattern,) if isinstance(pattern, (Segments, Routing)) else ()


def tile_ranges(values: torch.Tensor, tokens: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) [B, tiles]: min and max of ``values`` [B, N] over each tile's tokens (padding slots, -1,
    left out; a tile without tokens gets lo > hi)."""
    valid = tokens >= 0
    gathered = values.to(torch.int64)[:, tokens.clamp(min=0).to(torch.int64)]
    lo = torch.where(valid, gathered, _FAR).view(values.shape[0], -1, block).amin(-1)
    hi = torch.where(valid, gathered, -_FAR).view(values.shape[0], -1, block).amax(-1)
    return lo, hi


def _segments_gate(segments_q, segments_kv, q_side, kv_side, q_tile, kv_tile) -> torch.Tensor:
    q_lo, q_hi = tile_ranges(segments_q, *q_side)
    kv_lo, kv_hi = tile_ranges(segments_kv, *kv_side)
    q_lo, q_hi, kv_lo, kv_hi = q_lo[:, q_tile], q_hi[:, q_tile], kv_lo[:, kv_tile], kv_hi[:, kv_tile]
    return ((q_lo <= kv_hi) & (kv_lo <= q_hi) & (q_lo <= q_hi) & (kv_lo <= kv_hi))[:, None]


def _routing_gate(block_map, routing_block, q_side, kv_side, q_tile, kv_tile) -> torch.Tensor:
    batch, heads, q_blocks, kv_blocks = block_map.shape
    ranges = []
    for (tokens, block), n_blocks, tile in ((q_side, q_blocks, q_tile), (kv_side, kv_blocks, kv_tile)):
        lo, hi = tile_ranges((tokens.clamp(min=0).to(torch.int64) // routing_block)[None], tokens, block)
        lo, hi = lo[0, tile], hi[0, tile]
        ranges.append((lo.clamp(0, n_blocks - 1), hi.clamp(0, n_blocks - 1), lo <= hi))
    (q_lo, q_hi, q_ok), (kv_lo, kv_hi, kv_ok) = ranges
    prefix = torch.zeros(batch, heads, q_blocks + 1, kv_blocks + 1, dtype=torch.int32, device=block_map.device)
    prefix[:, :, 1:, 1:] = block_map.to(torch.int32).cumsum(2).cumsum(3)
    chosen = (
        prefix[:, :, q_hi + 1, kv_hi + 1]
        - prefix[:, :, q_lo, kv_hi + 1]
        - prefix[:, :, q_hi + 1, kv_lo]
        + prefix[:, :, q_lo, kv_lo]
    )
    return (chosen > 0) & (q_ok & kv_ok)


def gate_flags(
    nodes: tuple[Segments | Routing, ...],
    tensors: Mapping[str, torch.Tensor],
    *,
    q_side: tuple[torch.Tensor, int],
    kv_side: tuple[torch.Tensor, int],
    q_tile: torch.Tensor,
    kv_tile: torch.Tensor,
) -> torch.Tensor:
    """int8 [B, H or 1, entries]: 0 where a gate in ``nodes`` proves entry (q_tile[e], kv_tile[e]) empty.

    ``q_side``/``kv_side``: (token table, tile size) of each side; ``tensors``: the run-time tensors by
    name (``segments_q``, ``segments_kv`` [B, N]; ``routing_map`` [B, H, q blocks, kv blocks]).
    """
    q_tile, kv_tile = q_tile.to(torch.int64), kv_tile.to(torch.int64)
    flags = None
    for node in nodes:
        if isinstance(node, Segments):
            segments_q, segments_kv = tensors["segments_q"], tensors["segments_kv"]
            gate = _segments_gate(segments_q, segments_kv, q_side, kv_side, q_tile, kv_tile)
        else:
            gate = _routing_gate(tensors["routing_map"], node.block, q_side, kv_side, q_tile, kv_tile)
        flags = gate if flags is None else flags & gate
    return flags.to(torch.int8)


def list_flags(
    nodes: tuple[Segments | Routing, ...],
    tables: PartTables,
    tensors: Mapping[str, torch.Tensor],
    *,
    blocks: tuple[int, int],
    sizes: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate flags of one part's forward/dQ lists (entries of ``kv_index``) and dK/dV lists (entries of
    ``q_index``); ``blocks`` and ``sizes`` are (q, kv) tile sizes and token counts."""
    (block_q, block_kv), (n_q, n_kv) = blocks, sizes
    device = tables.kv_index.device
    q_tokens = tables.q_tokens if tables.q_gather else identity_tokens(tables.n_q_tiles, block_q, n_q, device)
    kv_tokens = tables.kv_tokens if tables.kv_gather else identity_tokens(tables.n_kv_tiles, block_kv, n_kv, device)
    sides = {"q_side": (q_tokens, block_q), "kv_side": (kv_tokens, block_kv)}
    forward = gate_flags(nodes, tensors, **sides, q_tile=tables.kv_rows, kv_tile=tables.kv_index)
    backward = gate_flags(nodes, tensors, **sides, q_tile=tables.q_index, kv_tile=tables.q_rows)
    return forward, backward


def gated_plan(plan: Plan, tensors: Mapping[str, torch.Tensor], *, batch: int = 0, head: int = 0) -> Plan:
    """``plan`` with only the list entries the gates leave open for (``batch``, ``head``): the tiles the
    kernels run for this data (what the simulator should price). Parts without gates are kept as they are;
    heads share the chosen head's gates (a routing choice has the same number of blocks for every head)."""
    parts = []
    for part in plan.parts:
        nodes = gating_nodes(part.pattern)
        if not nodes or not any(t.kv_index.size for t in part.tables):
            parts.append(part)
            continue
        tables = part_tables(plan, part, "cpu")
        cpu = {name: t.cpu() for name, t in tensors.items()}
        flags, _ = list_flags(
            nodes, tables, cpu, blocks=(plan.block_q, plan.block_kv), sizes=(plan.canvas.size, plan.kv_canvas.size)
        )
        keep = flags[batch, min(head, flags.shape[1] - 1)].numpy() != 0
        gated, offset = [], 0
        for table in part.tables:
            q_tile, kv_tile, kind = table.pairs()
            chosen = keep[offset : offset + q_tile.size]
            offset += q_tile.size
            gated.append(
                TileTable.from_pairs(q_tile[chosen], kv_tile[chosen], kind[chosen], part.n_q_tiles, part.n_kv_tiles)
            )
        parts.append(dataclasses.replace(part, tables=tuple(gated)))
    return dataclasses.replace(plan, parts=tuple(parts))
