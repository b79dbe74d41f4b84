"""Rewrite Python-semantics integer division into the C semantics kernels have.

``floordiv``/``mod`` round toward -inf (Python); Triton, CUDA and TVM's ``truncdiv`` round toward 0. They
agree when the dividend is >= 0 and the divisor > 0, which ``Expr.nonnegative`` proves for almost every
lowered mask (coordinates, block ids). The others become truncating ops plus a correction:

    r = trem(a, b);  wrong = (r != 0) & ((r < 0) != (b < 0))     # r and b of different signs
    mod(a, b)      = where(wrong, r + b, r)
    floordiv(a, b) = where(wrong, tdiv(a, b) - 1, tdiv(a, b))

With a positive constant divisor ``wrong`` is just ``r < 0``.
"""

from __future__ import annotations

from maskir.codegen.common.expr import Expr, ne, rebuild, tdiv, topo, trem, where


def _sign_differs(r: Expr, divisor: Expr) -> Expr:
    if divisor.is_const and divisor.value > 0:
        return r < 0
    return ne(r, 0) & ne(r < 0, divisor < 0)


def _floor_semantics(op: str, dividend: Expr, divisor: Expr) -> Expr:
    r = trem(dividend, divisor)
    wrong = _sign_differs(r, divisor)
    if op == "mod":
        return where(wrong, r + divisor, r)
    quotient = tdiv(dividend, divisor)
    return where(wrong, quotient - 1, quotient)


def lower_division(expr: Expr) -> Expr:
    """An equal expression whose floordiv/mod nodes all have a non-negative dividend and divisor."""
    done: dict[Expr, Expr] = {}
    for node in topo(expr):
        args = tuple(done[a] for a in node.args)
        if node.op in ("floordiv", "mod") and not (args[0].nonnegative and args[1].nonnegative):
            done[node] = _floor_semantics(node.op, *args)
        else:
            done[node] = rebuild(node, args)
    return done[expr]
