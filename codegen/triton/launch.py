"""Run a generated module: device tile tables, grids, buffers, and the log-sum-exp merge of plan parts.

Per plan part the tables of all head groups are stacked into flat int32 arrays: group g's CSR row
pointers are offset by the entries of groups before it, so ``KV_START[g * (n_q_tiles + 1) + i]`` indexes
the shared ``KV_INDEX`` directly (likewise the transposed ``Q_*`` arrays). Grids: the forward and dQ
kernels run one program per (q tile / FWD_SPLIT or DQ_SPLIT, batch * head); dK/dV one per (kv tile /
DKDV_SPLIT, batch * kv head); the preprocess one per (PREPROCESS_ROWS rows, batch * head).

Parts: each writes its own output and LSE (fp32), then ``out = sum_p exp(lse_p - lse) * out_p`` with
``lse = logsumexp_p lse_p`` (a row no part allows stays 0 with lse -inf). The backward runs every part
with the merged output's LSE and delta and sums the parts' gradients (all deterministic; no atomics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from maskir.codegen.triton.emit import GeneratedSource
from maskir.planner.plan import Plan, PlanPart


@dataclass(frozen=True)
class PartTables:
    """One part's tables as int32 tensors on one device, and the flags its kernels are specialised on."""

    kv_start: torch.Tensor
    kv_full: torch.Tensor
    kv_index: torch.Tensor
    q_start: torch.Tensor
    q_full: torch.Tensor
    q_index: torch.Tensor
    head_table: torch.Tensor
    q_tokens: torch.Tensor
    kv_tokens: torch.Tensor
    n_q_tiles: int
    n_kv_tiles: int
    q_gather: bool
    kv_gather: bool
    kv_padded: bool
    covers_q: bool
    covers_kv: bool


def _stack(starts: list[np.ndarray], counts: list[np.ndarray], indices: list[np.ndarray]):
    """Concatenate per-group CSR arrays, shifting each group's row pointers by the entries before it."""
    offsets = np.cumsum([0] + [idx.size for idx in indices[:-1]])
    start = np.concatenate([s.astype(np.int64) + off for s, off in zip(starts, offsets)])
    index = np.concatenate(indices) if sum(i.size for i in indices) else np.zeros(1)
    return start, np.concatenate(counts), index


def _tokens(order: np.ndarray | None, size: int, n_tiles: int, block: int) -> tuple[np.ndarray, bool, bool]:
    """(token table, covers every token, has padding slots) of one side of a layout."""
    if order is None:
        return np.full(1, -1), True, size % block != 0
    order = np.asarray(order)
    if order.size != n_tiles * block:
        raise ValueError(f"A layout must hold n_tiles * block = {n_tiles * block} slots, got {order.size}.")
    present = order[order >= 0]
    return order, np.unique(present).size == size, present.size != order.size


def part_tables(plan: Plan, part: PlanPart, device: torch.device | str) -> PartTables:
    """The device arrays and flags of one plan part."""
    kv_start, kv_full, kv_index = _stack(
        [t.kv_start for t in part.tables], [t.kv_full for t in part.tables], [t.kv_index for t in part.tables]
    )
    q_start, q_full, q_index = _stack(
        [t.q_start for t in part.tables], [t.q_full for t in part.tables], [t.q_index for t in part.tables]
    )
    q_tokens, covers_q, _ = _tokens(part.layout.q_tokens, plan.canvas.size, part.n_q_tiles, plan.block_q)
    kv_tokens, covers_kv, kv_padded = _tokens(
        part.layout.kv_tokens, plan.kv_canvas.size, part.n_kv_tiles, plan.block_kv
    )

    def tensor(array: np.ndarray) -> torch.Tensor:
        if array.size and (array.max() >= 2**31 or array.min() < -(2**31)):
            raise ValueError("A tile table entry does not fit in int32; split the problem.")
        return torch.as_tensor(np.ascontiguousarray(array, dtype=np.int32), device=device)

    return PartTables(
        *(tensor(a) for a in (kv_start, kv_full, kv_index, q_start, q_full, q_index, part.head_table)),
        tensor(q_tokens),
        tensor(kv_tokens),
        part.n_q_tiles,
        part.n_kv_tiles,
        part.layout.q_tokens is not None,
        part.layout.kv_tokens is not None,
        kv_padded,
        covers_q,
        covers_kv,
    )


def _strides(prefix: str, x: torch.Tensor) -> dict[str, int]:
    """``stride_<prefix>b/h/n`` of a [B, H, N, D] tensor whose last dim is contiguous."""
    return {f"stride_{prefix}{axis}": x.stride(i) for i, axis in enumerate("bhn")}


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class TritonAttention:
    """The kernels of one generated module for one plan.

    ``forward(q, k, v, *, scale, tensors) -> (out, lse)`` and ``backward(q, k, v, out, lse, dout, *, scale,
    tensors) -> (dq, dk, dv)`` take q [B, H, N_q, D] and k, v [B, H_kv, N_kv, D]; ``tensors`` are the
    runtime tensors named by ``generated.tensor_names``, in that order. lse is fp32 [B, H, N_q], natural log.
    """

    def __init__(self, module: ModuleType, plan: Plan, generated: GeneratedSource):
        self.module, self.plan, self.generated = module, plan, generated
        self.heads = int(module.N_HEADS)
        self.kv_heads = int(module.N_KV_HEADS)
        self.head_dim = int(module.HEAD_DIM)
        self._tables: dict[tuple[str, int | None], list[PartTables]] = {}
        self._static: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}

    # -- device data -------------------------------------------------------------------------------

    def tables(self, device: torch.device) -> list[PartTables]:
        """The parts' tables on ``device`` (built once per device)."""
        key = (device.type, device.index)
        if key not in self._tables:
            self._tables[key] = [part_tables(self.plan, part, device) for part in self.plan.parts]
        return self._tables[key]

    def static_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Tensors captured by the score_mod, on ``device`` (copied once per device)."""
        key = (device.type, device.index)
        if key not in self._static:
            self._static[key] = {name: t.to(device) for name, t in self.generated.static_tensors.items()}
        return self._static[key]

    # -- checks ------------------------------------------------------------------------------------

    def _check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
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
        if len(tensors) != len(self.generated.tensor_names):
            raise ValueError(
                f"tensors must hold {list(self.generated.tensor_names)} in that order, got {len(tensors)} tensors."
            )
        for name, dims, t in zip(self.generated.tensor_names, self.generated.tensor_dims, tensors):
            if not isinstance(t, torch.Tensor) or t.dim() != dims:
                raise ValueError(f"tensor {name!r} must be a {dims}-D tensor, got {getattr(t, 'shape', type(t))}.")

    def _tensor_args(self, tensors: Sequence[torch.Tensor]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, t in zip(self.generated.tensor_names, tensors):
            args[f"{name}_ptr"] = t
            args.update({f"{name}_stride{i}": t.stride(i) for i in range(t.dim())})
        return args

    def _table_args(self, part: int, tables: PartTables) -> dict[str, Any]:
        return {
            "HEAD_TABLE": tables.head_table,
            "Q_TOKENS": tables.q_tokens,
            "KV_TOKENS": tables.kv_tokens,
            "PART": part,
            "Q_GATHER": tables.q_gather,
            "KV_GATHER": tables.kv_gather,
        }

    def launch(self, name: str, grid: tuple[int, int], args: dict[str, Any]) -> None:
        """Run kernel ``name`` of the module on ``grid`` with keyword ``args`` and its launch options."""
        getattr(self.module, name)[grid](**args, **self.module.LAUNCH_OPTIONS[name])

    # -- forward -----------------------------------------------------------------------------------

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, tensors: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """out [B, H, N_q, D] (q's dtype) and lse [B, H, N_q] (fp32, natural log, -inf for empty rows)."""
        self._check(q, k, v, tensors)
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        batch, heads, n_q, _ = q.shape
        parts = self.tables(q.device)
        merged = len(parts) > 1
        outs, lses = [], []
        for index, tables in enumerate(parts):
            dtype = torch.float32 if merged else q.dtype
            out = (torch.empty if tables.covers_q else torch.zeros)(q.shape, dtype=dtype, device=q.device)
            lse = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
            if not tables.covers_q:
                lse.fill_(float("-inf"))
            args = {
                "Q": q, "K": k, "V": v, "O": out, "LSE": lse,
                **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("o", out),
                "n_q": n_q, "n_kv": k.shape[2], "sm_scale": float(scale),
                "KV_START": tables.kv_start, "KV_FULL": tables.kv_full, "KV_INDEX": tables.kv_index,
                "n_q_tiles": tables.n_q_tiles, "KV_PADDED": tables.kv_padded,
                **self._table_args(index, tables), **self._tensor_args(tensors),
            }  # fmt: skip
            self.launch("_fwd", (tables.n_q_tiles * int(self.module.FWD_SPLIT), batch * heads), args)
            outs.append(out)
            lses.append(lse)
        if not merged:
            return outs[0], lses[0]
        return merge_parts(outs, lses, q.dtype)

    # -- backward ----------------------------------------------------------------------------------

    def backward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        dout: torch.Tensor,
        *,
        scale: float,
        tensors: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dq, dk, dv (in the inputs' dtypes) of the forward's output, given dout."""
        self._check(q, k, v, tensors)
        q, k, v, out, dout = (_last_dim_contiguous(t) for t in (q, k, v, out, dout))
        lse = lse.contiguous()
        batch, heads, n_q, _ = q.shape
        n_kv = k.shape[2]
        rows = int(self.module.PREPROCESS_ROWS)
        delta = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
        args = {"O": out, "DO": dout, "DELTA": delta, **_strides("o", out), **_strides("do", dout), "n_q": n_q}
        self.launch("_bwd_preprocess", (-(-n_q // rows), batch * heads), args)

        parts = self.tables(q.device)
        merged = len(parts) > 1
        grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for index, tables in enumerate(parts):

            def buffer(like: torch.Tensor, covered: bool) -> torch.Tensor:
                dtype = torch.float32 if merged else like.dtype
                return (torch.empty if covered else torch.zeros)(like.shape, dtype=dtype, device=like.device)

            dq, dk, dv = buffer(q, tables.covers_q), buffer(k, tables.covers_kv), buffer(v, tables.covers_kv)
            common = {
                "Q": q, "K": k, "V": v, "DO": dout, "LSE": lse, "DELTA": delta,
                **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("do", dout),
                "n_q": n_q, "n_kv": n_kv, "sm_scale": float(scale),
                **self._table_args(index, tables), **self._tensor_args(tensors),
            }  # fmt: skip
            dq_args = {
                **common, "DQ": dq, **_strides("dq", dq),
                "KV_START": tables.kv_start, "KV_FULL": tables.kv_full, "KV_INDEX": tables.kv_index,
                "n_q_tiles": tables.n_q_tiles, "KV_PADDED": tables.kv_padded,
            }  # fmt: skip
            self.launch("_bwd_dq", (tables.n_q_tiles * int(self.module.DQ_SPLIT), batch * heads), dq_args)
            dkdv_args = {
                **common, "DK": dk, "DV": dv, **_strides("dk", dk), **_strides("dv", dv),
                "Q_START": tables.q_start, "Q_FULL": tables.q_full, "Q_INDEX": tables.q_index,
                "n_kv_tiles": tables.n_kv_tiles,
            }  # fmt: skip
            grid = (tables.n_kv_tiles * int(self.module.DKDV_SPLIT), batch * self.kv_heads)
            self.launch("_bwd_dkdv", grid, dkdv_args)
            grads.append((dq, dk, dv))
        if not merged:
            return grads[0]
        return tuple(torch.stack([g[i] for g in grads]).sum(0).to(like.dtype) for i, like in enumerate((q, k, v)))


def merge_parts(
    outs: list[torch.Tensor], lses: list[torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over a union of disjoint key sets: lse = logsumexp_p lse_p, out = sum_p exp(lse_p - lse) out_p.

    A row that no part allows keeps lse -inf and output 0 (its weights are exp(-inf) = 0, never NaN).
    """
    lse_parts = torch.stack(lses)
    lse = torch.logsumexp(lse_parts, dim=0)
    weights = torch.exp(lse_parts - torch.where(torch.isinf(lse), 0.0, lse))
    out = (weights[..., None] * torch.stack(outs)).sum(0)
    return out.to(dtype), lse
