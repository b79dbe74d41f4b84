"""The TVM CUDA flavour compiled by nvcc for sm_90 without a GPU: registers and spills per kernel.

``cuda_report(generated)`` writes the CUDA C++ TVM generates for a module made with ``target="cuda"``
(``launch.cuda_source``: the row kernels, one thread per query or key row) and compiles it with
``nvcc -cubin -arch=sm_90 -Xptxas -v``, reading each kernel's registers and spilled bytes from the ptxas
log. It is not maskir's GPU path (Triton is); this keeps the TensorIR compilable for CUDA
(``tests/test_tvm_cuda_nvcc.py`` prints the table for the benchmark suite).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from maskir.codegen.common.ptxas import parse_ptxas_functions
from maskir.codegen.tvm.emit import TvmSource
from maskir.codegen.tvm.launch import cuda_source


@dataclass(frozen=True)
class CudaKernelReport:
    """One kernel of one configuration as nvcc's ptxas saw it."""

    config: str
    kernel: str
    registers: int
    spills: int
    seconds: float


def cuda_report(generated: TvmSource, config: str = "", arch: str = "sm_90") -> list[CudaKernelReport]:
    """Compile ``generated`` (a ``target="cuda"`` module) with nvcc for ``arch``; one report per kernel.

    RuntimeError when nvcc is not on PATH or the compile fails (with nvcc's output)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("cuda_report needs nvcc on PATH (the CUDA toolkit); it needs no GPU.")
    source = cuda_source(generated)
    with tempfile.TemporaryDirectory(prefix="maskir-nvcc-") as folder:
        path = Path(folder) / "kernels.cu"
        path.write_text(source, encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run(
            [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(path.with_suffix(".cubin")), str(path)],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed on the TVM CUDA source of {config or 'this module'}:\n{done.stderr[-4000:]}")
    kernels = parse_ptxas_functions(done.stdout + done.stderr)
    return [
        CudaKernelReport(config, name.removesuffix("_kernel"), registers, spills, round(seconds, 1))
        for name, (registers, spills) in sorted(kernels.items())
    ]


def format_reports(reports: list[CudaKernelReport]) -> str:
    """A fixed-width table: config, kernel, registers, spilled bytes, nvcc seconds (whole module)."""
    lines = [f"{'config':<26}{'kernel':<10}{'regs':>6}{'spills':>8}{'nvcc s':>8}"]
    lines += [f"{r.config:<26}{r.kernel:<10}{r.registers:>6}{r.spills:>8}{r.seconds:>8.1f}" for r in reports]
    return "\n".join(lines)
