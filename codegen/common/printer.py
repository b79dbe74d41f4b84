"""Python-syntax text for expression operators, with the fewest parentheses that keep the meaning.

Shared by ``Expr.__str__`` and the backends' renderers: each node's text is built from its children's
``(text, precedence)`` pairs. Precedences follow Python's grammar (comparisons < ``|`` < ``&`` < ``+ -``
< ``* / // %`` < unary < atoms). Comparisons never chain (``a < b < c`` means something else in
Python) and ``&`` / ``|`` bind tighter than comparisons, so a comparison under ``&`` is parenthesised.
A right operand at its parent's precedence is parenthesised (``a - (b - c)``, ``a * (b // c)``), except
under the associative ``&`` and ``|``.
"""

from __future__ import annotations

COMPARE = 1
OR = 2
AND = 3
SUM = 5
PRODUCT = 6
UNARY = 7
ATOM = 9

INFIX: dict[str, tuple[str, int]] = {
    "lt": ("<", COMPARE),
    "le": ("<=", COMPARE),
    "gt": (">", COMPARE),
    "ge": (">=", COMPARE),
    "eq": ("==", COMPARE),
    "ne": ("!=", COMPARE),
    "or": ("|", OR),
    "and": ("&", AND),
    "add": ("+", SUM),
    "sub": ("-", SUM),
    "mul": ("*", PRODUCT),
    "truediv": ("/", PRODUCT),
    "floordiv": ("//", PRODUCT),
    "mod": ("%", PRODUCT),
}
"""Binary operators written infix: op -> (symbol, precedence)."""

PREFIX: dict[str, str] = {"neg": "-", "not": "~"}
"""Unary operators written prefix: op -> symbol."""

Text = tuple[str, int]
"""Rendered text of a subexpression and the precedence of its outermost operator."""


def wrap(child: Text, minimum: int) -> str:
    """The child's text, parenthesised unless its precedence is at least ``minimum``."""
    text, precedence = child
    return text if precedence >= minimum else f"({text})"


def infix(op: str, args: list[Text], symbol: str | None = None) -> Text:
    """``a <op> b`` for a binary operator in INFIX (``symbol`` overrides its spelling, same precedence)."""
    default, precedence = INFIX[op]
    left_min = precedence + 1 if precedence == COMPARE else precedence
    right_min = precedence if op in ("and", "or") else precedence + 1
    text = f"{wrap(args[0], left_min)} {symbol or default} {wrap(args[1], right_min)}"
    return text, precedence


def prefix(op: str, arg: Text) -> Text:
    """``-a`` or ``~a`` for a unary operator in PREFIX."""
    return f"{PREFIX[op]}{wrap(arg, UNARY)}", UNARY


def call(function: str, args: list[Text]) -> Text:
    """``function(a, b, ...)``: arguments need no parentheses."""
    return f"{function}({', '.join(text for text, _ in args)})", ATOM


def constant(value: bool | int | float) -> Text:
    """A Python literal; negative numbers get unary precedence; inf and nan are spelled ``float("-inf")``."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f'float("{value}")', ATOM
    text = repr(value)
    return text, UNARY if text.startswith("-") else ATOM
