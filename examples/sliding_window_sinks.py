"""Sliding window with attention sinks (StreamingLLM, Xiao et al. 2023): each token sees the first ``sink``
tokens and the last ``window`` ones, causally.

Run ``python examples/sliding_window_sinks.py [OUT_DIR]``: CPU, a few seconds; writes the block map PNG.
"""

import sys

from example_check import check, draw_block_map, random_qkv

import maskir
from maskir import Causal, Sink, Window
from maskir.reference import reference_attention

TOKENS, HEADS, HEAD_DIM = 256, 2, 16


def sliding_window_with_sinks(sink: int, window: int) -> maskir.Pattern:
    """(kv < sink or q - window < kv <= q) and kv <= q: ``maskir.patterns.streaming_llm(sink, window)``."""
    pattern = (Sink(sink) | Window(window - 1, 0)) & Causal()
    assert pattern == maskir.patterns.streaming_llm(sink, window)
    return pattern


def main(out_dir: str = ".") -> None:
    pattern = sliding_window_with_sinks(sink=4, window=64)
    print(f"pattern: {pattern}")
    q, k, v = random_qkv(1, HEADS, TOKENS, HEAD_DIM)
    check("sliding window + sinks", maskir.attention(q, k, v, pattern), reference_attention(q, k, v, pattern))
    draw_block_map(pattern, TOKENS, out_dir, "sliding_window_sinks", block_q=32, block_kv=32)


if __name__ == "__main__":
    main(*sys.argv[1:])
