"""Dense float64 reference: the definition every backend is tested against.

``reference_mask`` evaluates a pattern on all (q, kv) pairs with numpy broadcasting (q along axis 0,
kv along axis 1); ``reference_attention`` is softmax(q k^T * scale + score_mod, masked) v in float64,
with fully masked rows giving 0. Reads only ``maskir.ir`` and ``maskir.canvas``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.ir import (
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    Pattern,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    Strided,
    Stripes,
    Window,
    check_canvas,
    expand,
)


@dataclass(frozen=True)
class _Grid:
    """Flat indices and coordinates of q (column vectors) and kv (row vectors)."""

    q: np.ndarray
    kv: np.ndarray
    q_coords: tuple[np.ndarray, ...]
    kv_coords: tuple[np.ndarray, ...]
    canvas: Canvas
    kv_canvas: Canvas
    batch: int
    head: int
    segments: tuple[np.ndarray, np.ndarray] | None
    routing: np.ndarray | None


def _neighborhood_1d(q: np.ndarray, kv: np.ndarray, extent: int, k: int, d: int, s: int, causal: bool):
    """The NATTEN rule in one dim (see ``Neighborhood``) on broadcast coordinate arrays."""
    group = q % d
    same_group = group == kv % d
    qg, kvg = q // d, kv // d
    group_len = -(-(extent - group) // d)  # ceil((L - g) / d)
    if causal:
        leader = np.minimum(qg // s * s + s - 1, group_len - 1)
        inside = (kvg <= qg) & (leader - kvg < k)
    else:
        leader = np.minimum(qg // s * s + s // 2, group_len - 1)
        right = k // 2 - (1 - k % 2)
        centre = np.clip(leader, k // 2, group_len - 1 - right)
        inside = (centre - k // 2 <= kvg) & (kvg <= centre + right)
    return same_group & inside


def _routing_mask(node: Routing, g: _Grid) -> np.ndarray:
    if g.routing is None:
        raise ValueError(f"{node} is data dependent: pass routing=<kv block indices [B, H, q_blocks, topk]>.")
    chosen = np.asarray(g.routing)
    if chosen.ndim == 4:
        if not (0 <= g.batch < chosen.shape[0] and 0 <= g.head < chosen.shape[1]):
            raise ValueError(f"routing has shape {chosen.shape}: no entry for batch={g.batch}, head={g.head}.")
        chosen = chosen[g.batch, g.head]
    q_blocks = -(-g.canvas.size // node.block)
    kv_blocks = -(-g.kv_canvas.size // node.block)
    if chosen.ndim != 2 or chosen.shape[0] != q_blocks:
        raise ValueError(f"routing must have shape [B, H, {q_blocks}, topk] for {node}, got {np.shape(g.routing)}.")
    if chosen.size and (chosen.min() < 0 or chosen.max() >= kv_blocks):
        raise ValueError(f"routing indices must lie in [0, {kv_blocks}) for {node}.")
    block_map = np.zeros((q_blocks, kv_blocks), dtype=bool)
    np.put_along_axis(block_map, chosen.astype(np.int64), True, axis=1)
    return block_map[g.q // node.block, g.kv // node.block]


def _mask(node: Pattern, g: _Grid) -> np.ndarray:
    q, kv = g.q, g.kv
    if isinstance(node, Full):
        return np.ones((1, 1), dtype=bool)
    if isinstance(node, Causal):
        if node.dim is None:
            return kv <= q + node.offset
        return g.kv_coords[node.dim] <= g.q_coords[node.dim] + node.offset
    if isinstance(node, Window):
        qx, kx = (q, kv) if node.dim is None else (g.q_coords[node.dim], g.kv_coords[node.dim])
        return (qx - node.left <= kx) & (kx <= qx + node.right)
    if isinstance(node, Dilated):
        delta = q - kv
        return (np.abs(delta) <= node.window * node.dilation) & (delta % node.dilation == 0)
    if isinstance(node, Neighborhood):
        nd = g.canvas.ndim
        args = [expand(getattr(node, f), nd, "Neighborhood", f) for f in ("kernel", "dilation", "stride", "causal")]
        allowed = np.ones((1, 1), dtype=bool)
        for dim, (k, d, s, c) in enumerate(zip(*args)):
            extent = g.canvas.shape[dim]
            allowed = allowed & _neighborhood_1d(g.q_coords[dim], g.kv_coords[dim], extent, k, d, s, c)
        return allowed
    if isinstance(node, Blocks):
        nd = g.canvas.ndim
        size, offset = expand(node.size, nd, "Blocks", "size"), expand(node.offset, nd, "Blocks", "offset")
        allowed = np.ones((1, 1), dtype=bool)
        for dim in range(nd):
            same = (g.q_coords[dim] + offset[dim]) // size[dim] == (g.kv_coords[dim] + offset[dim]) // size[dim]
            allowed = allowed & same
        return allowed
    if isinstance(node, Stripes):
        return g.q_coords[node.dim] // node.width == g.kv_coords[node.dim] // node.width
    if isinstance(node, Grid):
        size = expand(node.size, g.canvas.ndim, "Grid", "size")
        allowed = np.ones((1, 1), dtype=bool)
        for dim, extent in enumerate(g.canvas.shape):
            cell = extent // size[dim]
            allowed = allowed & (g.q_coords[dim] % cell == g.kv_coords[dim] % cell)
        return allowed
    if isinstance(node, Strided):
        return (q - kv) % node.stride == node.offset % node.stride
    if isinstance(node, Columns):
        return kv % node.stride >= node.stride - node.width
    if isinstance(node, (Sink, Prefix)):
        return kv < node.n
    if isinstance(node, Global):
        chosen = np.asarray(node.indices)
        return np.isin(q, chosen) | np.isin(kv, chosen)
    if isinstance(node, Distance):
        gap = np.abs(g.q_coords[node.dim] - g.kv_coords[node.dim])
        return (node.lo <= gap) & (gap < node.hi)
    if isinstance(node, Segments):
        if g.segments is None:
            raise ValueError("Segments() is data dependent: pass segments=<ids [B, N]> (or a (q_ids, kv_ids) pair).")
        q_ids, kv_ids = g.segments
        if not 0 <= g.batch < min(q_ids.shape[0], kv_ids.shape[0]):
            raise ValueError(f"segments hold {q_ids.shape[0]} batch rows: no row for batch={g.batch}.")
        return q_ids[g.batch][q] == kv_ids[g.batch][kv]
    if isinstance(node, Routing):
        return _routing_mask(node, g)
    if isinstance(node, Predicate):
        out = node.fn(torch.tensor(g.batch), torch.tensor(g.head), torch.from_numpy(q), torch.from_numpy(kv))
        return np.asarray(torch.as_tensor(out).to(torch.bool).cpu().numpy())
    if isinstance(node, PerHead):
        return _mask(node.patterns[g.head % len(node.patterns)], g)
    if isinstance(node, And):
        return _mask(node.left, g) & _mask(node.right, g)
    if isinstance(node, Or):
        return _mask(node.left, g) | _mask(node.right, g)
    if isinstance(node, Not):
        return ~_mask(node.inner, g)
    raise TypeError(f"reference_mask does not know the node {type(node).__name__}.")


def _segment_pair(segments, canvas: Canvas, kv_canvas: Canvas) -> tuple[np.ndarray, np.ndarray] | None:
    if segments is None:
        return None
    if isinstance(segments, (tuple, list)) and len(segments) == 2:
        q_ids, kv_ids = (np.asarray(torch.as_tensor(s).cpu()) for s in segments)
    else:
        q_ids = kv_ids = np.asarray(torch.as_tensor(segments).cpu())
    q_ids, kv_ids = np.atleast_2d(q_ids), np.atleast_2d(kv_ids)
    if q_ids.shape[-1] != canvas.size or kv_ids.shape[-1] != kv_canvas.size:
        raise ValueError(
            f"segments must be [B, N] ids with N = {canvas.size} (q) and {kv_canvas.size} (kv), "
            f"got shapes {q_ids.shape} and {kv_ids.shape}."
        )
    return q_ids, kv_ids


def _as_canvas(canvas) -> Canvas:
    return canvas if isinstance(canvas, Canvas) else Canvas(canvas)


def evaluate_pairs(
    pattern: Pattern,
    canvas: Canvas,
    kv_canvas: Canvas,
    q_tokens: np.ndarray,
    kv_tokens: np.ndarray,
    *,
    batch: int = 0,
    head: int = 0,
    segments=None,
    routing=None,
) -> np.ndarray:
    """allowed[i, j] for q token q_tokens[i] and kv token kv_tokens[j] (flat indices, no checks)."""
    q = np.asarray(q_tokens, dtype=np.int64)[:, None]
    kv = np.asarray(kv_tokens, dtype=np.int64)[None, :]
    grid = _Grid(
        q=q,
        kv=kv,
        q_coords=canvas.coords(q),
        kv_coords=kv_canvas.coords(kv),
        canvas=canvas,
        kv_canvas=kv_canvas,
        batch=batch,
        head=head,
        segments=_segment_pair(segments, canvas, kv_canvas),
        routing=None if routing is None else np.asarray(torch.as_tensor(routing).cpu()),
    )
    return np.broadcast_to(_mask(pattern, grid), (q.shape[0], kv.shape[1])).copy()


def reference_mask(
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...],
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    *,
    batch: int = 0,
    head: int = 0,
    segments=None,
    routing=None,
) -> np.ndarray:
    """The allowed set as a dense bool array [Nq, Nkv] for one (batch, head)."""
    canvas = _as_canvas(canvas)
    kv_canvas = canvas if kv_canvas is None else _as_canvas(kv_canvas)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"reference_mask needs a Pattern, got {type(pattern).__name__}.")
    check_canvas(pattern, canvas, kv_canvas)
    return evaluate_pairs(
        pattern,
        canvas,
        kv_canvas,
        np.arange(canvas.size),
        np.arange(kv_canvas.size),
        batch=batch,
        head=head,
        segments=segments,
        routing=routing,
    )


def routing_indices(q: torch.Tensor, k: torch.Tensor, node: Routing) -> torch.Tensor:
    """Top-k kv blocks per q block by mean-pooled q . k (scorer "mean_qk"): [B, H, q_blocks, topk].

    Blocks are ``node.block`` consecutive tokens (the last may be short; its mean uses the tokens it
    has). GQA: q head h scores against kv head h // (H / H_kv). Ties break towards the lower index.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2]
        blocks = -(-n // node.block)
        padded = torch.nn.functional.pad(x.double(), (0, 0, 0, blocks * node.block - n))
        sums = padded.view(*x.shape[:2], blocks, node.block, x.shape[-1]).sum(3)
        counts = torch.clamp(n - torch.arange(blocks, device=x.device) * node.block, max=node.block)
        return sums / counts[:, None].to(sums)

    scores = pooled(q) @ pooled(k).transpose(-1, -2)
    topk = min(node.topk, scores.shape[-1])
    order = torch.sort(-scores, dim=-1, stable=True).indices
    return order[..., :topk]


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...] | None = None,
    *,
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    score_mod: Callable | None = None,
    scale: float | None = None,
    segments=None,
    routing=None,
    return_lse: bool = False,
):
    """softmax(q k^T * scale + score_mod) v in float64 over the allowed set; q, k, v are [B, H, N, D].

    GQA when k/v have fewer heads (H % H_kv == 0). Fully masked rows give output 0 and lse -inf.
    ``score_mod(score, b, h, q_idx, kv_idx)`` is flex-style and is called on broadcast index tensors.
    Routing nodes without ``routing`` indices are scored from q and k (``routing_indices``).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got {getattr(t, 'shape', type(t))}.")
    batch, heads, n_q, dim = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != batch or k.shape[-1] != dim:
        raise ValueError(
            f"k and v must be [B, H_kv, N_kv, D] matching q {tuple(q.shape)}, got {tuple(k.shape)}, {tuple(v.shape)}."
        )
    if heads % kv_heads:
        raise ValueError(f"Key/value heads must evenly divide query heads, got heads_q={heads}, heads_kv={kv_heads}.")
    canvas = Canvas(n_q) if canvas is None else canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    if kv_canvas is None:
        kv_canvas = canvas if n_kv == n_q else Canvas(n_kv)
    kv_canvas = kv_canvas if isinstance(kv_canvas, Canvas) else Canvas(kv_canvas)
    if canvas.size != n_q or kv_canvas.size != n_kv:
        raise ValueError(
            f"canvas {canvas.shape} / kv canvas {kv_canvas.shape} must hold N_q={n_q} and N_kv={n_kv} tokens."
        )
    scale = dim**-0.5 if scale is None else scale
    routings = {x for x in pattern.walk() if isinstance(x, Routing)}
    if len(routings) > 1:
        raise ValueError(f"{pattern} has {len(routings)} different Routing nodes; one per pattern is supported.")
    if routing is None and routings:
        routing = routing_indices(q, k, routings.pop())

    group = heads // kv_heads
    k64 = k.double().repeat_interleave(group, dim=1)
    v64 = v.double().repeat_interleave(group, dim=1)
    scores = (q.double() @ k64.transpose(-1, -2)) * scale
    if score_mod is not None:
        b_idx = torch.arange(batch, device=q.device).view(-1, 1, 1, 1)
        h_idx = torch.arange(heads, device=q.device).view(1, -1, 1, 1)
        q_idx = torch.arange(n_q, device=q.device).view(1, 1, -1, 1)
        kv_idx = torch.arange(n_kv, device=q.device).view(1, 1, 1, -1)
        scores = torch.broadcast_to(score_mod(scores, b_idx, h_idx, q_idx, kv_idx), scores.shape).double()
    allowed = torch.empty(batch, heads, n_q, n_kv, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            allowed[b, h] = torch.from_numpy(
                reference_mask(pattern, canvas, kv_canvas, batch=b, head=h, segments=segments, routing=routing)
            )
    allowed = allowed.to(q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - safe_lse[..., None])
    out = _attend(probs, v64, allowed)
    return (out, lse) if return_lse else out


def _attend(probs: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """probs @ v where a non-finite v row reaches only the rows allowed to attend to it.

    A dense product would multiply it by the 0 of every other row (0 * NaN = NaN, 0 * inf = NaN) and
    spread it everywhere. So rows of v holding NaN/inf are left out of the product and added back only on
    allowed (q, kv) pairs, through a where on v (not on the product) so that gradients stay finite too.
    """
    bad = ~torch.isfinite(v).all(-1)  # [B, H, N_kv]
    out = probs @ torch.where(bad[..., None], 0.0, v)
    if bool(bad.any()):
        b, h, j = bad.nonzero(as_tuple=True)
        reach = allowed[b, h, :, j][..., None]  # [M, N_q, 1]: rows allowed to attend to kv row j
        values = torch.where(reach, v[b, h, j][:, None, :], 0.0)  # [M, N_q, D]
        out = out.index_put((b, h), probs[b, h, :, j][..., None] * values, accumulate=True)
    return out
