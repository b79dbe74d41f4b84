"""Ready-made score_mods: relative position biases, ALiBi, T5 buckets, logit soft-capping.

Each function returns a flex-style ``score_mod(score, b, h, q_idx, kv_idx)`` that maskir traces into its
kernels. The tensors passed in (a bias table, slopes) are read on every call, and when they require grad
(an ``nn.Parameter``) they get gradients: d table[e] = sum over computed allowed pairs (q, kv) with
index(q, kv) = e of dL/dscore'(q, kv), where score' is the modified score. Indices are clamped into the
table, so the function is defined on every pair (the float64 reference evaluates it densely); on the pairs
a matching pattern allows, clamping never acts. ``compose`` chains several.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from maskir.canvas import Canvas

ScoreMod = Callable[..., torch.Tensor]
CONVENTIONS = ("swin", "nat")


def _expand(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or one per canvas dim ({ndim}), got {name}={value!r}.")
    return values


def _coordinates(index, shape: tuple[int, ...]) -> list:
    """Row-major coordinates of a flat token index (symbolic or a tensor) on a canvas of ``shape``."""
    coords, stride = [], math.prod(shape)
    for extent in shape:
        stride //= extent
        coords.append(index // stride % extent)
    return coords


def relative_position_bias(
    table: torch.Tensor,
    canvas: Canvas | int | tuple[int, ...],
    *,
    convention: str = "swin",
    dilation: int | Sequence[int] = 1,
) -> ScoreMod:
    """score + table[h, r_1 + w_1 - 1, ..., r_d + w_d - 1]: a learned bias per head and relative offset.

    ``table`` is [heads, 2 w_1 - 1, ..., 2 w_d - 1] on a 1-D, 2-D or 3-D ``canvas`` (the token grid of q
    and kv): w_i is the window (Swin) or kernel (NAT) size along dim i. The offset r_i along dim i is
    clamped to [-(w_i - 1), w_i - 1]:

    - ``convention="swin"`` (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
      Windows", ICCV 2021, arXiv:2103.14030): r_i = q_i - kv_i, Swin's ``relative_position_index`` (its
      [(2Wh-1)(2Ww-1), heads] table is ``table.flatten(1).T``). Shifted windows (``Blocks(w, offset)``)
      use the same offsets: allowed pairs share a window.
    - ``convention="nat"`` (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
      arXiv:2204.07143; Hassani & Shi, "Dilated Neighborhood Attention Transformer", arXiv:2209.15001):
      r_i = kv_i // d_i - q_i // d_i with dilation d_i, NATTEN's ``rpb`` [heads, 2k-1, 2k-1] index
      (``pi + kv offset`` in its kernels): the offset inside the dilation group, also at the borders.

    ``dilation`` (an int or one per dim) divides coordinates in both conventions; keep 1 for Swin.
    """
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got convention={convention!r}.")
    if not isinstance(table, torch.Tensor) or table.dim() != canvas.ndim + 1 or not table.is_floating_point():
        raise ValueError(
            f"table must be a float tensor [heads, 2w-1 per canvas dim] ({canvas.ndim + 1} dims for {canvas}), "
            f"got {getattr(table, 'shape', type(table))}."
        )
    if any(span % 2 == 0 for span in table.shape[1:]):
        raise ValueError(f"table's spans must be odd (2w - 1 per dim), got table.shape={tuple(table.shape)}.")
    dilations = _expand(dilation, canvas.ndim, "dilation")
    reach = [(span - 1) // 2 for span in table.shape[1:]]  # w - 1 per dim
    shape = canvas.shape

    def relative_position_bias(score, b, h, q_idx, kv_idx):
        q_coords, kv_coords = _coordinates(q_idx, shape), _coordinates(kv_idx, shape)
        index = [h]
        for qc, kc, d, r in zip(q_coords, kv_coords, dilations, reach):
            offset = qc // d - kc // d if convention == "swin" else kc // d - qc // d
            index.append(torch.clamp(offset, -r, r) + r)
        return score + table[tuple(index)]

    return relative_position_bias


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's fixed slopes (Press et al., arXiv:2108.12409, and its reference code): for a power of two
    n, 2^(-8 i / n) for i = 1..n; otherwise those of the power of two below n, then every other slope of
    twice that power. float32 [heads]."""
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a positive int, got heads={heads!r}.")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    below = 1 << (heads.bit_length() - 1)
    slopes = geometric(below) + geometric(2 * below)[0::2][: heads - below]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi(slopes: torch.Tensor, *, symmetric: bool = False) -> ScoreMod:
    """score + slopes[h] * (kv - q): ALiBi (Press, Smith, Lewis, "Train Short, Test Long: Attention with
    Linear Biases Enables Input Length Extrapolation", ICLR 2022, arXiv:2108.12409), i.e. -m (q - kv) on
    the causal pairs kv <= q. ``symmetric``: score - slopes[h] * |q - kv| (bidirectional use).

    ``slopes`` [heads] (``alibi_slopes(heads)``, or an ``nn.Parameter`` to learn them)."""
    if not isinstance(slopes, torch.Tensor) or slopes.dim() != 1 or not slopes.is_floating_point():
        raise ValueError(f"slopes must be a 1-D float tensor [heads], got {getattr(slopes, 'shape', type(slopes))}.")

    def alibi(score, b, h, q_idx, kv_idx):
        distance = -(q_idx - kv_idx).abs() if symmetric else kv_idx - q_idx
        return score + slopes[h] * distance

    return alibi


def t5_buckets(relative: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position kv - q (Raffel et al., arXiv:1910.10683; the formula of its
    reference code and transformers' ``T5Attention._relative_position_bucket``, in float32 as they do):
    half the buckets exact for small distances, the rest logarithmic up to ``max_distance``, then the last.
    Bidirectional: separate halves for kv > q and kv <= q; causal: only kv <= q (kv > q shares bucket 0)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).to(relative.dtype) * num_buckets
        distance = relative.abs()
    else:
        distance = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (ratio * (num_buckets - max_exact)).to(relative.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def t5_bias(
    table: torch.Tensor, *, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> ScoreMod:
    """score + table[bucket(kv - q), h]: T5's relative attention bias (Raffel et al., "Exploring the
    Limits of Transfer Learning with a Unified Text-to-Text Transformer", JMLR 2020, arXiv:1910.10683).

    ``table`` is [num_buckets, heads] (transformers' ``relative_attention_bias.weight``). Buckets are
    constant beyond ``max_distance``, so a lookup over kv - q in [-max_distance, max_distance] (clamped)
    holds every bucket: the kernel reads table[lookup[clamp(kv - q) + max_distance], h]."""
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or not table.is_floating_point():
        raise ValueError(
            f"table must be a float tensor [num_buckets, heads], got {getattr(table, 'shape', type(table))}."
        )
    if table.shape[0] != num_buckets:
        raise ValueError(f"table must have num_buckets={num_buckets} rows, got table.shape={tuple(table.shape)}.")
    if max_distance < 1 or num_buckets < 2 + 2 * bidirectional:
        raise ValueError(f"need max_distance >= 1 and enough buckets, got {max_distance=}, {num_buckets=}.")
    relative = torch.arange(-max_distance, max_distance + 1)
    lookup = t5_buckets(relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    lookup = lookup.to(torch.int32).to(table.device)

    def t5_bias(score, b, h, q_idx, kv_idx):
        relative = torch.clamp(kv_idx - q_idx, -max_distance, max_distance)
        return score + table[lookup[relative + max_distance], h]

    return t5_bias


def soft_cap(cap: float | torch.Tensor) -> ScoreMod:
    """cap * tanh(score / cap): logit soft-capping (tanh clipping of Bello et al., "Neural Combinatorial
    Optimization with Reinforcement Learning", arXiv:1611.09940; on attention logits in Gemma 2, Gemma
    Team, arXiv:2408.00118). ``cap`` a positive number or a 0-d float tensor (learnable)."""
    if isinstance(cap, torch.Tensor):
        if cap.dim() != 0 or not cap.is_floating_point():
            raise ValueError(f"cap must be a positive number or a 0-d float tensor, got shape {tuple(cap.shape)}.")
    elif not isinstance(cap, (int, float)) or isinstance(cap, bool) or cap <= 0:
        raise ValueError(f"cap must be a positive number or a 0-d float tensor, got cap={cap!r}.")

    def soft_cap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return soft_cap


def compose(*score_mods: ScoreMod) -> ScoreMod:
    """Apply ``score_mods`` in order: each gets the score the one before returned (e.g. a bias, then
    ``soft_cap``)."""
    if not score_mods or not all(callable(f) for f in score_mods):
        raise ValueError(f"compose needs one or more score_mod callables, got {score_mods!r}.")

    def composed(score, b, h, q_idx, kv_idx):
        for score_mod in score_mods:
            score = score_mod(score, b, h, q_idx, kv_idx)
        return score

    return composed
