"""A/B of the dK/dV step on a GPU: swapAB ([q, kv] tiles, dK^T / dV^T accumulators: every product on
wgmma) against the kv-major step (mma.sync on kv tiles narrower than 64), where the plan has such tiles.

    python -m benchmarks.ab_swap                      # the suite entries whose kv tiles are < 64 wide
    python -m benchmarks.ab_swap --only swin_128x128_w8 --iters 50

Per entry: the suite's plan and shape (bf16, D=128, H=16, B=1, N=16384); the two generated modules differ
only in ``DKDV_SWAP_AB`` and ``DKDV_CHUNK_M`` (``configs.choose_config(swap_ab=...)``). It times the
backward launches (preprocess, dQ, dK/dV: median of CUDA events over ``--iters`` calls after warm-up),
checks that both give the same dq, dk, dv, and appends one row per variant to
``benchmarks/results/<gpu>_ab_swap.jsonl``. The default (``swap_ab=None``) is swapAB: keep it only if
this says it is faster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.catalogue import DTYPE, HEAD_DIM, HEADS, NAMES, case
from benchmarks.suite import RESULTS, device_slug
from maskir.bench.measure import cuda_median_ms, environment
from maskir.codegen.triton.compile_check import import_source
from maskir.codegen.triton.configs import WGMMA_MIN_M, choose_config
from maskir.codegen.triton.emit import generate_source, render_functions
from maskir.codegen.triton.launch import TritonAttention
from maskir.ir import is_dynamic
from maskir.planner import plan as make_plan


def variants(planned, directory: Path, capability: tuple[int, int]) -> dict[str, TritonAttention]:
    """The kernels of ``planned`` for a GPU of ``capability``, the dK/dV step kv-major and swapped, by name."""
    functions = render_functions(planned, None)
    kernels = {}
    for name, swap in (("kv_major", False), ("swap_ab", True)):
        config = choose_config(
            planned.block_q,
            planned.block_kv,
            HEAD_DIM,
            DTYPE,
            interpret=False,
            capability=capability,
            pair_loads=functions.pair_loads,
            pair_ops=functions.pair_ops,
            swap_ab=swap,
        )
        generated = generate_source(planned, head_dim=HEAD_DIM, dtype=DTYPE, config=config)
        module = import_source(generated.source, directory / f"{name}.py")
        kernels[name] = TritonAttention(module, planned, generated)
    return kernels


def measure(name: str, iters: int, directory: Path, env: dict) -> list[dict]:
    """One row per variant: backward ms, and the largest gradient difference between the variants."""
    entry = case(name, "full")
    planned = make_plan(entry.pattern, entry.canvas, heads=HEADS)
    shape = (1, HEADS, entry.tokens, HEAD_DIM)
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(shape, generator=generator, device="cuda", dtype=DTYPE) for _ in range(4))
    scale = HEAD_DIM**-0.5
    rows, grads = [], {}
    for variant, attention in variants(planned, directory, torch.cuda.get_device_capability()).items():
        out, lse = attention.forward(q, k, v, scale=scale, tensors=[])
        grads[variant] = attention.backward(q, k, v, out, lse, dout, scale=scale, tensors=[])
        ms = cuda_median_ms(
            lambda attention=attention, out=out, lse=lse: attention.backward(
                q, k, v, out, lse, dout, scale=scale, tensors=[]
            ),
            10,
            iters,
        )
        blocks = [planned.block_q, planned.block_kv]
        rows.append({"pattern": name, "N": entry.tokens, "variant": variant, "bwd_ms": ms, "blocks": blocks} | env)
    difference = max(float((a.float() - b.float()).abs().max()) for a, b in zip(*grads.values()))
    for row in rows:
        row["max_abs_grad_difference"] = difference
    return rows


def narrow_entries() -> list[str]:
    """Suite entries whose plan has kv tiles narrower than wgmma's M (static patterns: no run-time data)."""
    found = []
    for name in NAMES:
        entry = case(name, "full")
        if not is_dynamic(entry.pattern) and make_plan(entry.pattern, entry.canvas, heads=HEADS).block_kv < WGMMA_MIN_M:
            found.append(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help="entries (default: narrow kv tiles)")
    parser.add_argument("--iters", type=int, default=30, help="timed backward calls per variant (default 30)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the .jsonl goes (default {RESULTS})")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.ab_swap times GPU kernels and needs a CUDA GPU.", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name()
    env = environment(device_name)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{device_slug(device_name)}_ab_swap.jsonl"
    with tempfile.TemporaryDirectory() as directory:
        for name in args.only or narrow_entries():
            rows = measure(name, args.iters, Path(directory), env)
            by_variant = {row["variant"]: row["bwd_ms"] for row in rows}
            print(
                f"{name}: kv-major {by_variant['kv_major']:.3f} ms, swapAB {by_variant['swap_ab']:.3f} ms "
                f"(kv-major / swapAB = {by_variant['kv_major'] / by_variant['swap_ab']:.2f}), "
                f"max grad difference {rows[0]['max_abs_grad_difference']:.2e}",
                flush=True,
            )
            with path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
