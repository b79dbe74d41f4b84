"""The TVM CUDA flavour compiles with nvcc for sm_90 (no GPU needed): registers and spills per kernel.

``PYTHONPATH=. python tests/test_tvm_cuda_nvcc.py [entry ...]`` prints the table for the benchmark suite's configurations
(bf16, head dim 128, 16 heads, the full sizes); the test compiles two of them when nvcc is installed.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from benchmarks.catalogue import DTYPE, HEAD_DIM, HEADS, cases
from maskir.codegen.common.ptxas import parse_ptxas_functions
from maskir.codegen.tvm.emit import generate_tvm_source
from maskir.planner import plan

LOG = """ptxas info    : Compiling entry function 'dkdv_0_kernel' for 'sm_90'
ptxas info    : Function properties for dkdv_0_kernel
    104 bytes stack frame, 300 bytes spill stores, 200 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 104 bytes cumulative stack size
ptxas info    : Compiling entry function 'fwd_0_kernel' for 'sm_90'
ptxas info    : Function properties for fwd_0_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 167 registers, used 0 barriers
"""


def suite_reports(names: list[str] | None = None):
    from maskir.codegen.tvm.cuda_check import cuda_report

    reports = []
    for case in cases("full", names):
        planned = plan(case.pattern, case.canvas, heads=HEADS)
        reports += cuda_report(generate_tvm_source(planned, head_dim=HEAD_DIM, dtype=DTYPE, target="cuda"), case.name)
    return reports


def test_ptxas_log_gives_each_kernels_registers_and_spills():
    assert parse_ptxas_functions(LOG) == {"dkdv_0_kernel": (255, 500), "fwd_0_kernel": (167, 0)}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit; no GPU needed)")
def test_suite_kernels_compile_with_nvcc_for_sm90():
    pytest.importorskip("tvm")
    reports = suite_reports(["causal", "na2d_128x128_k17"])
    assert {(r.config, r.kernel) for r in reports} == {
        (name, kernel) for name in ("causal", "na2d_128x128_k17") for kernel in ("dkdv_0", "dq_0", "fwd_0")
    }
    assert all(0 < r.registers <= 255 for r in reports)
    assert all(r.spills == 0 for r in reports if r.kernel != "dkdv_0")  # dK/dV holds two D-float rows a thread


if __name__ == "__main__":
    from maskir.codegen.tvm.cuda_check import format_reports

    torch.set_num_threads(1)
    print(format_reports(suite_reports(sys.argv[1:] or None)))
