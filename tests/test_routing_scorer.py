"""maskir's routing scorer (``maskir.runtime.routing.score_routing``) against its float64 oracle
(``maskir.reference.routing_indices``): the same choice, computed in the inputs' dtype."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from maskir import Routing
from maskir.reference import routing_indices
from maskir.runtime.routing import score_routing


def _qkv(n: int, heads: int, heads_kv: int, dim: int = 8, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(2, heads_kv, n, dim, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype)


def _separated(n: int, block: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k whose block scores are spread far past the dtype's rounding: kv block j's tokens lie along q's
    direction at height rank[j] (a random permutation), so the oracle's order is unambiguous."""
    gen = torch.Generator().manual_seed(3)
    blocks = -(-n // block)
    rank = torch.randperm(blocks, generator=gen).double()
    heights = rank.repeat_interleave(block)[:n]
    q = torch.ones(1, 2, n, 4, dtype=torch.float64)
    k = heights.view(1, 1, n, 1).expand(1, 2, n, 4) + 0.01 * torch.randn(1, 2, n, 4, generator=gen).double()
    return q.to(dtype), k.to(dtype)


@pytest.mark.parametrize("n, block, topk, heads_kv", [(12, 4, 1, 2), (10, 4, 2, 2), (13, 3, 2, 1), (9, 4, 5, 2)])
def test_float64_choice_equals_the_oracle(n, block, topk, heads_kv):
    q, k = _qkv(n, 2, heads_kv, seed=n)
    node = Routing(block, topk)
    assert torch.equal(score_routing(q, k, node), routing_indices(q, k, node))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n, block", [(64, 8), (61, 8)])
def test_low_precision_choice_equals_the_oracle_when_scores_are_apart(dtype, n, block):
    q, k = _separated(n, block, dtype)
    node = Routing(block, 3)
    assert torch.equal(score_routing(q, k, node), routing_indices(q, k, node))


def test_ties_break_towards_the_lower_block():
    q, k = _qkv(12, 2, 2)
    assert (score_routing(torch.zeros_like(q), k, Routing(4, 2)) == torch.tensor([0, 1])).all()


class _Dtypes(TorchDispatchMode):
    """Records the dtype of every tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.add(t.dtype)
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_scores_are_computed_in_the_inputs_dtype(dtype):
    """No float64 (nor any other float dtype) appears: the scorer never upcasts the way the oracle does."""
    q, k = _qkv(13, 2, 1, dtype=dtype)
    with _Dtypes() as mode:
        chosen = score_routing(q, k, Routing(4, 2))
    assert {d for d in mode.seen if d.is_floating_point} == {dtype}
    assert chosen.dtype == torch.int64 and chosen.shape == (2, 2, 4, 2)


def test_the_oracle_does_upcast():
    """The check above can fail: the float64 oracle shows up in the same probe."""
    q, k = _qkv(13, 2, 1, dtype=torch.bfloat16)
    with _Dtypes() as mode:
        routing_indices(q, k, Routing(4, 2))
    assert torch.float64 in mode.seen


def test_gradients_do_not_flow_through_the_choice():
    q, k = (t.requires_grad_(True) for t in _qkv(8, 2, 2, dtype=torch.float32))
    assert not score_routing(q, k, Routing(4, 1)).requires_grad
