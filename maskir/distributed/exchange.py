"""Moving token rows between ranks with torch.distributed collectives (gloo on CPU, NCCL on GPU).

``FetchRows`` is one ``all_to_all_single``: rank r sends each peer s the rows of its local tensor that s
asked for, and receives, source by source in rank order, the rows it asked for. Its backward is the same
collective reversed: the gradient of every row sent comes back to its owner, which adds the returned
partials to its own in source-rank order (unique rows per source: no atomics, the same sum every run).
``start_all_to_all`` is the same collective left in flight, for overlapping it with compute
(``maskir.distributed.overlap``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def resolve_group(group=None, mesh_dim: str | int | None = None):
    """The process group of ``group``: None (the default group), a ProcessGroup, or a DeviceMesh (its
    only dim, or ``mesh_dim`` by name or index)."""
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(group, DeviceMesh):
        if mesh_dim is None and group.ndim != 1:
            raise ValueError(
                f"group is a {group.ndim}-D DeviceMesh {group.mesh_dim_names}: pass mesh_dim=<the context-parallel dim>."
            )
        return group.get_group(mesh_dim if mesh_dim is not None else 0)
    if mesh_dim is not None:
        raise ValueError(f"mesh_dim={mesh_dim!r} needs group=<a DeviceMesh>, got {type(group).__name__}.")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be None, a ProcessGroup or a DeviceMesh, got {type(group).__name__}.")
    return group


def token_rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """k, v [B, H_kv, n, D] as token rows [n, B * H_kv * 2D] (what travels)."""
    batch, kv_heads, n, head_dim = k.shape
    return torch.cat([k, v], dim=-1).permute(2, 0, 1, 3).reshape(n, batch * kv_heads * 2 * head_dim)


def kv_of_rows(rows: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``token_rows``: contiguous k, v [B, H_kv, n, D] shaped as ``like`` but for n."""
    batch, kv_heads, _, head_dim = like.shape
    kv = rows.reshape(rows.shape[0], batch, kv_heads, 2 * head_dim).permute(1, 2, 0, 3)
    return kv[..., :head_dim].contiguous(), kv[..., head_dim:].contiguous()


def start_all_to_all(rows: torch.Tensor, send_counts: list[int], recv_counts: list[int], group):
    """Rows [sum(send_counts), C] out in rank order, rows [sum(recv_counts), C] in, source by source, with
    ``async_op=True``: (the receive buffer, the work); the buffer holds the rows once ``work.wait()`` returns."""
    received = rows.new_empty((sum(recv_counts), rows.shape[1]))
    work = dist.all_to_all_single(received, rows.contiguous(), recv_counts, send_counts, group=group, async_op=True)
    return received, work


def _all_to_all(rows: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    received, work = start_all_to_all(rows, send_counts, recv_counts, group)
    work.wait()
    return received


def add_returned(grad_local: torch.Tensor, send: list[torch.Tensor], returned: torch.Tensor) -> torch.Tensor:
    """``grad_local`` [n, C] plus the gradients of the rows it sent, peer by peer in rank order (``returned``
    holds them in that order; each peer's positions are unique: no atomics, the same sum every run)."""
    for index, part in zip(send, returned.split([int(i.numel()) for i in send])):
        if index.numel():
            grad_local.index_add_(0, index.to(grad_local.device), part.to(grad_local.dtype))
    return grad_local


class FetchRows(torch.autograd.Function):
    """received = rows of the peers' ``local`` tensors this rank asked for (see the module docstring).

    ``send``: per peer, LongTensor positions in ``local`` [n, C] that the peer asked for (empty for self);
    ``recv_counts``: per peer, how many rows come from it."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, send: list[torch.Tensor], recv_counts: list[int], group):
        send_counts = [int(index.numel()) for index in send]
        index = torch.cat(send).to(local.device) if send else local.new_empty(0, dtype=torch.long)
        ctx.send, ctx.recv_counts, ctx.send_counts, ctx.group = send, recv_counts, send_counts, group
        ctx.local_rows = local.shape[0]
        return _all_to_all(local.index_select(0, index), send_counts, recv_counts, group)

    @staticmethod
    def backward(ctx, grad_received: torch.Tensor):
        returned = _all_to_all(grad_received, ctx.recv_counts, ctx.send_counts, ctx.group)
        grad_local = grad_received.new_zeros((ctx.local_rows, grad_received.shape[1]))
        return add_returned(grad_local, ctx.send, returned), None, None, None


def gather_rows(local: torch.Tensor, counts: list[int], group) -> list[torch.Tensor]:
    """Every rank's ``local`` [n_r, ...] (``counts[r]`` rows each), in rank order, by one all_gather of
    rows padded to the longest (the padding travels only, it is dropped here)."""
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return [piece[:count] for piece, count in zip(pieces, counts)]
