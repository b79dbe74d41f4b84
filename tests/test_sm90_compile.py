"""The generated kernels of the benchmark suite compile for sm_90 within H100 limits, without a GPU.

For every configuration of the benchmark suite (bf16, head dim 128, 16 heads, the planner's plan; the
data-dependent entries with meta tensors for their segment ids / routing map) the forward and backward
kernels are compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``; each must fit the
per-block shared memory (232448 B) and spill no registers (``ptxas -v``); a kernel whose products all
have at least 64 rows must run them on Hopper's warpgroup MMA (``wgmma`` in the PTX, which needs M >= 64;
with fewer, Triton uses ``mma.sync``, shown in the table; dK/dV over 32-wide kv tiles reaches 64 through
swapAB, ``configs.KernelConfig``). ``triton.jit`` gives interpreter
functions when ``TRITON_INTERPRET=1`` (set by conftest on CPU), so this file runs itself as a subprocess
without it: ``python tests/test_sm90_compile.py [--check] [config ...]`` prints the table (``--check``:
exit non-zero if a kernel does not fit). CI also runs that with triton 3.6, the GPU machines' version.
Two more configurations read a trainable relative-position bias table (``BIAS_CASES``): Swin w8 with a
[16, 15, 15] table and NA2D k17 with a [16, 33, 33] table; their dQ kernel adds the table's gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.catalogue import DTYPE, HEAD_DIM, HEADS, case, cases
from maskir.codegen.common.ptxas import parse_ptxas_log
from maskir.codegen.triton.compile_check import KernelReport, check_plan, format_table
from maskir.ir import Causal, Routing, Segments, Sink, Window
from maskir.planner import plan
from maskir.planner.decode import decode_plan

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"_fwd", "_bwd_preprocess", "_bwd_dq", "_bwd_dkdv"}
MATMUL_KERNELS = {"_fwd", "_bwd_dq", "_bwd_dkdv"}
SUITE_CONFIGS = [case.name for case in cases("full")]
"""The benchmark suite (benchmarks/catalogue.py, full size: N = 16384, 16 heads, head dim 128, bf16)."""


def softcap(score, b, h, q_idx, kv_idx):
    return 20.0 * torch.tanh(score / 20.0)


DECODE_BUCKET = 8192
DECODE_CASES = {  # name: (pattern, queries per head, kv heads, paged cache, score_mod); 16 query heads
    "decode_causal_q1": (Causal(), 1, 4, False, None),
    "decode_swa_q3_paged": ((Window(4095, 0) & Causal()) | Sink(4), 3, 2, True, None),
    "decode_docs_q16": (Segments() & Causal(), 16, 16, False, None),
    "decode_softcap_paged": (Causal(), 1, 4, True, softcap),
}
"""Decode kernels (maskir.decode) on a 8192-position cache: ``_decode`` per cache kind and ``_merge``."""
BIAS_CASES = {  # name: (suite entry, relative_position_bias table shape, convention)
    "swin_128x128_w8_rpb": ("swin_128x128_w8", (HEADS, 15, 15), "swin"),
    "na2d_128x128_k17_rpb": ("na2d_128x128_k17", (HEADS, 33, 33), "nat"),
}
"""Suite entries with a trainable relative-position bias table (maskir.score_mods): the forward reads the
table, the dQ kernel also adds its gradient (codegen/common/table_grad)."""
CONFIGS = SUITE_CONFIGS + list(BIAS_CASES) + list(DECODE_CASES)


def example_tensors(names: tuple[str, ...], heads: int, n: int, block: int) -> list[torch.Tensor]:
    """Meta tensors standing in for run-time data: segment ids [1, N] int32, routing map int8."""
    shapes = {
        "segments_q": ((1, n), torch.int32),
        "segments_kv": ((1, n), torch.int32),
        "routing_map": ((1, heads, -(-n // block), -(-n // block)), torch.int8),
    }
    return [torch.empty(shapes[name][0], dtype=shapes[name][1], device="meta") for name in names]


def compile_decode_config(name: str) -> list[KernelReport]:
    """Plan, generate and compile the launches of one decode configuration (without TRITON_INTERPRET)."""
    from maskir.codegen.triton.compile_check_decode import check_decode_plan

    pattern, n_q, kv_heads, paged, score_mod = DECODE_CASES[name]
    return check_decode_plan(
        name,
        decode_plan(pattern, DECODE_BUCKET, HEADS),
        n_q=n_q,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
        kv_heads=kv_heads,
        paged=paged,
        score_mod=score_mod,
        tensors=lambda names: example_tensors(names, HEADS, DECODE_BUCKET, 1),
    )


def compile_bias_config(name: str) -> list[KernelReport]:
    """A suite entry with a relative-position bias table its score_mod reads and trains."""
    from maskir.score_mods import relative_position_bias

    suite_name, shape, convention = BIAS_CASES[name]
    entry = case(suite_name, "full")
    table = torch.zeros(shape, requires_grad=True)
    score_mod = relative_position_bias(table, entry.canvas, convention=convention)
    planned = plan(entry.pattern, entry.canvas, heads=HEADS)
    return check_plan(name, planned, head_dim=HEAD_DIM, dtype=DTYPE, score_mod=score_mod)


def compile_config(name: str) -> list[KernelReport]:
    """Plan, generate and compile one configuration (call without TRITON_INTERPRET)."""
    if name in DECODE_CASES:
        return compile_decode_config(name)
    if name in BIAS_CASES:
        return compile_bias_config(name)
    entry = case(name, "full")
    planned = plan(entry.pattern, entry.canvas, heads=HEADS)
    routing = next((node.block for node in entry.pattern.walk() if isinstance(node, Routing)), 1)
    return check_plan(
        name,
        planned,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
        tensors=lambda names: example_tensors(names, HEADS, entry.tokens, routing),
    )


def compile_suite(names: list[str], workers: int = 2) -> list[KernelReport]:
    """``compile_config`` for each name, on ``workers`` processes (ptxas and LLVM are single-threaded)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [report for reports in pool.map(compile_config, names) for report in reports]


def compile_in_subprocess(script: str = __file__, *args: str, timeout: int = 900) -> list[KernelReport]:
    """The reports ``script`` prints as JSON when run with ``--json`` and ``args`` in a subprocess without
    TRITON_INTERPRET (the repository and ``tests/`` on its path): real compiles, never the interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, script, "--json", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [KernelReport(**row) for row in json.loads(done.stdout)]


def test_suite_and_decode_kernels_fit_sm90_without_spills():
    """One test (one compile run, on one pytest worker) for every configuration: suite, bias tables, decode."""
    reports = compile_in_subprocess()
    print("\n" + format_table(reports))
    for config in SUITE_CONFIGS + list(BIAS_CASES):
        rows = [r for r in reports if r.config == config]
        assert {r.kernel.split()[0] for r in rows} == KERNELS, config
        assert all(r.registers > 0 for r in rows), f"{config}: ptxas -v printed no register count"
        assert [r for r in rows if not r.ok] == [], format_table([r for r in rows if not r.ok])
        assert not_on_wgmma(rows) == [], format_table(not_on_wgmma(rows))
    for config, (_, _, _, paged, _) in DECODE_CASES.items():
        rows = [r for r in reports if r.config == config]
        assert {r.kernel for r in rows} == {f"_decode {'paged' if paged else 'contiguous'}", "_merge"}, config
        assert all(r.registers > 0 for r in rows), f"{config}: ptxas -v printed no register count"
        assert [r for r in rows if not r.ok] == [], format_table([r for r in rows if not r.ok])
        assert all(r.tensor_core != "none" for r in rows if r.kernel.startswith("_decode")), format_table(rows)


def not_on_wgmma(rows: list[KernelReport]) -> list[KernelReport]:
    """Kernels whose matrix products all have >= 64 rows (so wgmma can run them) that do not use wgmma."""
    return [r for r in rows if r.kernel.split()[0] in MATMUL_KERNELS and r.rows >= 64 and r.tensor_core != "wgmma"]


PTXAS_LOG = (  # ptxas 13.4 (bundled with triton 3.9) on a preprocess kernel forced to spill
    "ptxas-blackwell info    : 0 bytes gmem\n"
    "ptxas-blackwell info    : Compiling entry function '_bwd_preprocess' for 'sm_90a'\n"
    "ptxas-blackwell info    : Function properties for _bwd_preprocess\n"
    "    80 bytes stack frame, 80 bytes spill stores, 80 bytes spill loads\n"
    "ptxas-blackwell info    : Used 255 registers, used 0 barriers, 80 bytes cumulative stack size\n"
)


def test_ptxas_log_gives_registers_and_spills():
    assert parse_ptxas_log(PTXAS_LOG) == (255, 160)


def test_tensor_core_kind_names_every_kind_of_mma_in_the_ptx():
    from maskir.codegen.triton.compile_check import tensor_core_kind

    wgmma, mma = "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", "mma.sync.aligned.m16n8k16.row.col"
    assert [tensor_core_kind(ptx) for ptx in (wgmma, mma, f"{wgmma}\n{mma}", "ld.global")] == [
        "wgmma",
        "mma",
        "wgmma+mma",
        "none",
    ]


def test_report_fails_on_spills_or_shared_memory_over_the_limit():
    fits = KernelReport("c", "_fwd", 131072, 186, 0, 8, 3, 1.0, 232448)
    assert fits.ok
    assert not KernelReport(**{**asdict(fits), "spills": 8}).ok
    assert not KernelReport(**{**asdict(fits), "shared": 232449}).ok


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    args = sys.argv[1:]
    selected = [a for a in args if not a.startswith("--")] or CONFIGS
    found = compile_suite(selected)
    print(json.dumps([asdict(r) for r in found]) if "--json" in args else format_table(found))
    if "--check" in args and not all(r.ok for r in found):
        sys.exit("some kernels spill or exceed the shared memory limit (rows marked NO)")
    if "--check" in args and not_on_wgmma(found):
        sys.exit("some kernels whose products have >= 64 rows do not use wgmma for their matrix products (mma column)")
