"""Trace a flex-style ``score_mod(score, b, h, q_idx, kv_idx)`` into a float Expr over score, b, h, q, kv.

The function is called once with symbolic arguments (see :mod:`maskir.codegen.common.trace`); the
kernel evaluates the expression per (q, kv) pair instead of calling Python. Captured tensors it indexes
(an ALiBi slope per head ``slopes[h]``, a bias table ``bias[q_idx, kv_idx]``) become loads from
tensors named ``capture_0``, ``capture_1``, ...: ``expr.tensors()`` lists them with the tensors
themselves as ``TensorRef.data``, which the runtime passes to the kernel at call time.
"""

from __future__ import annotations

from collections.abc import Callable

from maskir.codegen.common.expr import Expr, to_float
from maskir.codegen.common.trace import Captures, trace

SCORE_MOD_ARGS = ("score", "b", "h", "q", "kv")
"""The variables bound to score_mod's parameters (score, b, h, q_idx, kv_idx), in order."""


def trace_score_mod(fn: Callable) -> Expr:
    """The float expression ``fn(score, b, h, q_idx, kv_idx)`` computes, captured tensors named ``capture_0``,
    ``capture_1``, ... Raises TypeError naming the operation that cannot be traced."""
    expr = trace(fn, SCORE_MOD_ARGS, Captures("capture"), "score_mod")
    if expr.dtype == "bool":
        raise TypeError(f"score_mod must return the new score (a number), got a bool expression: {expr}.")
    return to_float(expr)
