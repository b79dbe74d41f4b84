"""Per-head patterns: MoA (Fu et al. 2024) gives each head its own causal window and sinks; S2-Attention
(Lin et al. 2024) gives each head a different strided shard of the context plus a local band.

Run ``python examples/per_head.py [OUT_DIR]``: one kernel serves all heads (``PerHead``).
"""

import sys

from example_check import check, draw_block_map, random_qkv

import maskir
from maskir.reference import reference_attention

TOKENS, HEADS, HEAD_DIM = 256, 4, 16


def mixture_of_spans(windows: tuple[int, ...], sink: int) -> maskir.Pattern:
    """Head h: (kv < sink or 0 <= q - kv < windows[h]) and kv <= q: ``maskir.patterns.moa``."""
    return maskir.patterns.moa(windows, sink=sink)


def strided_shards(stride: int, heads: int, window: int, block: int) -> maskir.Pattern:
    """Head h: kv blocks in its stride shard, plus ``window`` local blocks, causal: ``maskir.patterns.s2``."""
    return maskir.patterns.s2(stride, heads, window=window, block=block)


def main(out_dir: str = ".") -> None:
    q, k, v = random_qkv(1, HEADS, TOKENS, HEAD_DIM)
    for name, pattern in [
        ("moa", mixture_of_spans((16, 32, 64, 128), sink=4)),
        ("s2", strided_shards(stride=4, heads=HEADS, window=2, block=16)),
    ]:
        print(f"{name}: {pattern}")
        check(name, maskir.attention(q, k, v, pattern), reference_attention(q, k, v, pattern))
        draw_block_map(pattern, TOKENS, out_dir, f"per_head_{name}", heads=HEADS, block_q=32, block_kv=32)


if __name__ == "__main__":
    main(*sys.argv[1:])
