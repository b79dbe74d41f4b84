"""Build and run a generated TVMScript module on CPU (``llvm``); emit its CUDA source.

``TvmAttention`` has the runtime's ``Kernels`` interface (``forward`` with lse, ``backward``): it parses
the module text with ``tvm.script.from_source`` (which evaluates the text's expressions: pass only text
maskir generated, as the runtime's cache does), builds it once with ``tvm.compile(target="llvm")``, and
per plan part calls ``fwd_<i>`` and ``dq_<i>`` + ``dkdv_<i>`` or the fused ``bwd_<i>`` on torch
CPU tensors (passed to TVM by DLPack, no copies). The tile tables and the part merge are the ones the
Triton backend uses (:mod:`maskir.codegen.common.tables`); outputs are fp32 buffers cast back to the
inputs' dtype. Delta = rowsum(dO * O) is computed with torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from maskir.codegen.common.tables import (
    KernelSignature,
    PartTables,
    identity_tokens,
    merge_parts,
    part_tables,
    sum_part_grads,
)
from maskir.codegen.tvm.balance import fuse_backward, list_costs, work_order
from maskir.codegen.tvm.emit import TvmSource
from maskir.planner.plan import Plan

_TORCH_DTYPES = {"bool": torch.int8, "int": torch.int32, "float": torch.float32}


def _import_tvm():
    try:
        import tvm
    except ImportError as error:
        raise ImportError(
            "maskir's TVM backend needs apache-tvm: pip install 'maskir[tvm]' (apache-tvm>=0.22)."
        ) from error
    return tvm


def host_target() -> dict[str, str]:
    """The llvm target of this CPU (its ``mcpu``: the vector extensions LLVM may use)."""
    tvm = _import_tvm()
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def host_vector_lanes() -> int:
    """fp32 lanes of this CPU's widest vector register (16 with AVX-512, 8 with AVX2, 4 with NEON)."""
    tvm = _import_tvm()
    return max(1, tvm.target.codegen.llvm_get_vector_width(tvm.target.Target(host_target())) // 32)


def host_vector_registers() -> int:
    """Vector registers of this CPU: 32 with AVX-512 and on AArch64 (NEON), else 16 (AVX2, SSE)."""
    tvm = _import_tvm()
    target = tvm.target.Target(host_target())
    if tvm.target.codegen.target_has_features("avx512f", target) or "aarch64" in str(target.attrs.get("mtriple", "")):
        return 32
    return 16


def use_threads(threads: int) -> None:
    """Run TVM's parallel loops on ``threads`` threads (TVM's default is half the logical CPUs on x86)."""
    tvm = _import_tvm()
    if tvm.get_global_func("runtime.NumThreads")() != threads:
        cpus = [str(cpu) for cpu in sorted(os.sched_getaffinity(0))] if hasattr(os, "sched_getaffinity") else []
        tvm.get_global_func("runtime.config_threadpool")(-3, threads, cpus)  # threads share the allowed CPUs


BUILT_SIZE = 64
"""How many built modules ``build`` keeps (least recently used ones go first)."""
_BUILT: OrderedDict[tuple[str, str], object] = OrderedDict()
_BUILDING: dict[tuple[str, str], threading.Lock] = {}
_BUILT_LOCK = threading.Lock()


def build(source: str, target: str = "llvm"):
    """Parse TVMScript ``source`` and build it for ``target`` ("llvm": this CPU, or "cuda" for sm_90), once
    per (text, target) in a process: threads asking for one module at once wait for the first build."""
    key = (hashlib.sha256(source.encode()).hexdigest(), target)
    with _BUILT_LOCK:
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _BUILT_LOCK:
            built = _BUILT.get(key)
        if built is None:
            built = _build(source, target)
        with _BUILT_LOCK:
            _BUILT[key] = built
            _BUILT.move_to_end(key)
            while len(_BUILT) > BUILT_SIZE:
                _BUILT.popitem(last=False)
            _BUILDING.pop(key, None)
    return built


def _build(source: str, target: str):
    tvm = _import_tvm()
    module = tvm.script.from_source(source)
    if target == "cuda":
        return tvm.compile(module, target=tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    return tvm.compile(module, target=tvm.target.Target(host_target()))


def library_bytes(source: str) -> bytes:
    """The shared library (bytes) of TVMScript ``source`` built for this CPU: what the cache stores."""
    with tempfile.TemporaryDirectory(prefix="maskir-tvm-") as folder:
        path = Path(folder) / "kernels.so"
        build(source, "llvm").export_library(str(path))
        return path.read_bytes()


def load_library(data: bytes):
    """Load verified library bytes: written to a private copy (a fresh 0700 folder) that is loaded and
    removed, so the code that runs is exactly ``data``, whatever happens to the cache file meanwhile."""
    tvm = _import_tvm()
    with tempfile.TemporaryDirectory(prefix="maskir-tvm-") as folder:
        path = Path(folder) / "kernels.so"
        path.write_bytes(data)
        return tvm.runtime.load_module(str(path))


def cuda_source(generated: TvmSource) -> str:
    """The CUDA C++ that TVM generates for ``generated`` (made with ``target="cuda"``), for sm_90.

    Needs no GPU and no nvcc: TVM stops at source. maskir runs its CUDA kernels through Triton; this is
    for reading and for checking that the plan's TensorIR lowers to GPU code."""
    if generated.target != "cuda":
        raise ValueError(f"cuda_source needs a module generated with target='cuda', got {generated.target!r}.")
    return build(generated.source, "cuda").mod.imports[0].inspect_source()


class TvmAttention:
    """The kernels of one generated TVMScript module for one plan, run on CPU tensors.

    ``forward(q, k, v, *, scale, tensors) -> (out, lse)`` and ``backward(q, k, v, out, lse, dout, *, scale,
    tensors) -> (dq, dk, dv)`` take q [B, H, N_q, D] and k, v [B, H_kv, N_kv, D]; ``tensors`` are the runtime
    tensors named by ``generated.tensor_names``, in that order. lse is fp32 [B, H, N_q], natural log.
    ``library``: the module already built (``library_bytes`` of ``generated.source``, verified by the
    caller), else it is built here. Calls run on ``torch.get_num_threads()`` threads.

    ``fused_backward``: run each part's backward as the fused ``bwd_<i>`` (True), as ``dq_<i>`` then
    ``dkdv_<i>`` (False), or as :func:`~maskir.codegen.tvm.balance.fuse_backward` expects to be faster for
    the batch and thread count (None, the default). Modules whose score_mod trains tensors have no fused
    kernel and always run split.
    """

    fused_backward: bool | None = None
    walks_gated_lists = True
    """forward/backward take ``lists``: per call, the tiles the run-time data leaves open."""

    def __init__(self, plan: Plan, generated: TvmSource, library: bytes | None = None):
        if generated.target != "llvm":
            raise ValueError(f"TvmAttention runs llvm modules on CPU, got target={generated.target!r}.")
        self.plan, self.generated = plan, generated
        self.signature = KernelSignature(
            plan, plan.heads, generated.kv_heads, generated.head_dim, generated.tensor_names, generated.tensor_dims
        )
        self.executable = build(generated.source, "llvm") if library is None else load_library(library)
        self._tables: list[PartTables] | None = None
        self._work: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def tables(self, device: torch.device | str = "cpu") -> list[PartTables]:
        """Per part, its tables (CPU tensors: what ``maskir.runtime.gating`` builds per-call lists from)."""
        return [tables for tables, _, _ in self._parts()]

    @staticmethod
    def _gate(tables: PartTables, gated) -> tuple:
        """Kernel arguments of one direction's per-call list (``GatedLists``), or of the plan's (None):
        the flattened buffer, ``gate_open_at``, ``gate_full_at``, the batch and head strides, ``gated``."""
        if gated is None:
            return tables.kv_index, 0, 0, 0, 0, 0
        buffer = gated.buffer.contiguous()
        if buffer.numel() >= 2**31:
            raise ValueError(f"The per-call lists hold {buffer.numel()} entries; the TVM kernels index with int32.")
        head_stride = buffer.stride(1) if buffer.shape[1] > 1 else 0
        return buffer.reshape(-1), int(gated.open_at), int(gated.full_at), buffer.stride(0), head_stride, 1

    def _parts(self) -> list[tuple[PartTables, torch.Tensor, torch.Tensor]]:
        """Per part: its tables, and its full q and kv token tables (identity ones built for token order)."""
        if self._tables is None:  # built whole, then published: a concurrent call never sees it half made
            built = []
            for part in self.plan.parts:
                tables = part_tables(self.plan, part, "cpu")
                q_tokens = (
                    tables.q_tokens
                    if tables.q_gather
                    else identity_tokens(tables.n_q_tiles, self.plan.block_q, self.plan.canvas.size, "cpu")
                )
                kv_tokens = (
                    tables.kv_tokens
                    if tables.kv_gather
                    else identity_tokens(tables.n_kv_tiles, self.plan.block_kv, self.plan.kv_canvas.size, "cpu")
                )
                built.append((tables, q_tokens, kv_tokens))
            self._tables = built
        return self._tables

    def work(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        """Per part, the balanced unit orders (:mod:`~maskir.codegen.tvm.balance`) of the forward/dQ
        kernels (units (b, h, q tile)), of dK/dV (units (b, kv head, kv tile)) and of the fused backward
        (units (b, kv head)) for this thread count, and whether the fused one is expected to be faster."""
        threads = torch.get_num_threads()
        use_threads(threads)
        key = (batch, threads)
        if key not in self._work:
            orders = []
            group_size = self.plan.heads // self.generated.kv_heads
            for tables, _, _ in self._parts():
                heads = tables.head_table.long().numpy()
                lists = len(tables.kv_full) // max(1, tables.n_q_tiles)
                q_costs = list_costs(tables.kv_start, tables.kv_full, lists, tables.n_q_tiles)[heads]
                kv_costs = list_costs(tables.q_start, tables.q_full, lists, tables.n_kv_tiles)[heads]
                kv_costs = kv_costs.reshape(-1, group_size, tables.n_kv_tiles).sum(1)
                q_costs, kv_costs = np.tile(q_costs, (batch, 1, 1)), np.tile(kv_costs, (batch, 1, 1))
                bwd_costs = kv_costs.sum(-1)
                orders.append(
                    (
                        work_order(q_costs, threads),
                        work_order(kv_costs, threads),
                        work_order(bwd_costs, threads),
                        fuse_backward(q_costs, kv_costs, bwd_costs, threads),
                    )
                )
            self._work[key] = orders
        return self._work[key]

    def static_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Tensors captured by the score_mod or a predicate (CPU tensors: this backend runs on CPU)."""
        return dict(self.generated.static_tensors)

    def _check(self, q, k, v, tensors: Sequence[torch.Tensor]) -> None:
        self.signature.check(q, k, v, tensors)
        for name, t in (("q", q), ("k", k), ("v", v), *zip(self.generated.tensor_names, tensors)):
            if t.device.type != "cpu":
                raise ValueError(f"The TVM backend runs on CPU tensors; {name} is on {t.device}.")
            if t.numel() >= 2**31:
                raise ValueError(f"{name} has {t.numel()} elements; the TVM kernels index with int32 (< 2**31).")

    def _buffers(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Runtime tensors as contiguous buffers of the kernels' dtypes (bools as int8 0/1; 0-d as 1 element)."""
        converted = []
        for kind, t in zip(self.generated.tensor_kinds, tensors):
            t = (t != 0) if kind == "bool" and t.dtype != torch.bool else t
            converted.append(t.to(_TORCH_DTYPES[kind]).contiguous().reshape(t.shape or (1,)))
        return converted

    def _call(self, name: str, *args) -> None:
        self.executable[name](*args)

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
        ``lists``: per plan part, this call's gated forward lists (a 1-tuple) or None (the plan's)."""
        self._check(q, k, v, tensors)
        q, k, v = (t.contiguous() for t in (q, k, v))
        buffers = self._buffers(tensors)
        outs, lses = [], []
        for index, ((tables, q_tokens, kv_tokens), (q_work, *_)) in enumerate(zip(self._parts(), self.work(len(q)))):
            gate, *gate_args = self._gate(tables, lists[index][0] if lists and lists[index] else None)
            out = torch.zeros(q.shape, dtype=torch.float32)
            lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32)
            self._call(
                f"fwd_{index}",
                q, k, v, lse, tables.head_table, q_tokens, kv_tokens,
                out, tables.kv_start, tables.kv_full, tables.kv_index, q_work, gate, *buffers, float(scale), *gate_args,
            )  # fmt: skip
            outs.append(out)
            lses.append(lse)
        if len(outs) == 1:
            return outs[0].to(q.dtype), lses[0]
        return merge_parts(outs, lses, q.dtype)

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
        """dq, dk, dv (in the inputs' dtypes) of the forward's output, given dout; then the gradients of
        the score_mod tensors at indices ``trained`` of ``tensors``. ``lists``: per plan part, this call's
        gated (forward/dQ, dK/dV) lists or None (the plan's)."""
        self._check(q, k, v, tensors)
        table_grads = self.generated.table_grads
        names = [self.generated.tensor_names[i] for i in trained]
        if names and (table_grads is None or not set(names) <= table_grads.offsets.keys()):
            raise ValueError(f"Only float tensors a score_mod reads get gradients, not {names}.")
        table_parts = []  # one row of table gradients per unit of work (b, h, q tile) of a part, summed in order
        q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
        lse = lse.to(torch.float32).contiguous()
        delta = (out.to(torch.float32) * dout.to(torch.float32)).sum(-1).contiguous()
        buffers = self._buffers(tensors)
        grads = []
        for index, ((tables, q_tokens, kv_tokens), (q_work, kv_work, bwd_work, fuse)) in enumerate(
            zip(self._parts(), self.work(len(q)))
        ):
            kv_gate, q_gate = (
                (self._gate(tables, None), self._gate(tables, None))
                if not lists or lists[index] is None
                else (self._gate(tables, lists[index][0]), self._gate(tables, lists[index][1]))
            )
            dq = torch.zeros(q.shape, dtype=torch.float32)
            dk = torch.zeros(k.shape, dtype=torch.float32)
            dv = torch.zeros(v.shape, dtype=torch.float32)
            common = (q, k, v, lse, tables.head_table, q_tokens, kv_tokens, dout, delta)
            if table_grads is None and (fuse if self.fused_backward is None else self.fused_backward):
                self._call(
                    f"bwd_{index}",
                    *common, dq, dk, dv, tables.q_start, tables.q_full, tables.q_index, bwd_work, q_gate[0],
                    *buffers, float(scale), *q_gate[1:],
                )  # fmt: skip
                grads.append((dq, dk, dv))
                continue
            table_args = ()
            if table_grads is not None:
                table_parts.append(torch.zeros((q.shape[0] * q.shape[1] * tables.n_q_tiles, table_grads.entries)))
                table_args = (table_parts[-1], int(bool(names)))
            self._call(
                f"dq_{index}",
                *common,
                dq,
                tables.kv_start,
                tables.kv_full,
                tables.kv_index,
                q_work,
                kv_gate[0],
                *buffers,
                float(scale),
                *kv_gate[1:],
                *table_args,
            )
            self._call(
                f"dkdv_{index}",
                *common, dk, dv, tables.q_start, tables.q_full, tables.q_index, kv_work, q_gate[0], *buffers,
                float(scale), *q_gate[1:],
            )  # fmt: skip
            grads.append((dq, dk, dv))
        summed = sum_part_grads(grads, (q, k, v))
        if not names:
            return summed
        table = torch.cat(table_parts).sum(0)  # every unit's row, summed in one fixed order
        return (*summed, *(table_grads.gradient(table, name).to(tensors[i].dtype) for i, name in zip(trained, names)))
