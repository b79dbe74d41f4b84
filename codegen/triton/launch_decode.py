"""Run a generated decode module: this call's tile lists, the split-KV grid, and the log-sum-exp merge.

The lists (``maskir.planner.decode.decode_grid``) depend on the call only through the q tiles its queries
fall in and each batch's valid kv tiles; they are kept on the device per such key (a generation loop
builds them once every ``DECODE_BLOCK_Q`` tokens, not per token). The partials of all (split, slot)
programs merge in one ``_merge`` launch: ``tables.merge_lse`` (the merge of a plan's parts) fused.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from maskir.codegen.triton.emit import GeneratedSource
from maskir.codegen.triton.interpreter_lock import run_kernel
from maskir.planner.decode import DecodeGrid, decode_grid, query_tiles, valid_tiles
from maskir.planner.plan import Plan

LIST_MEMO = 16
"""Per-call list sets kept on the device (least recently used ones go first)."""


class TritonDecode:
    """The decode kernel of one generated module for one decode plan.

    ``forward(q, k, v, ...) -> (out, lse)``: q [B, H, N_Q, D]; k, v a contiguous cache [B, Hkv, S, D] or, with
    ``block_table`` [B, max_pages] int32, a paged pool [pages, page_size, Hkv, D]; ``q_offsets`` and
    ``kv_lens`` int [B] (host arrays; absolute position of query 0, valid cache positions); ``ring``: the
    cache is a ring buffer of that many slots (position p at slot p % ring). lse is fp32 [B, H, N_Q].
    """

    def __init__(self, module: ModuleType, plan: Plan, generated: GeneratedSource):
        self.module, self.plan, self.generated = module, plan, generated
        self.heads, self.kv_heads = int(module.N_HEADS), int(module.N_KV_HEADS)
        self.n_q, self.head_dim = int(module.N_Q), int(module.HEAD_DIM)
        self.pack, self.rows, self.row_blocks = int(module.PACK), int(module.DECODE_ROWS), int(module.ROW_BLOCKS)
        self._lists: OrderedDict[tuple, tuple[DecodeGrid, dict[str, torch.Tensor]]] = OrderedDict()

    def grid(
        self, q_offsets: np.ndarray, kv_lens: np.ndarray, *, ring: int | None, sms: int, splits: int | None, device
    ) -> tuple[DecodeGrid, dict[str, torch.Tensor]]:
        """The grid and device lists of a call (memoised on what they depend on)."""
        first_q, last_q = query_tiles(q_offsets, self.n_q, self.pack, self.rows, self.row_blocks)
        first_kv, stop_kv = valid_tiles(kv_lens, ring)
        key = (first_q.tobytes(), last_q.tobytes(), first_kv.tobytes(), stop_kv.tobytes(), sms, splits, str(device))
        entry = self._lists.get(key)  # read once: another thread may evict the key meanwhile
        if entry is None:
            grid, lists, groups = decode_grid(
                self.plan, self.kv_heads, self.n_q, q_offsets, kv_lens, sms=sms, ring=ring, splits=splits
            )
            arrays = {"LIST_START": lists.start, "LIST_FULL": lists.full, "LIST_INDEX": lists.index, "GROUPS": groups}
            tensors = {name: torch.as_tensor(a.astype(np.int32), device=device) for name, a in arrays.items()}
            entry = self._lists[key] = (grid, tensors)
            while len(self._lists) > LIST_MEMO:
                self._lists.popitem(last=False)
        else:
            with contextlib.suppress(KeyError):
                self._lists.move_to_end(key)
        return entry

    def _tensor_args(self, tensors: Sequence[torch.Tensor]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, t in zip(self.generated.tensor_names, tensors):
            args[f"{name}_ptr"] = t
            args.update({f"{name}_stride{i}": t.stride(i) for i in range(t.dim())})
        return args

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        tensors: Sequence[torch.Tensor],
        q_offsets: np.ndarray,
        kv_lens: np.ndarray,
        block_table: torch.Tensor | None = None,
        ring: int | None = None,
        sms: int,
        splits: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """out [B, H, N_Q, D] (q's dtype) and lse [B, H, N_Q] (fp32, natural log, -inf for empty rows)."""
        batch = q.shape[0]
        grid, lists = self.grid(q_offsets, kv_lens, ring=ring, sms=sms, splits=splits, device=q.device)
        partials = grid.splits * grid.slots
        o_part = torch.empty(
            (partials, batch, self.heads, self.n_q, self.head_dim), dtype=torch.float32, device=q.device
        )
        lse_part = torch.empty((partials, batch, self.heads, self.n_q), dtype=torch.float32, device=q.device)
        if block_table is None:  # [B, Hkv, S, D]: a "page" is a batch's whole cache
            cache = {"stride_kp": k.stride(0), "stride_ks": k.stride(2), "stride_kh": k.stride(1)}
            cache |= {"stride_vp": v.stride(0), "stride_vs": v.stride(2), "stride_vh": v.stride(1)}
            table, page_size = lists["LIST_START"], 1
        else:  # [pages, page_size, Hkv, D]
            cache = {"stride_kp": k.stride(0), "stride_ks": k.stride(1), "stride_kh": k.stride(2)}
            cache |= {"stride_vp": v.stride(0), "stride_vs": v.stride(1), "stride_vh": v.stride(2)}
            table, page_size = block_table, k.shape[1]
        device_ints = torch.as_tensor(np.stack([q_offsets, kv_lens]).astype(np.int32), device=q.device)
        args = {
            "Q": q, "K": k, "V": v, "O_PART": o_part, "LSE_PART": lse_part,
            "stride_qb": q.stride(0), "stride_qh": q.stride(1), "stride_qn": q.stride(2), **cache,
            "Q_OFFSETS": device_ints[0], "KV_LENS": device_ints[1],
            "BLOCK_TABLE": table, "stride_tb": table.stride(0) if block_table is not None else 0,
            **lists, "batch": batch, "n_slots": grid.slots, "n_splits": grid.splits, "sm_scale": float(scale),
            **self._tensor_args(tensors),
            "PAGED": block_table is not None, "PAGE_SIZE": page_size, "RING_SLOTS": ring or 0,
        }  # fmt: skip
        self.launch("_decode", (partials, batch * grid.head_packs * grid.row_blocks), args)
        if partials == 1:
            return o_part[0].to(q.dtype), lse_part[0]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        rows = out.numel() // self.head_dim
        merge = {"O_PART": o_part, "LSE_PART": lse_part, "OUT": out, "LSE": lse, "n_partials": partials, "n_rows": rows}
        self.launch("_merge", (-(-rows // int(self.module.MERGE_ROWS)),), merge)
        return out, lse

    def launch(self, name: str, grid: tuple[int, ...], args: dict[str, Any]) -> None:
        """Run kernel ``name`` of the module on ``grid`` with keyword ``args`` and its launch options."""
        run_kernel(self.module, name, grid, args)
