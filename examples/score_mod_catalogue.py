"""The score_mod catalogue (``maskir.score_mods``): ALiBi, T5 buckets, a 2-D relative position bias, and
logit soft-capping composed with a bias; each traced into the kernels and checked against float64.

Run ``python examples/score_mod_catalogue.py [OUT_DIR]``.
"""

import sys

import torch
from example_check import check, draw_block_map, random_qkv

import maskir
from maskir import Canvas, Causal, Neighborhood
from maskir import score_mods as sm
from maskir.reference import reference_attention

HEADS, HEAD_DIM = 2, 16


def catalogue() -> list[tuple[str, maskir.Pattern, Canvas, object]]:
    """(name, pattern, canvas, score_mod) for each entry."""
    torch.manual_seed(0)
    line, image = Canvas((128,)), Canvas((12, 12))
    return [
        ("alibi", Causal(), line, sm.alibi(sm.alibi_slopes(HEADS))),
        ("t5", Causal(), line, sm.t5_bias(torch.randn(32, HEADS), bidirectional=False)),
        (
            "nat_bias",
            Neighborhood(5),
            image,
            sm.relative_position_bias(torch.randn(HEADS, 9, 9), image, convention="nat"),
        ),
        ("bias_then_cap", Causal(), line, sm.compose(sm.alibi(sm.alibi_slopes(HEADS)), sm.soft_cap(5.0))),
    ]


def main(out_dir: str = ".") -> None:
    for name, pattern, canvas, score_mod in catalogue():
        q, k, v = random_qkv(1, HEADS, canvas.size, HEAD_DIM)
        got = maskir.attention(q, k, v, pattern, canvas, score_mod=score_mod)
        check(f"{name} on {pattern}", got, reference_attention(q, k, v, pattern, canvas, score_mod=score_mod))
    draw_block_map(Neighborhood(5), Canvas((12, 12)), out_dir, "score_mod_neighborhood")


if __name__ == "__main__":
    main(*sys.argv[1:])
