"""Context parallelism on torch.distributed: plan-balanced sharding, exchange of only the needed k/v rows.

``shard(pattern, canvas, world_size)`` -> ``ContextParallelPlan``; ``attention(q, k, v, cp_plan)`` on a
rank's local tokens (differentiable; compact buffers, O(N / world + rows fetched) per rank; the exchange
overlapped with the local part's compute where the kernels allow); ``scatter`` / ``gather`` move whole
tensors in and out of shard order.
"""

from maskir.distributed.attention import attention, gather, scatter
from maskir.distributed.shard import ContextParallelPlan, shard

__all__ = ["ContextParallelPlan", "attention", "gather", "scatter", "shard"]
