"""Attention patterns from the literature, built from ``maskir.ir`` nodes.

Each helper names its paper, states the rule it builds and the conventions it picks. Every helper
returns a plain IR tree whose ``str`` reads back with ``maskir.parse``, except ``halonet`` (a
``Predicate``) and the random part of ``bigbird`` (a ``Predicate`` over a fixed block table). Those
predicates are memoised on their arguments, so equal arguments give equal (and equally hashed) patterns.
Canvas conventions: token index is row-major over the canvas; on a 2-D canvas dim 0 is the row (y) and
dim 1 the column (x).
"""

from __future__ import annotations

import operator
import random
from functools import lru_cache, reduce
from typing import Any, NamedTuple

import torch

from maskir.canvas import Canvas
from maskir.ir import (
    Blocks,
    Causal,
    Columns,
    Distance,
    Global,
    Grid,
    Neighborhood,
    Pattern,
    PerDim,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    SlidingWindow,
    Strided,
    Stripes,
    Window,
)

# -- argument checks -------------------------------------------------------------------------------


def _require_int(helper: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{helper} argument {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{helper} argument {name} must be >= {minimum}, got {name}={value}.")


def _require_bool(helper: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{helper} argument {name} must be a bool, got {value!r}.")


def _as_canvas(helper: str, canvas: Any) -> Canvas:
    if isinstance(canvas, Canvas):
        return canvas
    if isinstance(canvas, (int, tuple, list)) and not isinstance(canvas, bool):
        return Canvas(canvas)
    raise TypeError(f"{helper} argument canvas must be a Canvas, an int or a tuple of ints, got {canvas!r}.")


def _any(patterns: list[Pattern]) -> Pattern:
    """The OR of a non-empty list of patterns, left to right."""
    return reduce(operator.or_, patterns)


# -- building blocks shared by several helpers ----------------------------------------------------


def _block_band(block: int, radius: int) -> Pattern:
    """|q // block - kv // block| <= radius on flat indices (a sliding window counted in blocks).

    For block == 1 this is ``Window(radius, radius)``. Otherwise it is the OR over o in 0..radius of
    ``Blocks((radius + 1) * block, offset=o * block)``: two blocks i, j lie in a common run of
    radius + 1 consecutive blocks iff |i - j| <= radius, and the radius + 1 offsets start such runs at
    every residue modulo radius + 1, so one of them holds both.
    """
    if block == 1:
        return Window(radius, radius)
    span = (radius + 1) * block
    return _any([Blocks(span, offset=o * block) for o in range(radius + 1)])


def _kv_block_residue(block: int, stride: int, residue: int) -> Pattern:
    """(kv // block) % stride == residue, from ``Columns`` (kv % period >= period - width).

    With period = stride * block: kv % period >= residue * block, and not kv % period >= (residue + 1) * block.
    """
    period = stride * block
    at_or_after = Columns(period, period - residue * block)
    if residue == stride - 1:
        return at_or_after
    return at_or_after - Columns(period, period - (residue + 1) * block)


# -- vision ---------------------------------------------------------------------------------------


def natten(
    kernel: PerDim, dilation: PerDim = 1, stride: PerDim = 1, causal: bool | tuple[bool, ...] = False
) -> Neighborhood:
    """Neighborhood attention: NAT (Hassani et al. 2023, "Neighborhood Attention Transformer"), dilated
    (DiNAT, Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer") and strided
    (GNA, Hassani et al. 2025, "Generalized Neighborhood Attention").

    Per dim with extent L, kernel k, dilation d, stride s: a query x attends only inside its dilation group
    (x % d equal), where coordinates are x' = x // d and the group holds L_g = ceil((L - x % d) / d) tokens.
    The stride group of x' (s consecutive queries) shares the window of its leader
    l = min(x' // s * s + s // 2, L_g - 1): the k keys starting at clamp(l - k // 2, 0, L_g - k), so every
    query sees exactly k keys per dim (windows shift inward at the borders). Causal: the leader is the last
    query of the stride group, l = min(x' // s * s + s - 1, L_g - 1), and the keys are l - k < kv' <= x'.
    Multi-dim: the AND over dims, 1-, 2- or 3-D by the number of kernel values (an int kernel applies to
    every canvas dim; dilation, stride and causal likewise take one value or one per dim).
    This is ``maskir.ir.Neighborhood`` (NATTEN >= 0.20 semantics, even kernels included).
    """
    per_dim = {"kernel": kernel, "dilation": dilation, "stride": stride, "causal": causal}
    lengths = {len(v) for v in per_dim.values() if isinstance(v, (tuple, list))}
    if len(lengths) > 1:
        given = ", ".join(f"{name}={value!r}" for name, value in per_dim.items())
        raise ValueError(f"natten arguments given per dim must all have the same length, got {given}.")
    return Neighborhood(kernel, dilation, stride, causal)


def swin(window: PerDim, shifted: bool = False) -> Blocks:
    """Swin Transformer window attention (Liu et al. 2021, "Swin Transformer: Hierarchical Vision
    Transformer using Shifted Windows").

    W-MSA (``shifted=False``): tokens attend within non-overlapping windows, same x // window per dim
    (``Blocks(window)``). SW-MSA (``shifted=True``): Swin rolls the map by -s with s = window // 2, attends
    within the windows of the rolled map, masks pairs that come from different regions of the roll (its
    ``attn_mask``), and rolls back. In original coordinates a window then holds x in
    [s + i * window, s + (i + 1) * window), the first s and the last window - s positions forming their own
    groups: same (x + window - s) // window, i.e. ``Blocks(window, offset=window - window // 2)``. For even
    windows the offset is window // 2; Swin's own window 7 (shift 3) needs offset 4. The equality is exact
    when the window divides the extent (Swin pads the map to a multiple of the window otherwise, and its
    padding tokens take part in attention). ``window`` is an int or one value per dim.
    """
    _require_bool("swin", "shifted", shifted)
    if not shifted:
        return Blocks(window)
    sizes = tuple(window) if isinstance(window, (tuple, list)) else (window,)
    for size in sizes:
        _require_int("swin", "window", size, 1)
    offsets = tuple(size - size // 2 for size in sizes)
    return Blocks(window, offset=offsets if isinstance(window, (tuple, list)) else offsets[0])


def cswin(stripe_width: int, heads: int = 2) -> PerHead:
    """CSWin cross-shaped window attention (Dong et al. 2022, "CSWin Transformer: A General Vision
    Transformer Backbone with Cross-Shaped Windows").

    On an (H, W) canvas the K = ``heads`` heads split in two halves, as in the paper's equation: heads
    0 .. K/2 - 1 attend within horizontal stripes (sw rows by W columns: same y // sw, ``Stripes(0, sw)``),
    heads K/2 .. K - 1 within vertical stripes (H rows by sw columns: same x // sw, ``Stripes(1, sw)``).
    Returns ``PerHead`` of K patterns (head h >= K uses h % K). The official code puts the vertical half
    first; the two halves are the same size, so only the head labels differ.
    """
    _require_int("cswin", "stripe_width", stripe_width, 1)
    _require_int("cswin", "heads", heads, 2)
    if heads % 2:
        raise ValueError(f"cswin splits the heads into two equal halves: heads must be even, got heads={heads}.")
    half = heads // 2
    return PerHead([Stripes(0, stripe_width)] * half + [Stripes(1, stripe_width)] * half)


class MaxViTAttention(NamedTuple):
    """The two attentions of a MaxViT block, applied one after the other (not a union)."""

    block: Blocks
    grid: Grid


def maxvit(block: PerDim, grid: PerDim) -> MaxViTAttention:
    """MaxViT multi-axis attention (Tu et al. 2022, "MaxViT: Multi-Axis Vision Transformer").

    A MaxViT block runs two attentions in sequence. Block attention partitions the map into P x P windows
    (P = ``block``): same x // P per dim, ``Blocks(P)``. Grid attention lays a fixed G x G grid
    (G = ``grid``) over the map and attends among the G x G tokens spaced extent / G apart, i.e. tokens with
    the same x % (extent / G) per dim: ``Grid(G)`` (G must divide each extent). Returns the named pair
    ``MaxViTAttention(block=..., grid=...)``; each element is a plain pattern.
    """
    return MaxViTAttention(block=Blocks(block), grid=Grid(grid))


@lru_cache(maxsize=128)
def _halo_predicate(block: int, halo: int, shape: tuple[int, ...]) -> Predicate:
    def halo_mask(b, h, q_idx, kv_idx):
        inside = []
        for extent in reversed(shape):  # row-major: the last dim varies fastest
            q_x, kv_x = q_idx % extent, kv_idx % extent
            q_idx, kv_idx = q_idx // extent, kv_idx // extent
            start = q_x // block * block - halo
            inside.append((kv_x >= start) & (kv_x < start + block + 2 * halo))
        return reduce(operator.and_, inside)

    halo_mask.__name__ = f"halonet_block{block}_halo{halo}_" + "x".join(map(str, shape))
    return Predicate(halo_mask)


def halonet(block: int, halo: int, canvas: Canvas | int | tuple[int, ...]) -> Predicate:
    """HaloNet blocked local attention (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter
    Efficient Visual Backbones").

    The map is cut into non-overlapping query blocks of b x b tokens (b = ``block``; the last block of a dim
    is short when b does not divide the extent). Every query of block [B*b, B*b + b) per dim attends to the
    (b + 2h) x (b + 2h) halo around its block (h = ``halo``): allowed iff, per dim,
    (q_x // b) * b - h <= kv_x < (q_x // b) * b + b + h. Positions outside the canvas do not exist (the
    paper's zero padding is masked out, as in common implementations). Works on a 1-, 2- or 3-D canvas.

    No IR node expresses a window that depends on the query's block, so this is a ``Predicate`` over flat
    indices (coordinates by // and % on the given canvas); it has no text form for ``maskir.parse``.
    """
    _require_int("halonet", "block", block, 1)
    _require_int("halonet", "halo", halo, 0)
    return _halo_predicate(block, halo, _as_canvas("halonet", canvas).shape)


# -- long sequences -------------------------------------------------------------------------------


def sliding_window(size: int, causal: bool = True) -> Window:
    """Sliding-window attention (Beltagy et al. 2020, "Longformer: The Long-Document Transformer";
    causal form as in Jiang et al. 2023, "Mistral 7B").

    Causal: 0 <= q - kv < size, the current token and the size - 1 before it (``Window(size - 1, 0)``).
    Non-causal: |q - kv| <= size // 2, Longformer's w/2 on each side (``Window(size // 2, size // 2)``).
    """
    return SlidingWindow(size, causal)


def longformer(window: int, global_tokens: tuple[int, ...] | list[int] = ()) -> Pattern:
    """Longformer attention (Beltagy et al. 2020, "Longformer: The Long-Document Transformer").

    A sliding window of w = ``window`` tokens, w/2 on each side (|q - kv| <= w/2; w must be even, as in
    the reference implementation), OR symmetric global attention on the flat indices ``global_tokens``: a
    global token attends to every token and every token attends to it (``Global``).
    """
    _require_int("longformer", "window", window, 2)
    if window % 2:
        raise ValueError(f"longformer argument window is w/2 on each side and must be even, got window={window}.")
    local = SlidingWindow(window, causal=False)
    if not isinstance(global_tokens, (tuple, list)):
        raise TypeError(f"longformer argument global_tokens must be a tuple of token indices, got {global_tokens!r}.")
    return local | Global(tuple(global_tokens)) if global_tokens else local


@lru_cache(maxsize=128)
def _random_blocks_predicate(
    block: int, n_blocks: int, radius: int, global_ids: tuple[int, ...], random_blocks: int, seed: int
) -> Predicate:
    rng = random.Random(seed)
    table = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    for q_block in range(n_blocks):
        if q_block in global_ids:
            continue
        candidates = [j for j in range(n_blocks) if j not in global_ids and abs(j - q_block) > radius]
        keys = {j: rng.random() for j in candidates}
        chosen = sorted(candidates, key=keys.__getitem__)[:random_blocks]
        table[q_block, chosen] = True

    def random_blocks_mask(b, h, q_idx, kv_idx):
        return table[q_idx // block, kv_idx // block]

    random_blocks_mask.__name__ = f"bigbird_random_block{block}_n{n_blocks}_r{random_blocks}_seed{seed}"
    return Predicate(random_blocks_mask)


def bigbird(
    block: int,
    window_blocks: int = 3,
    global_blocks: int = 2,
    random_blocks: int = 3,
    seed: int = 0,
    *,
    canvas: Canvas | int | tuple[int, ...],
) -> Pattern:
    """BigBird block-sparse attention, ITC form (Zaheer et al. 2020, "Big Bird: Transformers for Longer
    Sequences").

    The N = canvas.size flat tokens are cut into n = N / b blocks of b = ``block`` tokens (b must divide N).
    With block indices i = q // b and j = kv // b, allowed iff any of:
    - window: |i - j| <= window_blocks // 2 (``window_blocks`` odd; 3 is the paper's), built from ``Blocks``;
    - global: i or j is a global block (``Global`` over their tokens). The global blocks are the first
      ceil(g/2) and the last floor(g/2) blocks, g = ``global_blocks``; g = 2 gives the first and last block,
      as in the reference implementation;
    - random: j is one of the ``random_blocks`` random kv blocks of q block i. Each non-global q block draws
      r = ``random_blocks`` distinct blocks among those neither global nor in its window (fewer if fewer
      exist). The draw is fixed by ``seed``: ``random.Random(seed)`` gives, for q blocks in increasing order,
      one ``random()`` key to each candidate in increasing order, and the r smallest keys win (Python
      guarantees this stream across versions).
    The random part is a ``Predicate`` reading a fixed [n, n] block table (``random_blocks=0`` leaves it out
    and the result is plain IR); the window and global parts are plain IR.
    """
    _require_int("bigbird", "block", block, 1)
    _require_int("bigbird", "window_blocks", window_blocks, 1)
    _require_int("bigbird", "global_blocks", global_blocks, 0)
    _require_int("bigbird", "random_blocks", random_blocks, 0)
    _require_int("bigbird", "seed", seed, 0)
    canvas = _as_canvas("bigbird", canvas)
    if canvas.size % block:
        raise ValueError(f"bigbird argument block={block} must divide the number of tokens {canvas.size}.")
    if window_blocks % 2 == 0:
        raise ValueError(
            f"bigbird argument window_blocks must be odd (centred on the query block), got {window_blocks}."
        )
    n_blocks = canvas.size // block
    radius = window_blocks // 2
    if radius + 1 > n_blocks:
        raise ValueError(f"bigbird argument window_blocks={window_blocks} is too wide for {n_blocks} blocks.")
    if global_blocks > n_blocks:
        raise ValueError(f"bigbird argument global_blocks={global_blocks} exceeds the {n_blocks} blocks.")
    global_ids = tuple(range((global_blocks + 1) // 2)) + tuple(range(n_blocks - global_blocks // 2, n_blocks))
    parts = [_block_band(block, radius)]
    if global_ids:
        parts.append(Global(tuple(t for i in global_ids for t in range(i * block, (i + 1) * block))))
    if random_blocks:
        parts.append(_random_blocks_predicate(block, n_blocks, radius, global_ids, random_blocks, seed))
    return _any(parts)


def streaming_llm(sink: int, window: int) -> Pattern:
    """StreamingLLM attention sinks (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
    Sinks").

    Causal; a query attends to the first n = ``sink`` tokens and to the w = ``window`` most recent tokens,
    itself included: kv <= q and (kv < n or q - kv < w), i.e. ``(Sink(n) | Window(w - 1, 0)) & Causal()``.
    """
    _require_int("streaming_llm", "sink", sink, 1)
    _require_int("streaming_llm", "window", window, 1)
    return (Sink(sink) | Window(window - 1, 0)) & Causal()


def s2(stride: int, heads: int, window: int = 0, block: int = 1) -> PerHead:
    """S2-Attention, heterogeneous context sharding among heads (Lin et al. 2024, "S2-Attention:
    Hardware-Aware Context Sharding Among Attention Heads").

    Causal (kv <= q). Tokens are grouped in blocks of b = ``block`` (the paper's kernels use 64; b = 1 is
    per token), i = q // b and j = kv // b. Head h attends to the "vertical stride" shard of kv blocks with
    (j + h * step) % stride == 0, where step = max(1, stride // heads), so the heads' shards differ and
    together cover the context; and, when ``window`` > 0, to the local blocks 0 <= i - j < window. This is
    the layout of the authors' reference code (``get_sparse_attn_mask`` in dkernel, head offset 0, no dense
    heads): shards are fixed kv positions (vertical stripes), not distances, so later queries reuse the kv
    that earlier ones used. With ``window`` = 0 a query before its head's first shard block sees nothing.
    Returns ``PerHead`` of ``heads`` patterns (head h >= heads uses h % heads).
    """
    _require_int("s2", "stride", stride, 1)
    _require_int("s2", "heads", heads, 1)
    _require_int("s2", "window", window, 0)
    _require_int("s2", "block", block, 1)
    step = max(1, stride // heads)
    per_head = []
    for h in range(heads):
        shard = _kv_block_residue(block, stride, -h * step % stride)
        allowed = _block_band(block, window - 1) | shard if window else shard
        per_head.append(allowed & Causal())
    return PerHead(per_head)


def moa(windows: tuple[int, ...] | list[int], sink: int = 0) -> PerHead:
    """MoA, Mixture of Attention spans (Fu et al. 2024, "MoA: Mixture of Sparse Attention for Automatic
    Large Language Model Compression", later titled "Mixture of Attention Spans").

    Head h attends causally to its own sliding window of w_h = ``windows[h]`` tokens: 0 <= q - kv < w_h
    (``sliding_window(w_h)``). With ``sink`` = n > 0 every head also keeps the first n tokens, as MoA's
    kernels do (``streaming_llm(n, w_h)``). Returns ``PerHead`` (head h uses windows[h % len(windows)]).
    """
    if not isinstance(windows, (tuple, list)) or not windows:
        raise ValueError(f"moa argument windows must be a non-empty tuple of window sizes, got {windows!r}.")
    _require_int("moa", "sink", sink, 0)
    for size in windows:
        _require_int("moa", "windows", size, 1)
    return PerHead([streaming_llm(sink, size) if sink else sliding_window(size) for size in windows])


def radial(frames: int, tokens_per_frame: int, window: int) -> Pattern:
    """Radial attention for video (Li et al. 2025, "Radial Attention: O(n log n) Sparse Attention with
    Energy Decay for Long Video Generation").

    Canvas (frames, tokens_per_frame): dim 0 is the frame t, dim 1 the token s within the frame. With the
    temporal distance d = |t_q - t_kv| and its band r = floor(log2(max(d, 1))) (band 0 is d in {0, 1},
    band r >= 1 is d in [2^r, 2^(r+1))), allowed iff

        (window >> r) >= 1  and  |s_q - s_kv| < (window >> r),

    i.e. the spatial window halves with each doubling of the temporal distance and the bands stop where it
    reaches 0. As IR: OR over r of ``Distance(0, lo_r, 2^(r+1)) & Window(h_r, h_r, dim=1)`` with lo_0 = 0,
    lo_r = 2^r and h_r = (window >> r) - 1, for the bands with window >> r >= 1 and lo_r < frames.
    ``window`` = tokens_per_frame is the paper's mask (|s_q - s_kv| + 1 <= s / 2^r). The paper's
    implementation also keeps a thinned set of far frames once the width drops below one token and a
    full first frame as attention sink; neither is part of this helper.
    """
    _require_int("radial", "frames", frames, 1)
    _require_int("radial", "tokens_per_frame", tokens_per_frame, 1)
    _require_int("radial", "window", window, 1)
    if window > tokens_per_frame:
        raise ValueError(
            f"radial argument window={window} must be <= tokens_per_frame={tokens_per_frame} "
            "(it counts spatial positions within a frame)."
        )
    bands = []
    r = 0
    while window >> r >= 1 and (r == 0 or 2**r < frames):
        width = (window >> r) - 1
        bands.append(Distance(0, 0 if r == 0 else 2**r, 2 ** (r + 1)) & Window(width, width, dim=1))
        r += 1
    return _any(bands)


def document(causal: bool = False) -> Pattern:
    """Packed documents (sequence packing without cross-contamination, Krell et al. 2021, "Efficient
    Sequence Packing without Cross-contamination").

    Several documents share one sequence; a token attends only within its own document: same segment id,
    ``Segments()`` (ids [B, N] given at call time). ``causal=True`` adds kv <= q (packed causal LM training).
    """
    _require_bool("document", "causal", causal)
    return Segments() & Causal() if causal else Segments()


def moba(block: int, topk: int) -> Pattern:
    """Mixture of Block Attention (Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs").

    The sequence is cut into blocks of ``block`` tokens; each query block attends to the ``topk`` kv blocks
    a gate ranks highest, always to its own block, never to a future one, and causally inside its own
    block: ``(Routing(block, topk) & Causal()) | (Blocks(block) & Causal())``. maskir's gate pools q per
    block (BiFormer's region-level routing, scorer "mean_qk"); MoBA's gates each query token against the
    mean key of each block, so a block's choice here is shared by its queries.
    """
    _require_int("moba", "block", block, 1)
    _require_int("moba", "topk", topk, 1)
    return (Routing(block, topk) & Causal()) | (Blocks(block) & Causal())


def prefix_lm(prefix: int) -> Pattern:
    """Prefix language model (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
    Text-to-Text Transformer", T5's prefix LM).

    The first n = ``prefix`` tokens are seen bidirectionally, the rest causally: kv < n or kv <= q,
    ``Prefix(n) | Causal()``.
    """
    _require_int("prefix_lm", "prefix", prefix, 1)
    return Prefix(prefix) | Causal()


def fixed(stride: int, width: int, causal: bool = True) -> Pattern:
    """Sparse Transformer "fixed" pattern (Child et al. 2019, "Generating Long Sequences with Sparse
    Transformers").

    With l = ``stride`` and c = ``width``: A1 = {j : j // l == i // l} (the query's own block of l tokens)
    and A2 = {j : j mod l in {l - c, ..., l - 1}} (the last c tokens of every block, the "summary"
    columns). Allowed iff j in A1 or A2, and j <= i when causal: ``(Blocks(l) | Columns(l, c)) & Causal()``.
    """
    _require_int("fixed", "stride", stride, 1)
    _require_int("fixed", "width", width, 1)
    _require_bool("fixed", "causal", causal)
    if width > stride:
        raise ValueError(f"fixed needs width <= stride, got width={width}, stride={stride}.")
    allowed = Blocks(stride) | Columns(stride, width)
    return allowed & Causal() if causal else allowed


def strided(stride: int, causal: bool = True) -> Pattern:
    """Sparse Transformer "strided" pattern (Child et al. 2019, "Generating Long Sequences with Sparse
    Transformers").

    With l = ``stride``: A1 = {j : max(0, i - l) <= j <= i} (the previous l tokens) and
    A2 = {j : (i - j) mod l == 0} (every l-th token back). j = i - l lies in A2 as well, so
    A1 | A2 = ``(Window(l - 1, 0) | Strided(l)) & Causal()``. ``causal=False`` mirrors it:
    |i - j| < l or (i - j) mod l == 0, ``Window(l - 1, l - 1) | Strided(l)``.
    """
    _require_int("strided", "stride", stride, 1)
    _require_bool("strided", "causal", causal)
    if causal:
        return (Window(stride - 1, 0) | Strided(stride)) & Causal()
    return Window(stride - 1, stride - 1) | Strided(stride)
