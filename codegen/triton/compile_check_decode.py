"""Compile the decode kernels for a GPU target with no GPU (``compile_check``'s method, decode launches).

``TritonDecode.forward`` runs on "meta" tensors with a launcher that records each launch; every recorded
launch (``_decode`` specialised for the cache kind, and ``_merge`` when the call splits its lists) is compiled
with ``compile_check.compile_kernel`` and reported as a ``KernelReport``. Run without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskir.codegen.triton.compile_check import (
    KernelReport,
    compile_kernel,
    import_source,
    parse_ptxas_log,
    tensor_core_kind,
)
from maskir.codegen.triton.configs import SHARED_MEMORY_BYTES
from maskir.codegen.triton.emit_decode import generate_decode_source
from maskir.codegen.triton.launch_decode import TritonDecode

PAGE_SIZE = 16
"""Page size of the paged pool the check specialises ``_decode`` for (the smallest the API takes)."""


class _RecordingDecode(TritonDecode):
    """Records (kernel name, arguments) instead of launching: used on meta tensors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def launch(self, name: str, grid: tuple[int, ...], args: dict[str, Any]) -> None:
        self.calls.append((name, args))


def check_decode_plan(
    config: str,
    plan,
    *,
    n_q: int,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int,
    paged: bool,
    score_mod: Callable | None = None,
    capability: tuple[int, int] = (9, 0),
    tensors: Callable[[tuple[str, ...]], Sequence[torch.Tensor]] | None = None,
    sms: int = 132,
) -> list[KernelReport]:
    """Generate the decode module for ``plan`` (GPU flavour) and compile the launches of one call whose
    queries are the last ``n_q`` positions of the plan's canvas (contiguous or, with ``paged``, paged cache),
    with the launch options chosen for ``capability``; ``sms`` sets the split count as on that GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check must run without TRITON_INTERPRET=1: use a subprocess.")
    generated = generate_decode_source(
        plan,
        n_q=n_q,
        head_dim=head_dim,
        dtype=dtype,
        kv_heads=kv_heads,
        score_mod=score_mod,
        interpret=False,
        capability=capability,
    )
    meta, length = torch.device("meta"), plan.canvas.size
    q = torch.empty(1, plan.heads, n_q, head_dim, dtype=dtype, device=meta)
    if paged:
        k = torch.empty(length // PAGE_SIZE, PAGE_SIZE, kv_heads, head_dim, dtype=dtype, device=meta)
        table = torch.empty(1, length // PAGE_SIZE, dtype=torch.int32, device=meta)
    else:
        k, table = torch.empty(1, kv_heads, length, head_dim, dtype=dtype, device=meta), None
    reports = []
    with tempfile.TemporaryDirectory(prefix="maskir-compile-") as tmp:
        module = import_source(generated.source, Path(tmp) / f"{config}.py")
        recorder = _RecordingDecode(module, plan, generated)
        data = [t.to(meta) for t in tensors(generated.tensor_names)] if tensors else []
        data = data or [t.to(meta) for t in generated.static_tensors.values()]
        recorder.forward(
            q,
            k,
            k,
            scale=head_dim**-0.5,
            tensors=data,
            q_offsets=np.array([length - n_q]),
            kv_lens=np.array([length]),
            block_table=table,
            sms=sms,
        )
        for name, args in recorder.calls:
            options = module.LAUNCH_OPTIONS[name]
            started = time.perf_counter()
            compiled, log = compile_kernel(getattr(module, name), args, options, capability)
            registers, spills = parse_ptxas_log(log)
            label = f"{name} {'paged' if paged else 'contiguous'}" if name == "_decode" else name
            rows = int(module.DECODE_ROWS if name == "_decode" else module.MERGE_ROWS)
            reports.append(
                KernelReport(
                    config,
                    label,
                    int(compiled.metadata.shared),
                    registers,
                    spills,
                    options["num_warps"],
                    options["num_stages"],
                    round(time.perf_counter() - started, 3),
                    SHARED_MEMORY_BYTES[capability],
                    tensor_core_kind(compiled.asm["ptx"]),
                    rows,
                )
            )
    return reports
