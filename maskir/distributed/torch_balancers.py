"""torch's context-parallel load balancers (``_HeadTailLoadBalancer``, ``_PTRRLoadBalancer``), run from
torch's own code on the CPU, as token owners.

Each balancer returns a permutation of the N tokens; torch cuts it into ``ranks`` equal chunks, chunk r to
rank r. PTRR balances the non-empty 128 x 128 blocks of a ``BlockMask``, built here from a token-order plan
with 128-token tiles. torch refuses sizes it cannot split: HeadTail needs 2 * ranks to divide N, PTRR ranks
to divide the 128-blocks (None then).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from maskir.planner import Plan, plan

FLEX_BLOCK = 128
"""torch's BlockMask granularity, which PTRR balances."""


@functools.lru_cache(maxsize=4)
def token_plan(pattern, canvas, *, heads: int = 1) -> Plan:
    """The token-order plan with FLEX_BLOCK tiles that PTRR's block mask is built from. Memoised (the last
    few): ``shard`` and ``compare`` both need it, and a ``Predicate`` pattern plans by exact counting."""
    return plan(pattern, canvas, heads=heads, layout="identity", block_q=FLEX_BLOCK, block_kv=FLEX_BLOCK)


def block_mask(token_plan: Plan):
    """A flex ``BlockMask`` [1, 1, N, N] of a token-order plan (head 0), from its CSR tables."""
    from torch.nn.attention.flex_attention import BlockMask

    part = token_plan.parts[0]
    table = part.tables[part.head_table[0]]
    n_rows, n_cols = part.n_q_tiles, part.n_kv_tiles
    counts, full = table.kv_count.astype(np.int64), table.kv_full.astype(np.int64)
    indices = {"full": np.zeros((n_rows, n_cols), np.int32), "partial": np.zeros((n_rows, n_cols), np.int32)}
    for row in range(n_rows):
        entries = table.kv_index[table.kv_start[row] : table.kv_start[row + 1]]
        indices["full"][row, : full[row]] = entries[: full[row]]
        indices["partial"][row, : counts[row] - full[row]] = entries[full[row] :]
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.int32)[None, None]  # noqa: E731
    return BlockMask.from_kv_blocks(
        as_tensor(counts - full),
        as_tensor(indices["partial"]),
        as_tensor(full),
        as_tensor(indices["full"]),
        BLOCK_SIZE=FLEX_BLOCK,
    )


def _owner(order: torch.Tensor, ranks: int) -> np.ndarray:
    """int64 [N]: the rank of every token when ``order`` is cut in ``ranks`` equal chunks."""
    order = order.reshape(-1).numpy()
    owner = np.empty(order.size, dtype=np.int64)
    owner[order] = np.arange(order.size) * ranks // order.size
    return owner


def head_tail_owner(size: int, ranks: int) -> np.ndarray | None:
    """Token owners under torch's HeadTail balancer (None: 2 * ranks does not divide ``size``)."""
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer

    if size % (2 * ranks):
        return None
    return _owner(_HeadTailLoadBalancer(size, ranks, "cpu")._generate_indices()[0], ranks)


def ptrr_owner(token_plan: Plan, ranks: int) -> np.ndarray | None:
    """Token owners under torch's PTRR balancer on ``token_plan``'s block mask (None: torch refuses)."""
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import _PTRRLoadBalancer

    if token_plan.canvas.size % FLEX_BLOCK or token_plan.parts[0].n_q_tiles % ranks:
        return None
    return _owner(_PTRRLoadBalancer(block_mask(token_plan), ranks)._generate_indices()[0], ranks)
