"""Packed documents: several sequences in one row, each attending causally within itself only.

The segment ids are run-time data (``Segments()``): the plan is a static superset and every call skips
the tiles its ids leave empty. Run ``python examples/packed_documents.py [OUT_DIR]``.
"""

import sys

import torch
from example_check import check, draw_block_map, random_qkv

import maskir
from maskir.reference import reference_attention

TOKENS, HEADS, HEAD_DIM = 256, 2, 16
DOCUMENT_LENGTHS = [(40, 100, 16, 100), (128, 128)]
"""Per batch row: the lengths of the packed documents (each row sums to TOKENS)."""


def packed_causal_documents() -> maskir.Pattern:
    """Same segment id and kv <= q: ``maskir.patterns.document(causal=True)``."""
    return maskir.patterns.document(causal=True)


def segment_ids(lengths_per_row: list[tuple[int, ...]]) -> torch.Tensor:
    """int ids [B, N]: document i of a row is filled with i."""
    rows = [torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)) for lengths in lengths_per_row]
    return torch.stack(rows)


def main(out_dir: str = ".") -> None:
    pattern = packed_causal_documents()
    ids = segment_ids(DOCUMENT_LENGTHS)
    print(f"pattern: {pattern}, documents per row: {DOCUMENT_LENGTHS}")
    q, k, v = random_qkv(len(DOCUMENT_LENGTHS), HEADS, TOKENS, HEAD_DIM)
    got = maskir.attention(q, k, v, pattern, segments=ids)
    check("packed documents", got, reference_attention(q, k, v, pattern, segments=ids))
    draw_block_map(pattern, TOKENS, out_dir, "packed_documents", block_q=32, block_kv=32)  # the static superset


if __name__ == "__main__":
    main(*sys.argv[1:])
