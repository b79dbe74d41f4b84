"""Run-time data of dynamic patterns: the routing scorer, the routing block map and its checks.

``score_routing`` is the production scorer: it runs in the inputs' dtype on their device (no float64, no
copy to the host); ``maskir.reference.routing_indices`` is its float64 oracle.
"""

from __future__ import annotations

import torch

from maskir.ir import Pattern, Routing
from maskir.runtime.checks import integer_range, is_integer_tensor


def routing_node(pattern: Pattern) -> Routing | None:
    """The pattern's Routing node (at most one is supported), or None."""
    nodes = [node for node in pattern.walk() if isinstance(node, Routing)]
    if len({(n.block, n.topk, n.scorer) for n in nodes}) > 1:
        raise ValueError(f"{pattern} has several different Routing nodes; maskir supports one per pattern.")
    return nodes[0] if nodes else None


def score_routing(q: torch.Tensor, k: torch.Tensor, node: Routing) -> torch.Tensor:
    """Top-k kv blocks per q block by mean-pooled q . k (scorer "mean_qk"): int64 [B, H, q_blocks, topk].

    score[b, h, i, j] = mean(q[b, h, block i]) . mean(k[b, h // (H / H_kv), block j]); blocks are
    ``node.block`` consecutive tokens (the last may be short: its mean is over the tokens it has). Means
    and scores are in q's dtype on q's device (torch accumulates the sums in float32 for 16-bit types);
    ties break towards the lower block index. Equals ``maskir.reference.routing_indices`` up to the
    rounding of the dtype (exactly for float64 inputs).
    """
    with torch.no_grad():
        heads, kv_heads = q.shape[1], k.shape[1]
        pooled_k = _block_means(k.detach(), node.block).repeat_interleave(heads // kv_heads, dim=1)
        scores = _block_means(q.detach(), node.block) @ pooled_k.transpose(-1, -2)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        return order[..., : min(node.topk, scores.shape[-1])]


def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, blocks, D]: the mean of each ``block`` consecutive tokens of x [B, H, N, D] (last block short)."""
    full = x.shape[2] // block * block
    means = x[:, :, :full].unflatten(2, (full // block, block)).mean(3)
    if full == x.shape[2]:
        return means
    return torch.cat((means, x[:, :, full:].mean(2, keepdim=True)), dim=2)


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
        indices = score_routing(q, k, node)
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
