"""Run a generated Triton module: grids, buffers and launches per plan part.

The tile tables and the log-sum-exp merge of parts are shared with the other backends
(:mod:`maskir.codegen.common.tables`). Grids: the forward and dQ
kernels run one program per (q tile / FWD_SPLIT or DQ_SPLIT, batch * head); dK/dV one per (kv tile /
DKDV_SPLIT, batch * kv head); the preprocess one per (PREPROCESS_ROWS rows, batch * head).

Per-call lists: for a pattern over run-time data, the runtime plans per call which listed tiles the data
leaves open (``maskir.runtime.gating``) and passes them as ``lists``; the kernels then walk only those.

Parts: each writes its own output and LSE (fp32) before the merge; the backward runs every part with the
merged output's LSE and delta and sums the parts' gradients (all deterministic; no atomics).

Gradients of the float tensors a score_mod reads (``trained``): each dQ program adds its pairs'
dS * d score_mod / d T[e] into its own row of a [dQ programs, entries] fp32 buffer (``_accumulate``), and
the rows are summed in order afterwards. Memory: 4 bytes x (dQ programs of every part) x (entries of
those tensors), e.g. 4,096 dQ programs (16 heads x 256 q tiles of 64 rows) x 3,600 entries (a
[16, 15, 15] table) = 59 MB, x 17,424 entries ([16, 33, 33]) = 285 MB; no atomics, so two runs give the
same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch

from maskir.codegen.common.tables import KernelSignature, PartTables, merge_parts, part_tables, sum_part_grads
from maskir.codegen.triton.emit import GeneratedSource
from maskir.codegen.triton.interpreter_lock import run_kernel
from maskir.planner.plan import Plan


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

    walks_gated_lists = True
    """forward/backward take ``lists``: per call, the tiles the run-time data leaves open."""

    def __init__(self, module: ModuleType, plan: Plan, generated: GeneratedSource):
        self.module, self.plan, self.generated = module, plan, generated
        self.heads = int(module.N_HEADS)
        self.kv_heads = int(module.N_KV_HEADS)
        self.head_dim = int(module.HEAD_DIM)
        self.signature = KernelSignature(
            plan, self.heads, self.kv_heads, self.head_dim, tuple(generated.tensor_names), tuple(generated.tensor_dims)
        )
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
        self.signature.check(q, k, v, tensors)

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

    @staticmethod
    def _gates(tables: PartTables, lists, *, backward: bool) -> tuple[dict, ...]:
        """Kernel arguments of one part's per-call lists: ``lists`` holds, per direction (forward/dQ, then
        dK/dV with ``backward``), the runtime's ``GatedLists`` (``buffer`` int32 [B, H or 1, ...] and
        ``open_at``, see ``maskir.runtime.gating``); None walks the plan's lists with GATED=False."""
        if lists is None:
            closed = {"GATE": tables.kv_index, "stride_gb": 0, "stride_gh": 0, "gate_open_at": 0, "GATED": False}
            return (closed, closed) if backward else (closed,)
        return tuple(
            {
                "GATE": gated.buffer,
                "stride_gb": gated.buffer.stride(0),
                "stride_gh": gated.buffer.stride(1) if gated.buffer.shape[1] > 1 else 0,
                "gate_open_at": gated.open_at,
                "GATED": True,
            }
            for gated in lists
        )

    def launch(self, name: str, grid: tuple[int, int], args: dict[str, Any]) -> None:
        """Run kernel ``name`` of the module on ``grid`` with keyword ``args`` and its launch options."""
        run_kernel(self.module, name, grid, args)

    # -- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        tensors: Sequence[torch.Tensor],
        lists: Sequence | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """out [B, H, N_q, D] (q's dtype) and lse [B, H, N_q] (fp32, natural log, -inf for empty rows).
        ``lists``: per plan part, this call's gated forward lists (a 1-tuple) or None (see ``_gates``)."""
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
                **self._gates(tables, lists[index] if lists else None, backward=False)[0],
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
        trained: Sequence[int] = (),
        lists: Sequence | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """dq, dk, dv (in the inputs' dtypes) of the forward's output, given dout. ``lists``: per plan part,
        this call's gated (forward/dQ, dK/dV) lists or None (see ``_gates``)."""
        self._check(q, k, v, tensors)
        table_grads = self.generated.table_grads
        names = [self.generated.tensor_names[i] for i in trained]
        if names and (table_grads is None or not set(names) <= table_grads.offsets.keys()):
            raise ValueError(f"Only float tensors a score_mod reads get gradients, not {names}.")
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
        partials: list[torch.Tensor] = []
        for index, tables in enumerate(parts):

            def buffer(like: torch.Tensor, covered: bool) -> torch.Tensor:
                dtype = torch.float32 if merged else like.dtype
                return (torch.empty if covered else torch.zeros)(like.shape, dtype=dtype, device=like.device)

            dq, dk, dv = buffer(q, tables.covers_q), buffer(k, tables.covers_kv), buffer(v, tables.covers_kv)
            kv_gates, q_gates = self._gates(tables, lists[index] if lists else None, backward=True)
            common = {
                "Q": q, "K": k, "V": v, "DO": dout, "LSE": lse, "DELTA": delta,
                **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("do", dout),
                "n_q": n_q, "n_kv": n_kv, "sm_scale": float(scale),
                **self._table_args(index, tables), **self._tensor_args(tensors),
            }  # fmt: skip
            dq_args = {
                **common, "DQ": dq, **_strides("dq", dq),
                "KV_START": tables.kv_start, "KV_FULL": tables.kv_full, "KV_INDEX": tables.kv_index,
                "n_q_tiles": tables.n_q_tiles, "KV_PADDED": tables.kv_padded, **kv_gates,
            }  # fmt: skip
            dq_grid = (tables.n_q_tiles * int(self.module.DQ_SPLIT), batch * heads)
            if table_grads is not None:  # one row of table gradients per dQ program, summed below
                partial = torch.zeros((dq_grid[0] * dq_grid[1], table_grads.entries if names else 1), device=q.device)
                dq_args.update(TG=partial, TABLE_GRADS=bool(names))
                partials.append(partial)
            self.launch("_bwd_dq", dq_grid, dq_args)
            dkdv_args = {
                **common, "DK": dk, "DV": dv, **_strides("dk", dk), **_strides("dv", dv),
                "Q_START": tables.q_start, "Q_FULL": tables.q_full, "Q_INDEX": tables.q_index,
                "n_kv_tiles": tables.n_kv_tiles, **q_gates,
            }  # fmt: skip
            grid = (tables.n_kv_tiles * int(self.module.DKDV_SPLIT), batch * self.kv_heads)
            self.launch("_bwd_dkdv", grid, dkdv_args)
            grads.append((dq, dk, dv))
        summed = grads[0] if not merged else sum_part_grads(grads, (q, k, v))
        if not names:
            return summed
        table = torch.cat(partials).sum(0)  # a fixed order: bitwise the same on every run
        return (*summed, *(table_grads.gradient(table, name).to(tensors[i].dtype) for i, name in zip(trained, names)))
