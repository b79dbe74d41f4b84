"""The rewrite rules the expression builders apply: constant folding and algebraic identities.

``simplified(op, args, dtype, make)`` is the simplest node equal to ``op(args)`` of type ``dtype`` that the
rules below find, else the raw node ``make(op, args, dtype)``; ``make(op, args, dtype, value=None)``
builds a raw node (``expr.make``), so this module reads nodes (``op``, ``args``, ``value``, ``dtype``,
``is_const``, ``nonnegative``) and never defines one. The builders of ``expr`` check the operands' types
first; every rule here keeps the value of the expression for every (b, h, q, kv, score):

- constants fold with Python semantics (``FOLD``; float math in float64);
- identities: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``, ``x // 1``, ``x % 1`` is 0, int ``x * 0`` is 0,
  int ``x - x`` is 0, ``min(x, x)``, ``max(x, x)``, ``--x``, ``abs`` of a non-negative value;
- int constants gather (``(x + 2) - 3`` is ``x - 1``) and ``x // m // n`` is ``x // (m * n)`` for m, n > 0;
- comparisons: ``x == x`` (not floats: NaN), a non-negative int against a constant <= 0, a bool against a
  bool constant; logic: ``True & x``, ``False | x``, ``x & x``, ``~~x``, ``~(a < b)`` is ``a >= b`` on ints;
- ``where`` with a constant condition, equal branches or bool constant branches; ``to_float`` of a float.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

Make = Callable[..., Any]
"""``make(op, args, dtype, value=None)``: a raw node, no rule applied."""


def _truncated_quotient(a: int, b: int) -> int:
    """a / b rounded toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


FOLD: dict[str, Callable] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": lambda a, b: float(np.float64(a) / np.float64(b)),
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "tdiv": lambda a, b: _truncated_quotient(a, b),
    "trem": lambda a, b: a - b * _truncated_quotient(a, b),
    "min": min,
    "max": max,
    "neg": operator.neg,
    "abs": abs,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
    "and": operator.and_,
    "or": operator.or_,
    "not": operator.not_,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "to_float": float,
}
"""Python semantics of each op on constants (the float math in float64)."""

FLIP = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}
MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def constant(value: Any, dtype: str, make: Make):
    """The constant ``value`` as a node of ``dtype``."""
    return make("const", (), dtype, {"bool": bool, "int": int, "float": float}[dtype](value))


def _is(x, value: Any) -> bool:
    """x is the constant ``value`` (0 matches 0 and 0.0, not False)."""
    return x.is_const and x.dtype != "bool" and x.value == value


def fold(op: str, args: tuple, dtype: str, make: Make):
    """op(args) as a constant when every argument is one, else None."""
    if not all(a.is_const for a in args):
        return None
    with np.errstate(all="ignore"):
        value = FOLD[op](*(a.value for a in args))
    return constant(value, dtype, make)


def split_offset(x) -> tuple[Any, int]:
    """An int x as (base, c) with x = base + c and c a constant (0 when x has no constant term)."""
    if x.op in ("add", "sub") and x.dtype == "int" and x.args[1].is_const:
        return x.args[0], x.args[1].value if x.op == "add" else -x.args[1].value
    return x, 0


def plus_constant(x, c: int, make: Make):
    """x + c on ints with constants gathered: (y + 2) - 3 is y - 1."""
    base, offset = split_offset(x)
    total = offset + c
    if total == 0:
        return base
    if total > 0:
        return make("add", (base, constant(total, "int", make)), "int")
    return make("sub", (base, constant(-total, "int", make)), "int")


def _add(a, b, dtype, make):
    if dtype == "int" and a.is_const != b.is_const:
        return plus_constant(b, a.value, make) if a.is_const else plus_constant(a, b.value, make)
    if _is(b, 0) and a.dtype == dtype:
        return a
    if _is(a, 0) and b.dtype == dtype:
        return b
    return None


def _sub(a, b, dtype, make):
    if dtype == "int" and b.is_const and not a.is_const:
        return plus_constant(a, -b.value, make)
    if _is(b, 0) and a.dtype == dtype:
        return a
    if a == b and a.dtype == "int":
        return constant(0, "int", make)
    return None


def _mul(a, b, dtype, make):
    for x, y in ((a, b), (b, a)):
        if _is(y, 1) and x.dtype == dtype:
            return x
        if _is(y, 0) and dtype == "int":
            return constant(0, "int", make)
    return None


def _truediv(a, b, dtype, make):
    return a if _is(b, 1) else None


def _division(op: str):
    def rule(a, b, dtype, make):
        if _is(b, 1):
            return a if op in ("floordiv", "tdiv") else constant(0, "int", make)
        if (
            op == "floordiv"
            and a.op == op
            and a.args[1].is_const
            and a.args[1].value > 0
            and b.is_const
            and b.value > 0
        ):
            merged = constant(a.args[1].value * b.value, "int", make)  # floor(floor(x / m) / n) = floor(x / (m n))
            return simplified("floordiv", (a.args[0], merged), "int", make)
        return None

    return rule


def _same(a, b, dtype, make):
    return a if a == b else None


def _neg(a, dtype, make):
    return a.args[0] if a.op == "neg" else None


def _abs(a, dtype, make):
    return a if a.nonnegative else None


def _sign_decides(op: str, x, c) -> bool | None:
    """x <op> c when x >= 0 is known and the constant c is <= 0 (or < 0) settles it; else None."""
    if not (x.nonnegative and x.dtype == "int" and c.is_const):
        return None
    if c.value < 0:
        return op in ("gt", "ge", "ne")
    return {"ge": True, "lt": False}.get(op) if c.value == 0 else None


def _comparison(op: str):
    def rule(a, b, dtype, make):
        if op in ("eq", "ne") and a.dtype == b.dtype == "bool":
            a, b = (b, a) if a.is_const else (a, b)
            if b.is_const:
                return a if b.value == (op == "eq") else simplified("not", (a,), "bool", make)
        folded = fold(op, (a, b), "bool", make)
        if folded is not None:
            return folded
        if a == b and a.dtype != "float":
            return constant(op in ("le", "ge", "eq"), "bool", make)
        decided = _sign_decides(op, a, b)
        if decided is None and a.is_const:
            decided = _sign_decides(MIRROR[op], b, a)
        return constant(decided, "bool", make) if decided is not None else make(op, (a, b), "bool")

    return rule


def _logic(op: str):
    absorbing = op == "or"  # True absorbs in `or`, False in `and`

    def rule(a, b, dtype, make):
        for x, y in ((a, b), (b, a)):
            if x.is_const:
                return x if x.value == absorbing else y
        return a if a == b else make(op, (a, b), "bool")

    return rule


def _not(a, dtype, make):
    if a.op == "not":
        return a.args[0]
    if a.op in FLIP and all(x.dtype == "int" for x in a.args):
        return simplified(FLIP[a.op], a.args, "bool", make)
    return None


def _where(condition, a, b, dtype, make):
    if condition.is_const:
        chosen = a if condition.value else b
        return simplified("to_float", (chosen,), "float", make) if chosen.dtype != dtype else chosen
    if a == b:
        return a
    if dtype == "bool" and a.is_const and b.is_const:
        return condition if a.value else simplified("not", (condition,), "bool", make)
    return make("where", (condition, a, b), dtype)


def _to_float(a, dtype, make):
    return a if a.dtype == "float" else None


RULES: dict[str, Callable] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "truediv": _truediv,
    **{op: _division(op) for op in ("floordiv", "mod", "tdiv", "trem")},
    "min": _same,
    "max": _same,
    "neg": _neg,
    "abs": _abs,
    **{op: _comparison(op) for op in FLIP},
    "and": _logic("and"),
    "or": _logic("or"),
    "not": _not,
    "where": _where,
    "to_float": _to_float,
}
"""op -> rule(*args, dtype, make): a simpler equal node, or None to fold (then build) the node as it is."""


def simplified(op: str, args: tuple, dtype: str, make: Make):
    """The simplest node equal to op(args) of ``dtype`` that the rules find (the raw node when none applies)."""
    rule = RULES.get(op)
    found = rule(*args, dtype, make) if rule is not None else None
    if found is None:
        found = fold(op, args, dtype, make) if op in FOLD else None
    return found if found is not None else make(op, args, dtype)
