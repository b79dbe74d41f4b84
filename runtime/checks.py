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


INT32 = torch.iinfo(torch.int32)
NARROW_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32)
"""Integer dtypes whose every value is an int32: cast as they are."""


def is_integer_tensor(value) -> bool:
    """A torch tensor of an integer dtype (bool excluded), signed or unsigned, any width."""
    return (
        isinstance(value, torch.Tensor)
        and not value.dtype.is_floating_point
        and not value.dtype.is_complex
        and (value.dtype != torch.bool)
    )


def integer_range(values: torch.Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor as exact Python ints, for every integer dtype (uint64
    included, which has no aminmax); one synchronisation with the device."""
    if values.dtype == torch.uint64:
        ordered = values.flatten().sort().values
        return int(ordered[0].item()), int(ordered[-1].item())
    low, high = torch.aminmax(values.to(torch.int64) if values.dtype not in NARROW_INTS else values)
    return int(low), int(high)


def check_segments(
    segments, batch: int, n_q: int, n_kv: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids as int32 (q_ids [B, Nq], kv_ids [B, Nkv]), never narrowed: same id <=> same int32.

    Forms: one integer tensor [B, N] (q and kv share it; needs Nq == Nkv) or a tuple of two, (q_ids
    [B, Nq], kv_ids [B, Nkv]); any integer dtype. Ids that all fit int32 are cast as they are; wider
    ones (int64, uint32, uint64 values beyond int32) are renumbered by rank over q and kv together,
    which keeps equality and order exactly (a sort, only then). int8/uint8/int16/int32 need no check;
    wider dtypes read the ids' range once (one synchronisation). Inside torch.compile the range is a
    run-time assertion instead (ids beyond int32 fail there rather than being renumbered)."""
    if isinstance(segments, torch.Tensor):
        if n_q != n_kv:
            raise ValueError(
                f"segments: one [B, N] tensor serves q and kv only when Nq == Nkv, got Nq={n_q}, Nkv={n_kv}; "
                "pass a tuple (q_ids [B, Nq], kv_ids [B, Nkv])."
            )
        pair = (segments, segments)
    elif isinstance(segments, tuple) and len(segments) == 2:
        pair = segments
    else:
        described = f"a {len(segments)}-tuple" if isinstance(segments, tuple) else type(segments).__name__
        raise TypeError(
            f"segments must be an integer tensor [B, N] or a tuple of two, (q_ids [B, Nq], kv_ids [B, Nkv]); got "
            f"{described}. Convert a list with torch.tensor(ids)."
        )
    for side, ids, n in (("q", pair[0], n_q), ("kv", pair[1], n_kv)):
        if not is_integer_tensor(ids):
            raise TypeError(
                f"segments ({side}) must be an integer tensor [B, N], got {getattr(ids, 'dtype', type(ids).__name__)}."
            )
        if tuple(ids.shape) != (batch, n):
            raise ValueError(f"segments ({side}) must have shape [B={batch}, N={n}], got {tuple(ids.shape)}.")
        if ids.device != device:
            raise ValueError(f"segments must be on {device} like q, got {ids.device}.")
    q_ids, kv_ids = int32_ids(*pair)
    return q_ids, kv_ids


def int32_ids(*ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Integer id tensors as contiguous int32 tensors that are equal exactly where the inputs are (and in
    the same order): cast when every id fits int32, else renumbered by rank over all of them together.
    int8/uint8/int16/int32 need no check; wider dtypes read their range once (one synchronisation);
    inside torch.compile the int32 range is a run-time assertion instead of a renumbering."""
    if all(t.dtype in NARROW_INTS for t in ids):
        return tuple(t.to(torch.int32).contiguous() for t in ids)
    ranges = [integer_range(t) for t in ids if t.numel()]
    if torch.compiler.is_compiling():  # a graph cannot branch on data: assert the int32 range at run time
        for low, high in ranges:
            torch._check(low >= INT32.min, lambda: "segment ids must fit int32 under torch.compile")
            torch._check(high <= INT32.max, lambda: "segment ids must fit int32 under torch.compile")
        return tuple(t.to(torch.int32).contiguous() for t in ids)
    if all(INT32.min <= low and high <= INT32.max for low, high in ranges):
        return tuple(t.to(torch.int32).contiguous() for t in ids)
    dtypes = {t.dtype for t in ids}
    if torch.uint64 in dtypes and len(dtypes) > 1:
        raise TypeError(
            f"segments: ids of dtypes {sorted(map(str, dtypes))}; uint64 ids compare exactly only with uint64 ids: "
            "give every side the same dtype."
        )
    common = ids[0].dtype
    for t in ids[1:]:
        common = torch.promote_types(common, t.dtype)
    ranks = torch.unique(torch.cat([t.to(common).flatten() for t in ids]), sorted=True, return_inverse=True)[1]
    ranks = ranks.to(torch.int32)
    out, start = [], 0
    for t in ids:
        out.append(ranks[start : start + t.numel()].view(t.shape).contiguous())
        start += t.numel()
    return tuple(out)
