"""Host side shared by every backend: a plan part's tile tables as int32 tensors, call checks, part merge.

Per plan part the tables of all head groups are stacked into flat int32 arrays: group g's CSR row
pointers are offset by the entries of groups before it, so ``kv_start[g * (n_q_tiles + 1) + i]`` indexes
the shared ``kv_index`` directly (likewise the transposed ``q_*`` arrays). ``head_table[h]`` is head h's
group. A layout's token tables map slot -> original token (-1 for a padding slot).

Parts: each computes its own output and LSE (fp32); :func:`merge_parts` combines them with
``out = sum_p exp(lse_p - lse) * out_p``, ``lse = logsumexp_p lse_p`` (a row no part allows stays 0 with
lse -inf). The backward runs every part with the merged output's LSE and sums the parts' gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from maskir.planner.plan import Plan, PlanPart


@dataclass(frozen=True)
class PartTables:
    """One part's tables as int32 tensors on one device, and the flags kernels are specialised on.

    ``q_tokens`` / ``kv_tokens`` hold the layout's token table, or ``[-1]`` when the side is in token order
    (``q_gather`` / ``kv_gather`` False: slot p is token p); ``identity_tokens`` builds the full table.
    ``kv_rows[e]`` is the q tile of entry e of ``kv_index``, ``q_rows[e]`` the kv tile of entry e of
    ``q_index`` (their CSR rows).
    """

    kv_start: torch.Tensor
    kv_full: torch.Tensor
    kv_index: torch.Tensor
    q_start: torch.Tensor
    q_full: torch.Tensor
    q_index: torch.Tensor
    head_table: torch.Tensor
    q_tokens: torch.Tensor
    kv_tokens: torch.Tensor
    kv_rows: torch.Tensor
    q_rows: torch.Tensor
    n_q_tiles: int
    n_kv_tiles: int
    q_gather: bool
    kv_gather: bool
    kv_padded: bool
    covers_q: bool
    covers_kv: bool


def _stack(starts: list[np.ndarray], counts: list[np.ndarray], indices: list[np.ndarray]):
    """Concatenate per-group CSR arrays, shifting each group's row pointers by the entries before it;
    also the row of every entry."""
    offsets = np.cumsum([0] + [idx.size for idx in indices[:-1]])
    start = np.concatenate([s.astype(np.int64) + off for s, off in zip(starts, offsets)])
    index = np.concatenate(indices) if sum(i.size for i in indices) else np.zeros(1)
    rows = np.concatenate([np.repeat(np.arange(s.size - 1), np.diff(s)) for s in starts])
    return start, np.concatenate(counts), index, rows if rows.size else np.zeros(1)


def _tokens(order: np.ndarray | None, size: int, n_tiles: int, block: int) -> tuple[np.ndarray, bool, bool]:
    """(token table, covers every token, has padding slots) of one side of a layout."""
    if order is None:
        return np.full(1, -1), True, size % block != 0
    order = np.asarray(order)
    if order.size != n_tiles * block:
        raise ValueError(f"A layout must hold n_tiles * block = {n_tiles * block} slots, got {order.size}.")
    present = order[order >= 0]
    return order, np.unique(present).size == size, present.size != order.size


def _int32(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    if array.size and (array.max() >= 2**31 or array.min() < -(2**31)):
        raise ValueError("A tile table entry does not fit in int32; split the problem.")
    return torch.as_tensor(np.ascontiguousarray(array, dtype=np.int32), device=device)


def part_tables(plan: Plan, part: PlanPart, device: torch.device | str) -> PartTables:
    """The device arrays and flags of one plan part."""
    kv_start, kv_full, kv_index, kv_rows = _stack(
        [t.kv_start for t in part.tables], [t.kv_full for t in part.tables], [t.kv_index for t in part.tables]
    )
    q_start, q_full, q_index, q_rows = _stack(
        [t.q_start for t in part.tables], [t.q_full for t in part.tables], [t.q_index for t in part.tables]
    )
    q_tokens, covers_q, _ = _tokens(part.layout.q_tokens, plan.canvas.size, part.n_q_tiles, plan.block_q)
    kv_tokens, covers_kv, kv_padded = _tokens(
        part.layout.kv_tokens, plan.kv_canvas.size, part.n_kv_tiles, plan.block_kv
    )
    return PartTables(
        *(_int32(a, device) for a in (kv_start, kv_full, kv_index, q_start, q_full, q_index, part.head_table)),
        _int32(q_tokens, device),
        _int32(kv_tokens, device),
        _int32(kv_rows, device),
        _int32(q_rows, device),
        part.n_q_tiles,
        part.n_kv_tiles,
        part.layout.q_tokens is not None,
        part.layout.kv_tokens is not None,
        kv_padded,
        covers_q,
        covers_kv,
    )


def identity_tokens(n_tiles: int, block: int, size: int, device: torch.device | str) -> torch.Tensor:
    """The token table of a side in token order: slot p holds token p, -1 past the last token."""
    slots = torch.arange(n_tiles * block, dtype=torch.int32, device=device)
    return torch.where(slots < size, slots, -1)


@dataclass(frozen=True)
class KernelSignature:
    """What a backend's kernels for one plan accept: q [B, heads, N_q, head_dim], k and v
    [B, kv_heads, N_kv, head_dim], and the runtime tensors ``tensor_names`` with ``tensor_dims`` dims."""

    plan: Plan
    heads: int
    kv_heads: int
    head_dim: int
    tensor_names: tuple[str, ...]
    tensor_dims: tuple[int, ...]

    def check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        """ValueError naming the argument that does not fit."""
        expected = (self.heads, self.plan.canvas.size, self.head_dim)
        if q.dim() != 4 or (q.shape[1], q.shape[2], q.shape[3]) != expected:
            raise ValueError(
                f"q must be [B, H={expected[0]}, N_q={expected[1]}, D={expected[2]}], got {tuple(q.shape)}."
            )
        kv_shape = (q.shape[0], self.kv_heads, self.plan.kv_canvas.size, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if tuple(t.shape) != kv_shape:
                raise ValueError(f"{name} must be {list(kv_shape)} for this kernel, got {tuple(t.shape)}.")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.shape[2] * t.stride(2) >= 2**31:
                raise ValueError(f"{name} is too long for the kernels' int32 row offsets: N * stride(2) >= 2**31.")
        if len(tensors) != len(self.tensor_names):
            raise ValueError(f"tensors must hold {list(self.tensor_names)} in that order, got {len(tensors)} tensors.")
        for name, dims, t in zip(self.tensor_names, self.tensor_dims, tensors):
            if not isinstance(t, torch.Tensor) or t.dim() != dims:
                raise ValueError(f"tensor {name!r} must be a {dims}-D tensor, got {getattr(t, 'shape', type(t))}.")


def merge_parts(
    outs: list[torch.Tensor], lses: list[torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over a union of disjoint key sets (the parts of a plan): ``merge_lse`` of the stacked parts."""
    return merge_lse(torch.stack(outs), torch.stack(lses), dtype)


def merge_lse(outs: torch.Tensor, lses: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial softmaxes over disjoint key sets, stacked on dim 0 (``outs`` [P, ..., D], ``lses`` [P, ...]):
    lse = logsumexp_p lse_p, out = sum_p exp(lse_p - lse) out_p. Plan parts and decode splits merge by it.

    A row that no partial allows keeps lse -inf and output 0 (its weights are exp(-inf) = 0, never NaN).
    """
    lse = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - torch.where(torch.isinf(lse), 0.0, lse))
    out = (weights[..., None] * outs).sum(0)
    return out.to(dtype), lse


def sum_part_grads(
    grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], like: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv summed over parts (fp32 buffers), in the dtypes of ``like`` = (q, k, v)."""
    return tuple(torch.stack([g[i] for g in grads]).sum(0).to(t.dtype) for i, t in enumerate(like))
