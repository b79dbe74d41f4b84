"""Input checks for the public API: every bad argument is a TypeError/ValueError naming it."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from maskir.canvas import Canvas

DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Shapes:
    """Sizes read off q [B, H, Nq, D] and k/v [B, H_kv, Nkv, D]."""

    batch: int
    heads: int
    kv_heads: int
    n_q: int
    n_kv: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, enable_gqa: bool) -> Shapes:
    """Check q, k, v like SDPA: 4-D, same dtype (fp16/bf16/fp32) and device, matching B and D.

    The head dims a backend supports are checked when its kernels are generated (Triton: 16 to 256)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D] like SDPA, got shape {tuple(t.shape)}.")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; maskir supports {', '.join(map(str, DTYPES))}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}.")
    batch, heads, n_q, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k={tuple(k.shape)}, v={tuple(v.shape)}.")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k/v must be [B={batch}, H_kv, N_kv, D={head_dim}] to match q, got {tuple(k.shape)}.")
    kv_heads, n_kv = k.shape[1], k.shape[2]
    if kv_heads != heads and not enable_gqa:
        raise ValueError(f"q has {heads} heads but k/v have {kv_heads}: pass enable_gqa=True for GQA/MQA.")
    if heads % kv_heads:
        raise ValueError(f"Key/value heads must evenly divide query heads, got heads_q={heads}, heads_kv={kv_heads}.")
    if min(batch, heads, n_q, n_kv, head_dim) == 0:
        raise ValueError(f"q and k/v must be non-empty, got q={tuple(q.shape)}, k={tuple(k.shape)}.")
    # operator.index: torch.compile with dynamic shapes specialises (and guards) the sizes a plan depends on
    heads, kv_heads, n_q, n_kv, head_dim = map(operator.index, (heads, kv_heads, n_q, n_kv, head_dim))
    return Shapes(batch, heads, kv_heads, n_q, n_kv, head_dim, q.dtype, q.device)


def resolve_canvas(canvas, n: int, name: str) -> Canvas:
    """A Canvas holding exactly n tokens (None means the 1-D canvas of n tokens)."""
    if canvas is None:
        return Canvas(n)
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    if canvas.size != n:
        raise ValueError(f"{name} {canvas.shape} holds {canvas.size} tokens but the sequence has N={n}.")
    return canvas


def check_segments(
    segments, batch: int, n_q: int, n_kv: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids as int32 (q_ids [B, Nq], kv_ids [B, Nkv]); one [B, N] tensor serves both when Nq == Nkv."""
    pair = segments if isinstance(segments, (tuple, list)) else (segments, segments)
    out = []
    for side, ids, n in (("q", pair[0], n_q), ("kv", pair[1], n_kv)):
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(
                f"segments ({side}) must be an integer tensor [B, N], got {getattr(ids, 'dtype', type(ids))}."
            )
        if tuple(ids.shape) != (batch, n):
            raise ValueError(f"segments ({side}) must have shape [B={batch}, N={n}], got {tuple(ids.shape)}.")
        if ids.device != device:
            raise ValueError(f"segments must be on {device} like q, got {ids.device}.")
        out.append(ids.to(torch.int32).contiguous())
    return out[0], out[1]
