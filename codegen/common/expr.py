"""An immutable expression DAG: what a mask predicate or a score_mod computes for one (b, h, q, kv).

Variables: ``b`` (batch), ``h`` (head), ``q`` and ``kv`` (original flat token indices) are ints; ``score``
(the scaled q.k of the pair, only inside a score_mod) is a float. Every node has a dtype, one of
``bool``, ``int`` (int32 in kernels) and ``float`` (float32 in kernels).

| op | meaning | types |
|---|---|---|
| const, var | a literal, a variable | |
| load(T, i0, ...) | T[i0, ...] from a named tensor (``TensorRef``); 0 outside its shape | T's dtype |
| add sub mul min max neg abs | arithmetic | int or float (int if both int) |
| truediv | a / b | float |
| floordiv mod | Python semantics: floor(a / b), a - b * floor(a / b) (sign of b) | int |
| tdiv trem | C semantics: a / b truncated toward 0, remainder with the sign of a | int |
| lt le gt ge eq ne | comparisons (eq/ne also on two bools) | bool |
| and or not | logic on bools (rendered ``& | ~``) | bool |
| where(c, a, b) | a if c else b | a's and b's |
| exp exp2 log tanh sqrt sin cos | float math (an int argument is converted first) | float |
| to_float | int or bool to float | float |

Kernels divide with C semantics; :func:`maskir.codegen.common.division.lower_division` rewrites the
floordiv/mod that may see a negative operand into tdiv/trem, so backends never guess. Arithmetic on bools
is rejected (convert with ``where``). ``==`` and ``hash`` on an ``Expr`` are structural (so expressions key
dicts, which is how renderers share common subexpressions); build an equality test with :func:`eq` or
``a.eq(b)``. This module holds the nodes and the builders' type rules; each builder then applies the
rewrite rules of :mod:`maskir.codegen.common.simplify` (constant folding, identities such as ``x + 0`` or
``~~x``, gathered int constants), so equal expressions built two ways are usually the same node.

Non-negativity (``Expr.nonnegative``) is a cheap syntactic fact: b, h, q, kv and non-negative constants
are non-negative, and it propagates through +, *, min, max, //, %, abs. It assumes q and kv are real
token indices: kernels pass -1 for padding positions, whose results are masked out anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskir.codegen.common import printer, simplify

DTYPES = ("bool", "int", "float")
VARIABLES: dict[str, str] = {"b": "int", "h": "int", "q": "int", "kv": "int", "score": "float"}
"""The free variables and their dtypes."""

Operand = Any
"""An ``Expr`` or a Python bool/int/float (numpy scalars too), converted by :func:`as_expr`."""


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A named tensor that ``load`` reads.

    ``dtype`` is what a load yields. ``shape`` has one extent per index: an index outside [0, extent)
    loads 0 (False, 0.0); ``None`` marks an index the caller keeps in range (batch, head). ``data`` is the
    tensor itself when lowering knows it (a captured bias table, a static index table); None when the
    runtime supplies it (``segments_q``, ``routing_map``). Two refs are equal when name, dtype and shape
    are equal and ``data`` is the same object.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    data: Any = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"TensorRef name must be an identifier, got {self.name!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorRef dtype must be one of {DTYPES}, got {self.dtype!r}.")
        object.__setattr__(self, "shape", tuple(self.shape))
        if any(n is not None and (not isinstance(n, int) or n < 1) for n in self.shape):
            raise ValueError(f"TensorRef shape holds positive ints or None, got {self.shape!r}.")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorRef):
            return False
        return (self.name, self.dtype, self.shape) == (other.name, other.dtype, other.shape) and self.data is other.data

    def __hash__(self) -> int:
        return hash((self.name, self.dtype, self.shape, id(self.data)))


class Expr:
    """One node: ``op``, its ``args`` (Exprs), a ``value`` (the literal of a const, the name of a var,
    the TensorRef of a load, else None) and its ``dtype``. Build nodes with the functions of this module
    or the operators (``+ - * / // % < <= > >= & | ~ abs``); never call the constructor directly."""

    __slots__ = ("op", "args", "value", "dtype", "nonnegative", "_hash")

    op: str
    args: tuple[Expr, ...]
    value: Any
    dtype: str
    nonnegative: bool

    def __init__(self, op: str, args: tuple[Expr, ...], value: Any, dtype: str, nonnegative: bool):
        for name, item in zip(self.__slots__, (op, args, value, dtype, nonnegative)):
            object.__setattr__(self, name, item)
        object.__setattr__(self, "_hash", hash((op, dtype, value, args)))

    def __setattr__(self, name: str, value: Any):
        raise AttributeError(f"Expr is immutable: cannot set {name}.")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Expr) or self._hash != other._hash:
            return False
        return (self.op, self.dtype, self.value, self.args) == (other.op, other.dtype, other.value, other.args)

    def __bool__(self):
        raise TypeError(f"An Expr has no truth value (it is known only per (q, kv) pair): {self}.")

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    def tensors(self) -> tuple[TensorRef, ...]:
        """The tensors this expression loads from, sorted by name."""
        refs: dict[str, TensorRef] = {}
        for node in topo(self):
            if node.op == "load":
                ref = refs.setdefault(node.value.name, node.value)
                if ref != node.value:
                    raise ValueError(f"Two different tensors are both named {ref.name!r}: {ref} and {node.value}.")
        return tuple(refs[name] for name in sorted(refs))

    def __str__(self) -> str:
        texts: dict[Expr, printer.Text] = {}
        for node in topo(self):
            texts[node] = format_node(node, [texts[a] for a in node.args])
        return texts[self][0]

    def __repr__(self) -> str:
        return f"Expr({self})"

    def eq(self, other: Operand) -> Expr:
        return eq(self, other)

    def ne(self, other: Operand) -> Expr:
        return ne(self, other)

    def __add__(self, other: Operand) -> Expr:
        return add(self, other)

    def __radd__(self, other: Operand) -> Expr:
        return add(other, self)

    def __sub__(self, other: Operand) -> Expr:
        return sub(self, other)

    def __rsub__(self, other: Operand) -> Expr:
        return sub(other, self)

    def __mul__(self, other: Operand) -> Expr:
        return mul(self, other)

    def __rmul__(self, other: Operand) -> Expr:
        return mul(other, self)

    def __truediv__(self, other: Operand) -> Expr:
        return truediv(self, other)

    def __rtruediv__(self, other: Operand) -> Expr:
        return truediv(other, self)

    def __floordiv__(self, other: Operand) -> Expr:
        return floordiv(self, other)

    def __rfloordiv__(self, other: Operand) -> Expr:
        return floordiv(other, self)

    def __mod__(self, other: Operand) -> Expr:
        return mod(self, other)

    def __rmod__(self, other: Operand) -> Expr:
        return mod(other, self)

    def __lt__(self, other: Operand) -> Expr:
        return lt(self, other)

    def __le__(self, other: Operand) -> Expr:
        return le(self, other)

    def __gt__(self, other: Operand) -> Expr:
        return gt(self, other)

    def __ge__(self, other: Operand) -> Expr:
        return ge(self, other)

    def __and__(self, other: Operand) -> Expr:
        return logical_and(self, other)

    def __rand__(self, other: Operand) -> Expr:
        return logical_and(other, self)

    def __or__(self, other: Operand) -> Expr:
        return logical_or(self, other)

    def __ror__(self, other: Operand) -> Expr:
        return logical_or(other, self)

    def __neg__(self) -> Expr:
        return neg(self)

    def __abs__(self) -> Expr:
        return absolute(self)

    def __invert__(self) -> Expr:
        return logical_not(self)


def topo(root: Expr) -> list[Expr]:
    """Every distinct node below ``root`` (itself included) once, children before parents, in a
    deterministic order (depth first, arguments left to right)."""
    order: list[Expr] = []
    seen: set[Expr] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((arg, False) for arg in reversed(node.args) if arg not in seen)
    return order


def numbered(root: Expr) -> list[tuple[Expr, tuple[int, ...]]]:
    """``topo(root)``, each node with the positions of its arguments in that list: evaluating it indexes a
    list and never hashes a node (torch.compile cannot hash an Expr while it traces a flex mask_mod)."""
    order = topo(root)
    position = {node: i for i, node in enumerate(order)}
    return [(node, tuple(position[arg] for arg in node.args)) for node in order]


def format_node(node: Expr, args: list[printer.Text]) -> printer.Text:
    """Python-like text of one node given its arguments' texts (``load(T, i, j)``, ``where(c, a, b)``)."""
    if node.op == "const":
        return printer.constant(node.value)
    if node.op == "var":
        return node.value, printer.ATOM
    if node.op == "load":
        return printer.call("load", [(node.value.name, printer.ATOM), *args])
    if node.op == "in_range":
        return printer.call("in_range", [*args, printer.constant(node.value)])
    if node.op in printer.INFIX:
        return printer.infix(node.op, args)
    if node.op in printer.PREFIX:
        return printer.prefix(node.op, args[0])
    return printer.call(node.op, args)


# -- construction ----------------------------------------------------------------------------------
# Each builder checks its operands' types, then ``simplify.simplified`` applies the rewrite rules.

_NONNEGATIVE_IF_ALL = {"add", "mul", "min", "floordiv", "tdiv", "trem", "to_float", "where"}


def make(op: str, args: tuple[Expr, ...], dtype: str, value: Any = None) -> Expr:
    """A raw node, no rule applied (the rules of ``simplify`` build their results with it); its
    non-negativity follows from its op and arguments."""
    if op == "const":
        nonnegative = value >= 0
    elif op == "var":
        nonnegative = value != "score"
    elif op in ("abs", "exp", "exp2", "sqrt"):
        nonnegative = True
    elif op == "mod":
        nonnegative = args[1].nonnegative
    elif op == "max":
        nonnegative = any(a.nonnegative for a in args)
    elif op in _NONNEGATIVE_IF_ALL:
        nonnegative = all(a.nonnegative for a in (args[1:] if op == "where" else args))
    else:
        nonnegative = False
    return Expr(op, args, value, dtype, bool(nonnegative))


def _simplified(op: str, args: tuple[Expr, ...], dtype: str) -> Expr:
    return simplify.simplified(op, args, dtype, make)


def const(value: bool | int | float) -> Expr:
    """A literal (Python or numpy bool, int or float)."""
    if isinstance(value, (bool, np.bool_)):
        return make("const", (), "bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return make("const", (), "int", int(value))
    if isinstance(value, (float, np.floating)):
        return make("const", (), "float", float(value))
    raise TypeError(f"An expression constant must be a bool, int or float, got {type(value).__name__}: {value!r}.")


def var(name: str) -> Expr:
    """One of the variables b, h, q, kv (ints) and score (float)."""
    if name not in VARIABLES:
        raise ValueError(f"Unknown variable {name!r}: expressions range over {tuple(VARIABLES)}.")
    return make("var", (), VARIABLES[name], name)


def as_expr(value: Operand) -> Expr:
    """An Expr as is; a Python/numpy scalar as a constant."""
    return value if isinstance(value, Expr) else const(value)


def load(ref: TensorRef, *indices: Operand) -> Expr:
    """``ref[indices]`` (one int index per dim), 0 where an index is outside ``ref.shape``."""
    idx = tuple(as_expr(i) for i in indices)
    if len(idx) != ref.ndim:
        raise ValueError(f"load from {ref.name!r} needs {ref.ndim} indices (its shape is {ref.shape}), got {len(idx)}.")
    for i in idx:
        _require(i, ("int",), f"load index of {ref.name!r}")
    return make("load", idx, ref.dtype, ref)


def _require(x: Expr, dtypes: tuple[str, ...], what: str) -> None:
    if x.dtype not in dtypes:
        raise TypeError(f"{what} takes {' or '.join(dtypes)} operands, got a {x.dtype}: {x}.")


_NUMBERS = ("int", "float")


def _numeric(op: str, *values: Operand) -> tuple[Expr, ...]:
    args = tuple(as_expr(v) for v in values)
    for a in args:
        _require(a, _NUMBERS, op)
    return args


def _join(*args: Expr) -> str:
    return "float" if any(a.dtype == "float" for a in args) else "int"


def _arithmetic(op: str, a: Operand, b: Operand) -> Expr:
    a, b = _numeric(op, a, b)
    return _simplified(op, (a, b), _join(a, b))


def add(a: Operand, b: Operand) -> Expr:
    return _arithmetic("add", a, b)


def sub(a: Operand, b: Operand) -> Expr:
    return _arithmetic("sub", a, b)


def mul(a: Operand, b: Operand) -> Expr:
    return _arithmetic("mul", a, b)


def truediv(a: Operand, b: Operand) -> Expr:
    """a / b in float (int operands are converted first)."""
    a, b = (to_float(x) for x in _numeric("truediv", a, b))
    return _simplified("truediv", (a, b), "float")


def _division(op: str, a: Operand, b: Operand) -> Expr:
    a, b = (as_expr(a), as_expr(b))
    for x in (a, b):
        _require(x, ("int",), op)
    if b.is_const and b.value == 0:
        raise ValueError(f"{op} by the constant 0 in {a} {op} 0.")
    return _simplified(op, (a, b), "int")


def floordiv(a: Operand, b: Operand) -> Expr:
    """floor(a / b) on ints (Python's //)."""
    return _division("floordiv", a, b)


def mod(a: Operand, b: Operand) -> Expr:
    """a - b * floor(a / b) on ints (Python's %: the sign of b)."""
    return _division("mod", a, b)


def tdiv(a: Operand, b: Operand) -> Expr:
    """a / b truncated toward zero on ints (C's /)."""
    return _division("tdiv", a, b)


def trem(a: Operand, b: Operand) -> Expr:
    """a - b * tdiv(a, b) on ints (C's %: the sign of a)."""
    return _division("trem", a, b)


def minimum(a: Operand, b: Operand) -> Expr:
    return _arithmetic("min", a, b)


def maximum(a: Operand, b: Operand) -> Expr:
    return _arithmetic("max", a, b)


def neg(a: Operand) -> Expr:
    (a,) = _numeric("neg", a)
    return _simplified("neg", (a,), a.dtype)


def absolute(a: Operand) -> Expr:
    """|a|."""
    (a,) = _numeric("abs", a)
    return _simplified("abs", (a,), a.dtype)


# -- comparisons and logic -------------------------------------------------------------------------


def _compare(op: str, a: Operand, b: Operand) -> Expr:
    a, b = as_expr(a), as_expr(b)
    if not (op in ("eq", "ne") and a.dtype == b.dtype == "bool"):
        _numeric(op, a, b)
    return _simplified(op, (a, b), "bool")


def lt(a: Operand, b: Operand) -> Expr:
    return _compare("lt", a, b)


def le(a: Operand, b: Operand) -> Expr:
    return _compare("le", a, b)


def gt(a: Operand, b: Operand) -> Expr:
    return _compare("gt", a, b)


def ge(a: Operand, b: Operand) -> Expr:
    return _compare("ge", a, b)


def eq(a: Operand, b: Operand) -> Expr:
    return _compare("eq", a, b)


def ne(a: Operand, b: Operand) -> Expr:
    return _compare("ne", a, b)


def _logic(op: str, a: Operand, b: Operand) -> Expr:
    a, b = as_expr(a), as_expr(b)
    for x in (a, b):
        _require(x, ("bool",), f"{op} (& |)")
    return _simplified(op, (a, b), "bool")


def logical_and(a: Operand, b: Operand) -> Expr:
    return _logic("and", a, b)


def logical_or(a: Operand, b: Operand) -> Expr:
    return _logic("or", a, b)


def logical_not(a: Operand) -> Expr:
    """not a; flips an int comparison (``~(a < b)`` is ``a >= b``; not for floats, where NaN breaks it)."""
    a = as_expr(a)
    _require(a, ("bool",), "not (~)")
    return _simplified("not", (a,), "bool")


def where(condition: Operand, a: Operand, b: Operand) -> Expr:
    """a where condition holds, else b (both bools, or both numbers)."""
    condition, a, b = as_expr(condition), as_expr(a), as_expr(b)
    _require(condition, ("bool",), "where's condition")
    if (a.dtype == "bool") != (b.dtype == "bool"):
        raise TypeError(f"where needs two bool branches or two numeric branches, got {a.dtype} and {b.dtype}.")
    dtype = "bool" if a.dtype == "bool" else _join(a, b)
    return _simplified("where", (condition, a, b), dtype)


# -- float math ------------------------------------------------------------------------------------


def to_float(a: Operand) -> Expr:
    """An int or bool as a float."""
    a = as_expr(a)
    return _simplified("to_float", (a,), "float")


def _unary_float(op: str, a: Operand) -> Expr:
    (a,) = _numeric(op, a)
    return _simplified(op, (to_float(a),), "float")


def exp(a: Operand) -> Expr:
    return _unary_float("exp", a)


def exp2(a: Operand) -> Expr:
    return _unary_float("exp2", a)


def log(a: Operand) -> Expr:
    return _unary_float("log", a)


def tanh(a: Operand) -> Expr:
    return _unary_float("tanh", a)


def sqrt(a: Operand) -> Expr:
    return _unary_float("sqrt", a)


def sin(a: Operand) -> Expr:
    return _unary_float("sin", a)


def cos(a: Operand) -> Expr:
    return _unary_float("cos", a)


def in_range(x: Operand, low: Operand, width: int) -> Expr:
    """low <= x <= low + width on ints, ``width`` >= 0 a constant (the node's value).

    A backend may test it as one unsigned compare of x - low; the Triton renderer makes these nodes from
    pairs of bounds (``codegen.triton.render.range_checks``) and no other backend sees one.
    """
    x, low = _numeric("in_range", x, low)
    if _join(x, low) != "int" or not isinstance(width, int) or width < 0:
        raise TypeError(f"in_range needs int operands and a width >= 0, got {x}, {low}, {width!r}.")
    if x.is_const and low.is_const:
        return const(0 <= x.value - low.value <= width)
    return make("in_range", (x, low), "bool", width)


BUILDERS: dict[str, Callable[..., Expr]] = {
    "add": add,
    "sub": sub,
    "mul": mul,
    "truediv": truediv,
    "floordiv": floordiv,
    "mod": mod,
    "tdiv": tdiv,
    "trem": trem,
    "min": minimum,
    "max": maximum,
    "neg": neg,
    "abs": absolute,
    "lt": lt,
    "le": le,
    "gt": gt,
    "ge": ge,
    "eq": eq,
    "ne": ne,
    "and": logical_and,
    "or": logical_or,
    "not": logical_not,
    "where": where,
    "exp": exp,
    "exp2": exp2,
    "log": log,
    "tanh": tanh,
    "sqrt": sqrt,
    "sin": sin,
    "cos": cos,
    "to_float": to_float,
}
"""The builder of every op with arguments (not const, var, load): passes rebuild nodes through these."""


def rebuild(node: Expr, args: tuple[Expr, ...]) -> Expr:
    """``node`` with new arguments, through its builder (so folding applies again)."""
    if node.op == "load":
        return load(node.value, *args)
    if node.op == "in_range":
        return in_range(*args, node.value)
    if not args:
        return node
    return BUILDERS[node.op](*args)
