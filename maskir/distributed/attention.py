"""Context-parallel attention on a rank's local tokens, and moving whole tensors in and out of shard order.

``attention`` on rank r (q [B, H, n_q(r), D] in ``token_indices(r)`` order, k/v [B, H_kv, n_kv(r), D] in
``kv_token_indices(r)`` order) fetches, with one all_to_all, the k/v rows its sub-plan lists and other
ranks hold, and runs the sub-plan through the runtime's kernels on compact buffers
(``maskir.distributed.compact``: the predicate and score_mod still see original token indices):

- kernels whose backward reads the given out and lse (Triton, TVM): the exchange overlaps compute
  (``maskir.distributed.overlap``): the local part (r's q against its own k/v rows) runs while the rows
  travel, then the remote part, merged by log-sum-exp; the backward likewise, dK/dV of fetched rows going
  back while the local part's backward runs;
- the others (reference, flex; or a score_mod reading a tensor that needs a gradient): the exchange
  (``FetchRows``), then one compact problem over r's own and the fetched rows.

Either way dQ stays local and dK/dV of fetched rows go back to their owners, summed there in source-rank
order. Memory per rank is O(n_q(r) + n_kv(r) + rows fetched): no tensor is canvas-sized; the traffic and
the computed tiles are only what r's tiles need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from maskir.codegen.backend import get as get_backend
from maskir.distributed.compact import compact_problem, compact_score_mod
from maskir.distributed.exchange import FetchRows, gather_rows, kv_of_rows, resolve_group, token_rows
from maskir.distributed.overlap import Exchange, OverlappedAttention
from maskir.distributed.shard import ContextParallelPlan
from maskir.planner import Plan
from maskir.runtime import CompiledAttention
from maskir.runtime import compile as compile_attention
from maskir.runtime.backends import recomputes_forward

_COMPILED: weakref.WeakKeyDictionary[ContextParallelPlan, dict[tuple, tuple]] = weakref.WeakKeyDictionary()
"""Per context-parallel plan: (segment ids digest, compiled compact problem) of each (rank, k/v rows, heads,
kv heads, head dim, dtype, device, backend, score_mod) it ran, freed with the plan."""


def _rank_and_size(cp_plan: ContextParallelPlan, group) -> int:
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if size != cp_plan.world_size:
        raise ValueError(
            f"cp_plan was sharded for world_size={cp_plan.world_size}, but the group has {size} ranks: "
            f"shard(..., world_size={size}) or pass the matching group."
        )
    return rank


def _for_heads(plan: Plan, heads: int) -> Plan:
    """``plan`` for ``heads`` heads: itself, or, when every head shares one table, that table for all."""
    if heads == plan.heads:
        return plan
    if any(len(part.tables) != 1 for part in plan.parts):
        raise ValueError(
            f"{plan.pattern} gives heads different tables and cp_plan was sharded for {plan.heads} heads, but q has "
            f"{heads}: shard(..., heads={heads})."
        )
    parts = tuple(
        dataclasses.replace(part, head_table=np.zeros(heads, dtype=part.head_table.dtype)) for part in plan.parts
    )
    return dataclasses.replace(plan, heads=heads, parts=parts)


def _kv_tokens(cp_plan: ContextParallelPlan, rank: int, keys: str) -> np.ndarray:
    """The original k/v token of each compact k/v row of ``keys``: "local" (r's own rows), "remote" (the rows
    r fetches, source by source) or "all" (both, in that order)."""
    own, fetched = cp_plan.kv_tokens[rank], np.concatenate([np.zeros(0, dtype=np.int64), *cp_plan.received[rank]])
    return {"local": own, "remote": fetched, "all": np.concatenate([own, fetched])}[keys]


def _compiled(
    cp_plan: ContextParallelPlan, rank: int, keys: str, q, k, score_mod, backend: str, segments
) -> CompiledAttention | None:
    """The runtime's kernels for rank ``rank``'s sub-plan on compact rows (``compact_problem``): its q tokens
    by the k/v rows of ``keys`` (``_kv_tokens``); None when its tiles list none of them. Memoised per
    (rank, keys, shapes, backend, score_mod) and segment ids (the latest per key, for a plan sharded
    without ids)."""
    ids = cp_plan.segments if cp_plan.segments is not None else segments
    digest = None if ids is None else hashlib.sha1(ids.detach().cpu().numpy().tobytes()).hexdigest()
    key = (rank, keys, q.shape[1], k.shape[1], q.shape[3], q.dtype, q.device.type, backend, score_mod)
    memo = _COMPILED.setdefault(cp_plan, {})
    if key not in memo or memo[key][0] != digest:
        sub = _for_heads(cp_plan.sub_plans[rank], q.shape[1])
        ids = None if ids is None else ids.detach().cpu()
        problem = compact_problem(sub, cp_plan.q_tokens[rank], _kv_tokens(cp_plan, rank, keys), ids)
        compiled = None
        if problem is not None:
            q_index, kv_index = torch.as_tensor(problem.q_tokens), torch.as_tensor(problem.kv_tokens)
            compiled = compile_attention(
                problem.plan.pattern,
                problem.plan.canvas,
                heads=q.shape[1],
                kv_heads=k.shape[1],
                head_dim=q.shape[3],
                dtype=q.dtype,
                device=q.device,
                kv_canvas=problem.plan.kv_canvas,
                score_mod=compact_score_mod(score_mod, q_index, kv_index),
                backend=backend,
                plan=problem.plan,
                quiet=True,
            )
        memo[key] = (digest, compiled)
    return memo[key][1]


def _overlaps(parts: list[CompiledAttention | None], q, k) -> bool:
    """Whether the local and remote parts can run apart (``overlap``): their kernels' backward reads the given
    out and lse, and no tensor a score_mod reads needs a gradient (the ops return none for it here)."""
    built = [c for c in parts if c is not None]
    if any(recomputes_forward(get_backend(c.backend)) for c in built):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for c in built for t in c.run_tensors(q, k)))


def _check_local(name: str, t: torch.Tensor, heads: int | None, tokens: int, rank: int, order: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, H, n_local, D], got {getattr(t, 'shape', type(t))}.")
    if t.shape[2] != tokens:
        raise ValueError(
            f"{name} on rank {rank} must hold that rank's {tokens} tokens (cp_plan.{order}({rank})) in dim 2, "
            f"got {name}.shape={tuple(t.shape)}: use maskir.distributed.scatter to shard a full tensor."
        )
    if heads is not None and t.shape[1] != heads:
        raise ValueError(f"{name} must have {heads} heads like k, got {name}.shape={tuple(t.shape)}.")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cp_plan: ContextParallelPlan,
    *,
    group=None,
    mesh_dim: str | int | None = None,
    score_mod: Callable | None = None,
    scale: float | None = None,
    segments: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """This rank's rows of ``maskir.attention(q_full, k_full, v_full, pattern, canvas)`` (see the module).

    ``group``: None (the default group), a ProcessGroup, or a DeviceMesh (``mesh_dim`` names the
    context-parallel dim of a multi-dim mesh); its size must be ``cp_plan.world_size``. ``segments``: the
    full [B, N] ids, the same on every rank. ``score_mod`` sees original token indices. ``backend`` as in
    ``maskir.attention``. Every rank of the group must call it (and its backward) in the same order.
    """
    if not isinstance(cp_plan, ContextParallelPlan):
        raise TypeError(f"cp_plan must come from maskir.distributed.shard, got {type(cp_plan).__name__}.")
    group = resolve_group(group, mesh_dim)
    rank = _rank_and_size(cp_plan, group)
    q_index, kv_index = cp_plan.token_indices(rank), cp_plan.kv_token_indices(rank)
    _check_local("q", q, None, q_index.numel(), rank, "token_indices")
    _check_local("k", k, None, kv_index.numel(), rank, "kv_token_indices")
    _check_local("v", v, k.shape[1], kv_index.numel(), rank, "kv_token_indices")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or v.shape != k.shape:
        raise ValueError(
            f"q, k, v must share batch and head dim, and v must match k: got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}."
        )
    if cp_plan.segments is not None and (
        not isinstance(segments, torch.Tensor) or not torch.equal(segments.detach().cpu(), cp_plan.segments)
    ):
        raise ValueError(
            "cp_plan was sharded for the segment ids of one batch (shard(..., segments=ids)); pass those same ids "
            "as segments=, or shard again for these."
        )

    send = tuple(torch.as_tensor(p, dtype=torch.long) for p in cp_plan.send_positions(rank))
    received = cp_plan.received[rank]
    if backend == "auto" or not recomputes_forward(get_backend(backend)):  # else no part compiles in vain
        parts = [_compiled(cp_plan, rank, keys, q, k, score_mod, backend, segments) for keys in ("local", "remote")]
        if _overlaps(parts, q, k):
            exchange = Exchange(send, tuple(int(t.size) for t in received), group)
            scale = q.shape[3] ** -0.5 if scale is None else float(scale)
            return OverlappedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), exchange, *parts, scale)

    # fetch, then one compact problem over own and fetched rows
    local_rows = token_rows(k, v)
    fetched = FetchRows.apply(local_rows, list(send), [int(t.size) for t in received], group)
    kv_rows = torch.cat([local_rows, fetched])
    compiled = _compiled(cp_plan, rank, "all", q, k, score_mod, backend, segments)
    if compiled is None:  # no q tiles, or none lists a key: keep the graph joined so the backward exchange runs
        return 0 * q + 0 * kv_rows.sum()
    return compiled(q, *kv_of_rows(kv_rows, k), scale=scale)


def scatter(
    full: torch.Tensor, cp_plan: ContextParallelPlan, rank: int, *, kv: bool = False, dim: int = 2
) -> torch.Tensor:
    """Rank ``rank``'s rows of a whole tensor (tokens along ``dim``), in its order: q tokens, or k/v tokens
    with ``kv=True``."""
    index = cp_plan.kv_token_indices(rank) if kv else cp_plan.token_indices(rank)
    expected = cp_plan.plan.kv_canvas.size if kv else cp_plan.plan.canvas.size
    if full.shape[dim] != expected:
        raise ValueError(
            f"full must hold all {expected} {'k/v' if kv else 'q'} tokens along dim {dim}, got shape {tuple(full.shape)}."
        )
    return full.index_select(dim, index.to(full.device))


def gather(
    local: torch.Tensor,
    cp_plan: ContextParallelPlan,
    group=None,
    *,
    mesh_dim: str | int | None = None,
    kv: bool = False,
    dim: int = 2,
) -> torch.Tensor:
    """The whole tensor from every rank's ``local`` rows (tokens along ``dim``, in shard order), on every
    rank: the inverse of ``scatter``. ``group`` as in ``attention``. Not differentiable."""
    group = resolve_group(group, mesh_dim)
    rank = _rank_and_size(cp_plan, group)
    indices = [cp_plan.kv_token_indices(r) if kv else cp_plan.token_indices(r) for r in range(cp_plan.world_size)]
    if local.shape[dim] != indices[rank].numel():
        raise ValueError(
            f"local on rank {rank} must hold its {indices[rank].numel()} tokens along dim {dim}, got {tuple(local.shape)}."
        )
    rows = local.detach().movedim(dim, 0)
    pieces = gather_rows(rows, [i.numel() for i in indices], group)
    whole = rows.new_empty((sum(i.numel() for i in indices), *rows.shape[1:]))
    whole[torch.cat(indices).to(local.device)] = torch.cat(pieces)
    return whole.movedim(0, dim)
