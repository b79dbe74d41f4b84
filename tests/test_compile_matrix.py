"""The benchmark suite's kernels compile for sm_80, sm_86, sm_89 and sm_100 within each one's limits, without a GPU.

sm_90 (with the bias-table configurations) is tests/test_sm90_compile.py. For every suite configuration
(bf16, head dim 128, 16 heads; the plan the planner makes for that architecture's ``KernelSpec``) the
forward and backward kernels are compiled with ``triton.compile`` for the architecture, with the launch
configuration the runtime would choose there: each must fit the per-block shared memory (101,376 B on
sm_86/sm_89, 166,912 B on sm_80, 232,448 B on sm_100), spill no registers, and run its matrix products on
the architecture's tensor cores: ``mma.sync`` before sm_90; on sm_100 Triton 3.9 and 3.6 emit
``tcgen05.mma`` (Blackwell's tensor-memory MMA) in every suite matmul kernel (every product there has
>= 64 rows). The decode kernels (``DECODE_CASES``, launch options and split count from the same spec) are
compiled too: they must fit and use tensor cores. Like test_sm90_compile.py it runs itself as a
subprocess without TRITON_INTERPRET: ``python tests/test_compile_matrix.py [--check] [--arch sm_89]
[config ...]`` prints the table. Under pytest it compiles ``PYTEST_ARCHES``; CI runs ``--check`` on every
architecture with triton 3.6, the GPU machines' version.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
from test_sm90_compile import (
    DECODE_BUCKET,
    DECODE_CASES,
    KERNELS,
    MATMUL_KERNELS,
    SUITE_CONFIGS,
    compile_in_subprocess,
    example_tensors,
)

from benchmarks.catalogue import DTYPE, HEAD_DIM, HEADS, case
from maskir.codegen.triton.compile_check import KernelReport, check_plan, format_table, meta_tensors
from maskir.planner import plan
from maskir.planner.decode import decode_plan
from maskir.sim.target import ARCHES, KernelSpec

ROOT = Path(__file__).resolve().parents[1]
MATRIX_ARCHES = ["sm_80", "sm_86", "sm_89", "sm_100"]
"""Architectures of the matrix (sm_90: tests/test_sm90_compile.py); CI's triton 3.6 phase compiles them all."""
PYTEST_ARCHES = [
    pytest.param("sm_80", marks=pytest.mark.slow),
    pytest.param("sm_86", marks=pytest.mark.slow),
    "sm_100",
]
"""Compiled under pytest's triton: sm_100 (tcgen05) in every run; sm_80 and sm_86 (``mma.sync``, like sm_89,
whose limits and kernels are sm_86's) with ``-m slow``, since CI's triton 3.6 phase compiles them all."""
MATRIX_CONFIGS = SUITE_CONFIGS + list(DECODE_CASES)


def compile_decode_entry(name: str, arch: str) -> list[KernelReport]:
    """The decode kernels of one ``DECODE_CASES`` entry with ``arch``'s launch options and SM count."""
    from maskir.codegen.triton.compile_check_decode import check_decode_plan

    pattern, n_q, kv_heads, paged, score_mod = DECODE_CASES[name]
    spec = KernelSpec.for_arch(arch, head_dim=HEAD_DIM, dtype="bf16", kv_heads=kv_heads)
    return check_decode_plan(
        f"{arch} {name}",
        decode_plan(pattern, DECODE_BUCKET, HEADS),
        n_q=n_q,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
        kv_heads=kv_heads,
        paged=paged,
        score_mod=score_mod,
        capability=spec.capability,
        tensors=lambda names: example_tensors(names, HEADS, DECODE_BUCKET, 1),
        sms=spec.sms,
    )


def compile_entry(job: tuple[str, str]) -> list[KernelReport]:
    """Plan for ``arch``'s spec, generate with its configuration and compile one suite configuration."""
    name, arch = job
    if name in DECODE_CASES:
        return compile_decode_entry(name, arch)
    entry = case(name, "full")
    spec = KernelSpec.for_arch(arch, head_dim=HEAD_DIM, dtype="bf16", kv_heads=HEADS)
    planned = plan(entry.pattern, entry.canvas, heads=HEADS, spec=spec)
    reports = check_plan(
        name,
        planned,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
        capability=spec.capability,
        tensors=lambda names: meta_tensors(names, planned),
    )
    return [KernelReport(**{**asdict(r), "config": f"{arch} {name}"}) for r in reports]


def compile_matrix(names: list[str], arches: list[str], workers: int = 2) -> list[KernelReport]:
    """``compile_entry`` for each (name, arch), on ``workers`` processes (ptxas and LLVM are single-threaded)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [(name, arch) for arch in arches for name in names]
        return [report for reports in pool.map(compile_entry, jobs) for report in reports]


def wrong_tensor_cores(rows: list[KernelReport]) -> list[KernelReport]:
    """Matmul kernels not on their architecture's tensor cores: ``mma`` before sm_90; on sm_100 ``tcgen05``
    when every product has >= 64 rows, else ``mma`` (optionally beside tcgen05); decode kernels on any."""
    wrong = []
    for r in rows:
        arch = r.config.split()[0]
        if r.kernel.split()[0] == "_decode":
            if r.tensor_core == "none":
                wrong.append(r)
            continue
        if r.kernel.split()[0] not in MATMUL_KERNELS:
            continue
        if ARCHES[arch].capability[0] < 9:
            expected = {"mma"}
        else:
            expected = {"tcgen05"} if r.rows >= 64 else {"mma", "tcgen05+mma"}
        if r.tensor_core not in expected:
            wrong.append(r)
    return wrong


@pytest.mark.parametrize("arch", PYTEST_ARCHES)
def test_suite_and_decode_kernels_fit_each_arch_without_spills(arch):
    """One test (one compile run, on one pytest worker) per architecture, for every configuration."""
    reports = compile_in_subprocess(__file__, "--arch", arch, timeout=1800)
    print("\n" + format_table(reports))
    for config in SUITE_CONFIGS:
        rows = [r for r in reports if r.config == f"{arch} {config}"]
        assert {r.kernel.split()[0] for r in rows} == KERNELS, config
        assert all(r.registers > 0 for r in rows), f"{config}: ptxas -v printed no register count"
        assert all(r.shared_limit == ARCHES[arch].shared_memory_per_block for r in rows), config
        assert [r for r in rows if not r.ok] == [], format_table([r for r in rows if not r.ok])
        assert wrong_tensor_cores(rows) == [], format_table(wrong_tensor_cores(rows))
    for config, (_, _, _, paged, _) in DECODE_CASES.items():
        rows = [r for r in reports if r.config == f"{arch} {config}"]
        assert {r.kernel for r in rows} == {f"_decode {'paged' if paged else 'contiguous'}", "_merge"}, config
        assert all(r.registers > 0 and r.shared_limit == ARCHES[arch].shared_memory_per_block for r in rows)
        assert [r for r in rows if not r.ok] == [], format_table([r for r in rows if not r.ok])
        assert wrong_tensor_cores(rows) == [], format_table(wrong_tensor_cores(rows))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    args = sys.argv[1:]
    arches = [args[i + 1] for i, a in enumerate(args) if a == "--arch"] or MATRIX_ARCHES
    selected = [a for a in args if not a.startswith("--") and a not in arches] or MATRIX_CONFIGS
    found = compile_matrix(selected, arches)
    print(json.dumps([asdict(r) for r in found]) if "--json" in args else format_table(found))
    if "--check" in args and not all(r.ok for r in found):
        sys.exit("some kernels spill or exceed the shared memory limit (rows marked NO)")
    if "--check" in args and wrong_tensor_cores(found):
        sys.exit("some matmul kernels do not use their architecture's tensor-core instructions (mma column)")
