"""Block routing (MoBA, Lu et al. 2025; BiFormer, Zhu et al. 2023): each query block attends to its own block
and to the top-k key blocks chosen at run time by pooled q . k, causally.

Run ``python examples/block_routing.py [OUT_DIR]``. maskir scores the blocks itself (or takes given
indices, ``routing=``) and skips the tiles not chosen on every call.
"""

import sys

from example_check import check, draw_block_map, random_qkv

import maskir
from maskir.reference import reference_attention
from maskir.runtime.routing import score_routing

TOKENS, HEADS, HEAD_DIM = 256, 2, 16


def moba(block: int, topk: int) -> maskir.Pattern:
    """(Routing(block, topk) & Causal()) | (Blocks(block) & Causal()): ``maskir.patterns.moba``."""
    return maskir.patterns.moba(block, topk)


def main(out_dir: str = ".") -> None:
    pattern = moba(block=32, topk=2)
    print(f"pattern: {pattern}")
    q, k, v = random_qkv(1, HEADS, TOKENS, HEAD_DIM)
    chosen = score_routing(q, k, next(node for node in pattern.walk() if isinstance(node, maskir.Routing)))
    print(f"key blocks chosen for the last query block, head 0: {chosen[0, 0, -1].tolist()}")
    # maskir scores the blocks itself (the same score_routing); the float64 reference is given its choice
    check("block routing", maskir.attention(q, k, v, pattern), reference_attention(q, k, v, pattern, routing=chosen))
    draw_block_map(pattern, TOKENS, out_dir, "block_routing", block_q=32, block_kv=32)  # the static superset


if __name__ == "__main__":
    main(*sys.argv[1:])
