"""What every pattern-family example does after its own part: check against the float64 reference, draw the
plan's block map. Run an example from the repository root: ``python examples/sliding_window_sinks.py``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton's interpreter must be chosen before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import maskir  # noqa: E402
from maskir.ir import is_dynamic  # noqa: E402
from maskir.planner.picture import draw_plan  # noqa: E402

TOLERANCE = 1e-4
"""Largest |maskir - float64 reference| accepted for float32 inputs."""


def random_qkv(batch: int, heads: int, tokens: int, head_dim: int, *, requires_grad: bool = False):
    """Seeded q, k, v [batch, heads, tokens, head_dim] in float32."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, heads, tokens, head_dim, generator=generator).requires_grad_(requires_grad) for _ in range(3)
    ]


def check(what: str, got: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """Print the largest difference to the float64 reference; exit with an error above ``tolerance``."""
    error = (got.double() - expected.double()).abs().max().item()
    print(f"{what}: max |maskir - reference| = {error:.1e}")
    if not error <= tolerance:
        raise SystemExit(f"{what} differs from the reference by {error:.1e} > {tolerance:.0e}")
    return error


def draw_block_map(pattern: maskir.Pattern, canvas, out_dir: str | Path, name: str, **plan_args) -> Path:
    """Plan ``pattern`` on ``canvas`` and write its block map (FULL / PARTIAL / EMPTY tiles) to out_dir/name.png."""
    plan = maskir.plan(pattern, canvas, **plan_args)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokens = plan.canvas.size <= 1024 and not is_dynamic(pattern)  # run-time patterns: only the static superset
    path = draw_plan(plan, Path(out_dir) / f"{name}.png", show_tokens=tokens)
    print(plan.describe().splitlines()[2].strip())
    print(f"block map: {path}")
    return path
