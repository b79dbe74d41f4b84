"""Run-time data of dynamic patterns: the routing block map and the named tensors kernels read."""

from __future__ import annotations

import torch

from maskir.ir import Pattern, Routing
from maskir.reference import routing_indices
from maskir.runtime.checks import integer_range, is_integer_tensor


def routing_node(pattern: Pattern) -> Routing | None:
    """The pattern's Routing node (at most one is supported), or None."""
    nodes = [node for node in pattern.walk() if isinstance(node, Routing)]
    if len({(n.block, n.topk, n.scorer) for n in nodes}) > 1:
        raise ValueError(f"{pattern} has several different Routing nodes; maskir supports one per pattern.")
    return nodes[0] if nodes else None


def check_routing_indices(indices, q: torch.Tensor, k: torch.Tensor, node: Routing) -> None:
    """TypeError/ValueError unless ``indices`` are integer kv block numbers [B, H, q_blocks, topk] in range.
    Reading the range synchronises with the device once; maskir's own scorer is not checked."""
    batch, heads, n_q = q.shape[:3]
    q_blocks, kv_blocks = -(-n_q // node.block), -(-k.shape[2] // node.block)
    if not is_integer_tensor(indices):
        raise TypeError(
            f"routing must be an integer tensor [B, H, {q_blocks}, topk], got "
            f"{getattr(indices, 'dtype', type(indices).__name__)}."
        )
    if indices.dim() != 4 or tuple(indices.shape) != (batch, heads, q_blocks, node.topk):
        raise ValueError(
            f"routing must have shape [B={batch}, H={heads}, {q_blocks}, topk={node.topk}] for {node}, got "
            f"{tuple(indices.shape)}."
        )
    if indices.numel():
        low, high = integer_range(indices)  # exact for every integer dtype: nothing wraps before the check
        if low < 0 or high >= kv_blocks:
            raise ValueError(f"routing indices must lie in [0, {kv_blocks}) for {node}, got [{low}, {high}].")


def routing_map(q: torch.Tensor, k: torch.Tensor, node: Routing, indices: torch.Tensor | None = None) -> torch.Tensor:
    """int8 block map [B, H, q_blocks, kv_blocks]: 1 where the kv block is among the q block's top-k.

    ``indices`` [B, H, q_blocks, topk] overrides the scorer (e.g. a learned router's choice) and is
    checked (``check_routing_indices``).
    """
    if indices is None:
        with torch.no_grad():
            indices = routing_indices(q.detach(), k.detach(), node)
    else:
        check_routing_indices(indices, q, k, node)
    return scatter_routing(indices, q, k, node)


def scatter_routing(indices: torch.Tensor, q: torch.Tensor, k: torch.Tensor, node: Routing) -> torch.Tensor:
    """``routing_map`` of indices already known to be valid (no check, no synchronisation)."""
    batch, heads, n_q = q.shape[:3]
    q_blocks, kv_blocks = -(-n_q // node.block), -(-k.shape[2] // node.block)
    block_map = torch.zeros(batch, heads, q_blocks, kv_blocks, dtype=torch.int8, device=q.device)
    block_map.scatter_(-1, indices.to(device=q.device, dtype=torch.int64), 1)
    return block_map
