"""maskir's backends on a CPU, side by side: TVM (llvm), the Triton interpreter and the float64 reference.

Per pattern, the same q, k, v (fp32, B=1) through ``maskir.compile(..., device="cpu", backend=...)``:
``build_s`` (plan, generate, build; a fresh cache), and the medians over ``--repeats`` calls of the
forward (``fwd_ms``) and of forward + backward (``fwdbwd_ms``), plus the largest forward difference from
the reference. The interpreter is slow by design (it runs Triton's GPU kernels in Python for testing):
``--skip-interpreter`` leaves it out. Appends one JSON object per (pattern, backend) to
``benchmarks/results/cpu_backends.jsonl`` and prints a table.

    python benchmarks/cpu_backends.py                      # all three backends
    python benchmarks/cpu_backends.py --skip-interpreter   # TVM and the reference only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported, for the interpreter rows

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskir  # noqa: E402
from maskir.canvas import Canvas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_backends.jsonl"
CASES = [
    ("na2d_32x32_k7", "Neighborhood(7)", (32, 32)),
    ("swa_causal_w128_1024", "Window(127, 0)", (1024,)),
    ("swin_32x32_w8", "Blocks(8)", (32, 32)),
]
"""(name, spec text, canvas): 1024 tokens each, small enough for the interpreter."""
HEADS, HEAD_DIM = 4, 64


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def measure(name: str, spec: str, shape: tuple[int, ...], backend: str, repeats: int) -> dict:
    """One row: build time, forward and forward+backward medians, forward error vs the reference."""
    canvas = Canvas(shape)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, canvas.size, HEAD_DIM, generator=generator) for _ in "qkv")
    started = time.perf_counter()
    compiled = maskir.compile(
        spec, canvas, heads=HEADS, head_dim=HEAD_DIM, dtype=torch.float32, device="cpu", backend=backend, quiet=True
    )
    build_s = time.perf_counter() - started
    with torch.no_grad():
        out = compiled(q, k, v)
        fwd_ms = _median_ms(lambda: compiled(q, k, v), repeats)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fwdbwd_ms = _median_ms(lambda: compiled(*leaves).sum().backward(), repeats)
    reference = maskir.reference.reference_attention(q.double(), k.double(), v.double(), maskir.parse(spec), canvas)
    return {
        "pattern": name,
        "spec": spec,
        "canvas": list(shape),
        "backend": backend,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "build_s": round(build_s, 3),
        "fwd_ms": round(fwd_ms, 2),
        "fwdbwd_ms": round(fwdbwd_ms, 2),
        "max_abs_err_vs_reference": float((out.double() - reference).abs().max()),
        "repeats": repeats,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/cpu_backends.py", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    parser.add_argument("--skip-interpreter", action="store_true", help="leave the Triton interpreter out")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSONL to append to (default {RESULTS})")
    args = parser.parse_args(argv)
    backends = ["tvm", "reference"] + ([] if args.skip_interpreter else ["triton"])
    os.environ["MASKIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="maskir-cpu-bench-")  # builds from scratch
    args.results.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'pattern':<24}{'backend':<11}{'build s':>9}{'fwd ms':>11}{'fwd+bwd ms':>12}{'err':>10}")
    with args.results.open("a", encoding="utf-8") as out:
        for name, spec, shape in CASES:
            for backend in backends:
                row = measure(name, spec, shape, backend, args.repeats)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(
                    f"{name:<24}{backend:<11}{row['build_s']:>9.2f}{row['fwd_ms']:>11.1f}{row['fwdbwd_ms']:>12.1f}"
                    f"{row['max_abs_err_vs_reference']:>10.1e}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
