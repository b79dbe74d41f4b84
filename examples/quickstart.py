"""Quickstart: a 7x7 neighborhood (NATTEN) on a 16x16 image, its mask, and attention on random tensors.

Run ``python examples/quickstart.py``: CPU only, a few seconds. ``maskir.attention`` runs the generated
kernels (TVM's CPU kernels on a CPU, or Triton's interpreter without apache-tvm) and is compared with the float64 reference.
"""

import torch

import maskir
from maskir import Canvas, Neighborhood
from maskir.reference import reference_attention, reference_mask
from maskir.viz import ascii_mask

CANVAS = Canvas((16, 16))
PATTERN = Neighborhood(7)
HEADS, HEAD_DIM = 2, 32
TOLERANCE = 1e-4
"""Largest |maskir - reference| accepted for float32 inputs."""


def show(pattern: maskir.Pattern, canvas: Canvas) -> None:
    """Print the canonical text (what ``maskir.parse`` reads back), the density and a picture of the mask."""
    mask = reference_mask(pattern, canvas)
    print(f"pattern: {pattern}  (parses back equal: {maskir.parse(str(pattern)) == pattern})")
    print(f"canvas:  {canvas}, {canvas.size} tokens")
    print(f"density: {mask.mean():.4f} ({mask.sum()} of {mask.size} pairs)")
    print(ascii_mask(mask))


def run_attention(pattern: maskir.Pattern, canvas: Canvas) -> None:
    """Attention over the pattern on random q, k, v [1, HEADS, N, HEAD_DIM]: maskir's kernels vs the reference."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, canvas.size, HEAD_DIM, generator=generator) for _ in range(3))
    expected = reference_attention(q, k, v, pattern, canvas)
    out = maskir.attention(q, k, v, pattern, canvas)
    error = (out.double() - expected).abs().max().item()
    print(f"maskir.attention output {tuple(out.shape)}, max |maskir - reference| = {error:.1e}")
    if error > TOLERANCE:
        raise SystemExit(f"maskir.attention differs from the reference by {error:.1e} > {TOLERANCE:.0e}")


def main() -> None:
    show(PATTERN, CANVAS)
    run_attention(PATTERN, CANVAS)


if __name__ == "__main__":
    main()
