"""The k/v exchange overlapped with compute: rank r's local part runs while the fetched rows travel.

Rank r's keys split by where they live: its own k/v rows (the **local** part) and the rows it fetches
(the **remote** part). Each is a compact problem (``maskir.distributed.compact``) over a disjoint key set,
so r's output is one softmax over both (``maskir.runtime.union``):

    lse = logsumexp(lse_local, lse_remote),   out = sum_p exp(lse_p - lse) out_p

(``maskir.runtime.union.merge``: a row one part does not allow has lse -inf there and weight 0, a row
neither allows gives 0 and lse -inf, never NaN).

Forward: start the all_to_all of the rows peers asked for (``async_op=True``), run the local kernels,
wait, run the remote kernels on the received rows, merge. Backward: both parts' kernel backwards are
handed the merged out and lse (the union's rule: dS = P (dO.v - delta) with the union's P and delta); the
remote part runs first and its dK/dV rows start back to their owners, the local part runs meanwhile,
then the returned rows are added to the local dK/dV source by source in rank order (deterministic, no
atomics); dQ = dQ_local + dQ_remote. This needs kernels whose backward reads the given out and lse
(Triton, TVM); ``attention`` runs the other backends as one compact problem after the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskir.distributed.exchange import add_returned, kv_of_rows, start_all_to_all, token_rows
from maskir.runtime import CompiledAttention
from maskir.runtime.union import merge


@dataclass(frozen=True)
class Exchange:
    """What rank r sends and receives: ``send[s]`` positions in r's k/v rows that peer s asked for, and
    ``recv_counts[s]`` rows it receives from s; ``group`` the process group."""

    send: tuple[torch.Tensor, ...]
    recv_counts: tuple[int, ...]
    group: object

    @property
    def send_counts(self) -> list[int]:
        return [int(index.numel()) for index in self.send]


def _forward(compiled: CompiledAttention, q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.maskir.attention_fwd(q, k, v, compiled.handle, scale, compiled.run_tensors(q, k))


def _backward(compiled: CompiledAttention, q, k, v, out, lse, dout, scale: float):
    tensors = compiled.run_tensors(q, k)
    dq, dk, dv, _ = torch.ops.maskir.attention_bwd(q, k, v, out, lse, dout, compiled.handle, scale, tensors, [])
    return dq, dk, dv


class OverlappedAttention(torch.autograd.Function):
    """out = rank r's attention over its own and its fetched k/v rows (see the module); ``local`` /
    ``remote``: the compiled compact problems (None: that part lists no tile)."""

    @staticmethod
    def forward(ctx, q, k, v, exchange: Exchange, local, remote, scale: float):
        rows = token_rows(k, v)
        send = torch.cat(exchange.send).to(rows.device) if exchange.send else rows.new_empty(0, dtype=torch.long)
        received, work = start_all_to_all(
            rows.index_select(0, send), exchange.send_counts, list(exchange.recv_counts), exchange.group
        )
        parts = [] if local is None else [_forward(local, q, k, v, scale)]  # while the rows travel
        work.wait()
        k_remote, v_remote = kv_of_rows(received, k)
        if remote is not None:
            parts.append(_forward(remote, q, k_remote, v_remote, scale))
        if parts:
            out, lse = merge(parts)
        else:
            out, lse = torch.zeros_like(q), q.new_full(q.shape[:3], -torch.inf, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, k_remote, v_remote, out, lse)
        ctx.exchange, ctx.local, ctx.remote, ctx.scale = exchange, local, remote, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, k_remote, v_remote, out, lse = ctx.saved_tensors
        exchange, dout = ctx.exchange, dout.contiguous()
        dq = torch.zeros_like(q, dtype=torch.float32)
        if ctx.remote is not None:
            dq_remote, dk, dv = _backward(ctx.remote, q, k_remote, v_remote, out, lse, dout, ctx.scale)
            grad_remote = token_rows(dk, dv)
        else:
            grad_remote = token_rows(torch.zeros_like(k_remote), torch.zeros_like(v_remote))
        returned, work = start_all_to_all(grad_remote, list(exchange.recv_counts), exchange.send_counts, exchange.group)
        grad_local = torch.zeros((k.shape[2], grad_remote.shape[1]), dtype=torch.float32, device=k.device)
        if ctx.local is not None:  # while the remote rows' gradients travel back
            dq_local, dk, dv = _backward(ctx.local, q, k, v, out, lse, dout, ctx.scale)
            dq += dq_local.float()
            grad_local += token_rows(dk, dv).float()
        if ctx.remote is not None:
            dq += dq_remote.float()
        work.wait()
        dk, dv = kv_of_rows(add_returned(grad_local, list(exchange.send), returned), k)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
