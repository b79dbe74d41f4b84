"""Radial attention for video (Li et al. 2025): the spatial window halves each time the temporal distance
doubles, on a (frames, tokens per frame) canvas.

Run ``python examples/radial_video.py [OUT_DIR]``.
"""

import sys

from example_check import check, draw_block_map, random_qkv

import maskir
from maskir import Canvas
from maskir.reference import reference_attention

FRAMES, TOKENS_PER_FRAME, HEADS, HEAD_DIM = 8, 32, 2, 16


def radial_video(frames: int, tokens_per_frame: int, window: int) -> maskir.Pattern:
    """OR over bands r of Distance(0, 2^r, 2^(r+1)) & Window((window >> r) - 1, dim=1): ``patterns.radial``."""
    return maskir.patterns.radial(frames, tokens_per_frame, window)


def main(out_dir: str = ".") -> None:
    canvas = Canvas((FRAMES, TOKENS_PER_FRAME))
    pattern = radial_video(FRAMES, TOKENS_PER_FRAME, window=16)
    print(f"pattern: {pattern} on {canvas}")
    q, k, v = random_qkv(1, HEADS, canvas.size, HEAD_DIM)
    check("radial", maskir.attention(q, k, v, pattern, canvas), reference_attention(q, k, v, pattern, canvas))
    draw_block_map(pattern, canvas, out_dir, "radial_video", block_q=32, block_kv=32)


if __name__ == "__main__":
    main(*sys.argv[1:])
