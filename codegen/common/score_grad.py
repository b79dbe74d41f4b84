"""d score_mod / d score as an expression: the chain-rule factor the backward kernels multiply dS by;
and d score_mod / d (a load from a captured tensor), the factor of that tensor's gradient.

Forward-mode differentiation over the ``Expr`` DAG (``maskir.codegen.common.expr``), one rule per float
op; int and bool nodes (indices, comparisons, loads of int tensors) do not depend on ``score``. Non-smooth
ops take one side's derivative at the kink: ``abs`` uses +1 at 0, ``min``/``max`` the first argument on
ties, as torch's autograd does for abs (sign(0) = 0 there; the difference is a measure-zero set).
"""

from __future__ import annotations

import math

from maskir.codegen.common import expr as ops
from maskir.codegen.common.expr import Expr, topo

Grad = Expr | None
"""A derivative; None is the zero derivative (kept symbolic so that no ``x * 0.0`` reaches the kernel)."""


def _plus(a: Grad, b: Grad) -> Grad:
    return b if a is None else a if b is None else a + b


def _times(g: Grad, factor: Expr | float) -> Grad:
    return None if g is None else g * factor


def _negated(g: Grad) -> Grad:
    return None if g is None else -g


def _chain(node: Expr, args: tuple[Expr, ...], d: list[Grad]) -> Grad:
    """The derivative of one float node from its arguments' derivatives ``d``."""
    op = node.op
    if op == "add":
        return _plus(d[0], d[1])
    if op == "sub":
        return _plus(d[0], _negated(d[1]))
    if op == "mul":
        return _plus(_times(d[0], args[1]), _times(d[1], args[0]))
    if op == "truediv":
        return _plus(_times(d[0], 1.0 / args[1]), _times(d[1], -args[0] / (args[1] * args[1])))
    if op == "neg":
        return _negated(d[0])
    if op in ("abs", "min", "max", "where"):
        if op == "abs":
            condition, first, second = args[0] >= 0, d[0], _negated(d[0])
        elif op == "where":
            condition, first, second = args[0], d[1], d[2]
        else:
            condition = args[0] <= args[1] if op == "min" else args[0] >= args[1]
            first, second = d[0], d[1]
        zero = ops.const(0.0)
        return ops.where(condition, zero if first is None else first, zero if second is None else second)
    factors = {
        "exp": lambda: node,
        "exp2": lambda: node * math.log(2.0),
        "log": lambda: 1.0 / args[0],
        "tanh": lambda: 1.0 - node * node,
        "sqrt": lambda: 0.5 / node,
        "sin": lambda: ops.cos(args[0]),
        "cos": lambda: -ops.sin(args[0]),
    }
    if op in factors:
        return _times(d[0], factors[op]())
    raise TypeError(f"Cannot differentiate the float op {op!r} of a score_mod.")


def derivative(expr: Expr, wrt: Expr) -> Expr:
    """d expr / d wrt, for a float node ``wrt`` of ``expr`` (the variable ``score``, or a load from a
    tensor: every occurrence of that node counts); the constant 0.0 when expr does not depend on it."""
    grads: dict[Expr, Grad] = {}
    for node in topo(expr):
        if node == wrt:
            grads[node] = ops.const(1.0)
        elif node.op == "var" or node.dtype != "float" or node.op in ("const", "load", "to_float"):
            grads[node] = None
        else:
            arg_grads = [grads[a] for a in node.args]
            grads[node] = None if all(g is None for g in arg_grads) else _chain(node, node.args, arg_grads)
    return grads[expr] if grads[expr] is not None else ops.const(0.0)


def score_derivative(expr: Expr) -> Expr:
    """d expr / d score (a float Expr; the constant 0.0 when expr does not read score)."""
    return derivative(expr, ops.var("score"))
