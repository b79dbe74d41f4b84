"""A rank's attention in compact buffers: its own q rows, and only the k/v rows it computes with.

Rank r's sub-plan (``shard.sub_plan``) addresses canvas-sized buffers by original token index. Here it is
re-addressed to compact ones: q row i holds token ``q_tokens[i]`` (r's tokens, in ``token_indices(r)``
order) and k/v row j holds token ``kv_tokens[j]`` (any set of tokens: r's own rows and the rows it
fetched, or one of those alone). Per plan part:

- the q layout's slots hold compact q rows (padding slots stay -1);
- the kv tiles kept are those some head group lists that hold a token of ``kv_tokens``; they are
  renumbered in order, and a slot whose token is not in ``kv_tokens`` becomes padding (-1), so a kv tile
  split between two compact problems is computed in each for its own tokens only (FULL stays exact:
  kernels never read padding slots);
- the predicate becomes ``Predicate(allowed(b, h, q_tokens[q], kv_tokens[kv]))``: the part's lowered
  expression (``lower_predicate``, what every backend evaluates) on the original indices, loaded from two
  captured tables of compact length. Segment ids are read at original indices from the ids the problem
  was built for (captured too), so no run-time tensor is left.

A score_mod is wrapped the same way (``compact_score_mod``). Everything on the device is O(rows of the
problem): the buffers, the two index tables and the tile tables (O(n_kv_tiles) per part).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.codegen.common.lower import lower_predicate
from maskir.codegen.flex.mask_mod import evaluate_torch
from maskir.ir import Pattern, Predicate
from maskir.planner import Layout, Plan, PlanPart, TileTable


@dataclass(frozen=True, eq=False)
class CompactProblem:
    """``plan`` on compact canvases (Canvas(n_q) x Canvas(n_kv)); ``q_tokens`` / ``kv_tokens``: the original
    token of every compact q / k/v row (int64 numpy)."""

    plan: Plan
    q_tokens: np.ndarray
    kv_tokens: np.ndarray


def _compact_index(slots: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Row of each slot's token among ``tokens`` (-1: a padding slot, or a token not among them)."""
    if not tokens.size:
        return np.full(slots.shape, -1, dtype=np.int64)
    order = np.argsort(tokens, kind="stable")
    at = np.minimum(np.searchsorted(tokens[order], slots), tokens.size - 1)
    return np.where((slots >= 0) & (tokens[order][at] == slots), order[at], -1)


def remapped(
    pattern: Pattern,
    canvas: Canvas,
    kv_canvas: Canvas,
    q_tokens: torch.Tensor,
    kv_tokens: torch.Tensor,
    segments: torch.Tensor | None,
) -> Predicate:
    """``Predicate`` over compact indices: ``pattern``'s allowed(b, h, q_tokens[q], kv_tokens[kv]) on the
    original canvases; ``segments`` (ids [B, N]) stand in for the run-time segment ids."""
    expr = lower_predicate(pattern, canvas, kv_canvas)
    given = {ref.name: ref.data for ref in expr.tensors() if ref.data is not None}
    if any(ref.data is None for ref in expr.tensors()):
        if segments is None:
            raise ValueError(f"{pattern} reads segment ids: pass segments=<ids [B, N]>.")
        given.update(segments_q=segments, segments_kv=segments)

    def allowed(b, h, q, kv):
        value = evaluate_torch(expr, {"b": b, "h": h, "q": q_tokens[q], "kv": kv_tokens[kv]}, given)
        return torch.full_like(q + kv, value, dtype=torch.bool) if isinstance(value, bool) else value

    allowed.__name__ = allowed.__qualname__ = f"compact({pattern})"
    return Predicate(allowed)


def compact_score_mod(score_mod: Callable | None, q_tokens: torch.Tensor, kv_tokens: torch.Tensor):
    """``score_mod`` on compact indices: it sees the original tokens ``q_tokens[q]``, ``kv_tokens[kv]``."""
    if score_mod is None:
        return None

    def compact(score, b, h, q, kv):
        return score_mod(score, b, h, q_tokens[q], kv_tokens[kv])

    compact.__name__ = compact.__qualname__ = f"compact({getattr(score_mod, '__qualname__', 'score_mod')})"
    return compact


def _compact_part(plan: Plan, part: PlanPart, q_tokens: np.ndarray, kv_tokens: np.ndarray, pattern: Pattern):
    """``part`` of sub-plan ``plan`` on the compact rows (see the module); None when it keeps no kv tile."""
    q_slots = np.asarray(part.layout.q_tokens, dtype=np.int64)
    if part.layout.kv_tokens is None:
        kv_slots = np.arange(part.n_kv_tiles * plan.block_kv)
        kv_slots = np.where(kv_slots < plan.kv_canvas.size, kv_slots, -1)
    else:
        kv_slots = np.asarray(part.layout.kv_tokens, dtype=np.int64)
    kv_rows = _compact_index(kv_slots, kv_tokens).reshape(part.n_kv_tiles, plan.block_kv)
    pairs = [table.pairs() for table in part.tables]
    listed = np.zeros(part.n_kv_tiles, dtype=bool)
    for _, kv_tile, _ in pairs:
        listed[kv_tile] = True
    kept = np.flatnonzero(listed & (kv_rows >= 0).any(axis=1))
    if not kept.size:
        return None
    renumber = np.full(part.n_kv_tiles, -1, dtype=np.int64)
    renumber[kept] = np.arange(kept.size)
    tables = []
    for q_tile, kv_tile, kind in pairs:
        keep = renumber[kv_tile] >= 0
        tables.append(
            TileTable.from_pairs(q_tile[keep], renumber[kv_tile[keep]], kind[keep], part.n_q_tiles, kept.size)
        )
    layout = Layout(f"compact {part.layout.name}", _compact_index(q_slots, q_tokens), kv_rows[kept].reshape(-1))
    return dataclasses.replace(
        part, pattern=pattern, layout=layout, tables=tuple(tables), n_kv_tiles=int(kept.size), static_tables=()
    )


def compact_problem(
    sub: Plan, q_tokens: np.ndarray, kv_tokens: np.ndarray, segments: torch.Tensor | None = None
) -> CompactProblem | None:
    """Sub-plan ``sub`` (q layout: the rank's tokens) on compact rows ``q_tokens`` x ``kv_tokens`` (see the
    module); None when there are no q rows, or none of its listed kv tiles holds a row of ``kv_tokens``
    (nothing to compute)."""
    if not q_tokens.size or not kv_tokens.size:
        return None
    q_index, kv_index = torch.as_tensor(q_tokens, dtype=torch.long), torch.as_tensor(kv_tokens, dtype=torch.long)
    canvas, kv_canvas = Canvas((int(q_tokens.size),)), Canvas((int(kv_tokens.size),))
    whole = remapped(sub.pattern, sub.canvas, sub.kv_canvas, q_index, kv_index, segments)
    parts = []
    for part in sub.parts:
        pattern = whole if len(sub.parts) == 1 else remapped(
            part.pattern, sub.canvas, sub.kv_canvas, q_index, kv_index, segments
        )  # fmt: skip
        compact = _compact_part(sub, part, q_tokens, kv_tokens, pattern)
        if compact is not None:
            parts.append(compact)
    if not parts:
        return None
    plan = dataclasses.replace(sub, pattern=whole, canvas=canvas, kv_canvas=kv_canvas, parts=tuple(parts))
    return CompactProblem(plan, np.asarray(q_tokens, dtype=np.int64), np.asarray(kv_tokens, dtype=np.int64))
