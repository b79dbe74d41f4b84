"""Allowed (q, kv) pairs inside boxes of tokens, in closed form: O(boxes), never O(pairs).

For patterns built with ``& | ~ -`` from nodes that bound the diagonal d = kv - q or the indices themselves
on flat token indices (``Full``, ``Causal``, ``Window``, ``Sink``, ``Prefix``, ``Distance`` on a 1-D canvas,
a ``Global`` of a few runs), the allowed pairs of a box [q0, q1] x [k0, k1] are counted by
inclusion-exclusion over the boolean structure (``a | b`` = a + b - a & b, ``~a`` = all - a) down to
conjunctions, and a conjunction is a box intersected with a diagonal band dl <= kv - q <= du, whose
pairs are F(du) - F(dl - 1) with F(t) = #{(q, kv) in the box : kv - q <= t} a sum of clamped ramps:
F(t) = C(q1) - C(q0 - 1), C(x) = T(min(max(u, 0), W)) + max(u - W, 0) * W, u = x + t - k0 + 1,
W = k1 - k0 + 1, T(n) = n (n + 1) / 2. Everything is vectorised over the boxes (int64: with t clamped
to the box, every term stays below 2**62 on canvases of up to 2**31 tokens).

``count_pairs`` returns None for a pattern outside this family; the planner then evaluates its tiles.
"""

from __future__ import annotations

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import And, Causal, Distance, Full, Global, Not, Or, Pattern, Prefix, Sink, Window

MAX_TERMS = 4096
"""Largest number of conjunctions inclusion-exclusion may expand to before giving up (then: None)."""
GLOBAL_RUNS = 4
"""A Global set of at most this many runs of consecutive indices is counted in closed form."""

_BIG = 2**62


class _OutsideFamilyError(Exception):
    pass


class _Box:
    """Per box: q in [q0, q1], kv in [k0, k1], dl <= kv - q <= du (int64 arrays, all the same shape)."""

    def __init__(self, q0, q1, k0, k1, dl, du):
        self.q0, self.q1, self.k0, self.k1, self.dl, self.du = q0, q1, k0, k1, dl, du

    def tighten(self, *, q=None, kv=None, d=None) -> _Box:
        """The box with q, kv or d further bounded to [lo, hi] (each given as (lo, hi) ints)."""
        q0, q1, k0, k1, dl, du = self.q0, self.q1, self.k0, self.k1, self.dl, self.du
        if q is not None:
            q0, q1 = np.maximum(q0, q[0]), np.minimum(q1, q[1])
        if kv is not None:
            k0, k1 = np.maximum(k0, kv[0]), np.minimum(k1, kv[1])
        if d is not None:
            dl, du = np.maximum(dl, d[0]), np.minimum(du, d[1])
        return _Box(q0, q1, k0, k1, dl, du)

    def count(self) -> np.ndarray:
        """Pairs of each box inside its band."""
        empty = (self.q1 < self.q0) | (self.k1 < self.k0) | (self.du < self.dl)
        lowest, highest = self.k0 - self.q1 - 1, self.k1 - self.q0  # F is 0 below, the whole box above
        upper = np.clip(self.du, lowest, highest)
        lower = np.clip(self.dl - 1, lowest, highest)
        return np.where(empty, 0, self._below(upper) - self._below(lower))

    def _below(self, t: np.ndarray) -> np.ndarray:
        """F(t): pairs of the box with kv - q <= t."""
        width = self.k1 - self.k0 + 1
        return self._ramp_sum(self.q1, t, width) - self._ramp_sum(self.q0 - 1, t, width)

    def _ramp_sum(self, x: np.ndarray, t: np.ndarray, width: np.ndarray) -> np.ndarray:
        """C(x) = sum over q <= x of clamp(q + t - k0 + 1, 0, width)."""
        u = x + t - self.k0 + 1
        ramp = np.clip(u, 0, width)
        return ramp * (ramp + 1) // 2 + np.maximum(u - width, 0) * width


class _Either(Pattern):
    """An OR of leaf alternatives, made while counting (never by users)."""

    def __init__(self, alternatives: list[dict]):
        self.alternatives = alternatives


def _leaf(node: Pattern, canvas: Canvas, kv_canvas: Canvas) -> list[dict]:
    """The node as alternatives (ORed), each a dict of bounds on q, kv or d = kv - q (ANDed);
    _OutsideFamilyError for a node outside the family."""
    if isinstance(node, _Either):
        return node.alternatives
    if isinstance(node, Full):
        return [{}]
    flat = canvas.ndim == 1 and kv_canvas.ndim == 1
    if isinstance(node, Causal) and (node.dim is None or flat):
        return [{"d": (-_BIG, node.offset)}]
    if isinstance(node, Window) and (node.dim is None or flat):
        return [{"d": (-node.left, node.right)}]
    if isinstance(node, (Sink, Prefix)):
        return [{"kv": (-_BIG, node.n - 1)}]
    if isinstance(node, Distance) and flat:  # lo <= |kv - q| < hi: two bands (one when lo is 0)
        if node.lo == 0:
            return [{"d": (1 - node.hi, node.hi - 1)}]
        return [{"d": (1 - node.hi, -node.lo)}, {"d": (node.lo, node.hi - 1)}]
    if isinstance(node, Global):
        runs: list[list[int]] = []
        for i in node.indices:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        if len(runs) <= GLOBAL_RUNS:
            return [{"q": tuple(run)} for run in runs] + [{"kv": tuple(run)} for run in runs]
    raise _OutsideFamilyError


def _count(box: _Box, todo: list[Pattern], canvas: Canvas, kv_canvas: Canvas, budget: list[int]) -> np.ndarray:
    """Pairs of each box satisfying every pattern in ``todo`` (inclusion-exclusion)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _OutsideFamilyError
    if not todo:
        return box.count()
    node, rest = todo[0], todo[1:]
    if isinstance(node, And):
        return _count(box, [node.left, node.right, *rest], canvas, kv_canvas, budget)
    if isinstance(node, Or):
        return (
            _count(box, [node.left, *rest], canvas, kv_canvas, budget)
            + _count(box, [node.right, *rest], canvas, kv_canvas, budget)
            - _count(box, [node.left, node.right, *rest], canvas, kv_canvas, budget)
        )
    if isinstance(node, Not):
        return _count(box, rest, canvas, kv_canvas, budget) - _count(
            box, [node.inner, *rest], canvas, kv_canvas, budget
        )
    alternatives = _leaf(node, canvas, kv_canvas)
    if len(alternatives) == 1:
        return _count(box.tighten(**alternatives[0]), rest, canvas, kv_canvas, budget)
    first, either = alternatives[0], _Either(alternatives[1:])  # alternatives may overlap: inclusion-exclusion
    return (
        _count(box.tighten(**first), rest, canvas, kv_canvas, budget)
        + _count(box, [either, *rest], canvas, kv_canvas, budget)
        - _count(box.tighten(**first), [either, *rest], canvas, kv_canvas, budget)
    )


def count_pairs(
    pattern: Pattern,
    canvas: Canvas,
    kv_canvas: Canvas,
    q_first: np.ndarray,
    q_stop: np.ndarray,
    kv_first: np.ndarray,
    kv_stop: np.ndarray,
) -> int | None:
    """Allowed pairs summed over the boxes [q_first, q_stop) x [kv_first, kv_stop) of flat token indices,
    or None when ``pattern`` is outside the closed-form family (the caller then evaluates the pairs)."""
    arrays = [np.asarray(a, dtype=np.int64) for a in (q_first, q_stop, kv_first, kv_stop)]
    size = arrays[0].shape
    box = _Box(arrays[0], arrays[1] - 1, arrays[2], arrays[3] - 1, np.full(size, -_BIG), np.full(size, _BIG))
    try:
        counts = _count(box, [pattern], canvas, kv_canvas, [MAX_TERMS])
    except _OutsideFamilyError:
        return None
    return int(counts.sum(dtype=np.int64)) if counts.size else 0
