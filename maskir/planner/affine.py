"""Recognise affine mask_mods: a ``Predicate`` whose comparisons are affine in q and kv, rewritten to IR nodes.

The mask_mod is called once with proxy arguments (no tensor is built). An int value is a piecewise affine
form ``a*q + b*kv + c`` (pieces guarded by conditions, from ``torch.where``, min/max, abs), or
``form // s + t`` / ``form % s + t`` for a constant s > 0; a bool value is a union of *terms*, each the
conjunction of ``d = q - kv`` in [d_lo, d_hi], ``kv`` in [kv_lo, kv_hi] and IR literals (Blocks, Strided,
Columns, possibly negated). Comparisons become terms:

| comparison | terms |
|---|---|
| a(q - kv) + c op 0, b kv + c op 0 | an interval of d, of kv |
| A // s + t op k (any affine A) | A op' s(k - t): affine again |
| (q + o) // s op (kv + o') // s, o = o' mod s, 1-D canvases | Blocks(s, o mod s) with Causal for >=, <= |
| (q - kv + c) % s op k | d in a set of residues mod s: Strided(s, r) |
| (+-kv + c) % s op k | kv mod s in runs of residues: Columns(s, w) |

``&``, ``|``, ``~`` (also ``torch.logical_*``), ``torch.where`` on bools and ints, ``torch.minimum``/
``maximum``, ``abs``, Python ints and captured 0-d int/bool tensors (read when planning) trace. Anything
else (q alone, b, h, products of indices, indexing tensors, float math, Python control flow) is not
recognised and the planner evaluates the predicate exactly instead (``fallback``).

Intervals are clipped to what the canvases allow (d in [-(Nkv - 1), Nq - 1], kv in [0, Nkv - 1]) and
touching terms merged, so ``(q - kv < 1024) & (kv <= q)`` becomes exactly ``Window(1023, 0)`` and plans
like it. The rewrite is exact: every (q, kv) pair of the canvases gets the predicate's answer.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, reduce

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.ir import (
    And,
    Blocks,
    Causal,
    Columns,
    Full,
    Not,
    Or,
    Pattern,
    PerHead,
    Predicate,
    Prefix,
    Strided,
    Window,
    check_canvas,
)

MAX_TERMS = 64
"""A bool value with more terms than this (e.g. ``~`` of a long union) is not recognised."""
MAX_RESIDUE_TERMS = 8
"""At most this many Strided residues or Columns runs per comparison."""


class NotAffineError(Exception):
    """The mask_mod uses something outside the affine fragment."""


@dataclass(frozen=True)
class Bounds:
    """What the canvases allow: d = q - kv in [d_min, d_max], kv in [0, kv_max]; ``flat_blocks``: both 1-D."""

    d_min: int
    d_max: int
    kv_max: int
    flat_blocks: bool


@dataclass(frozen=True, order=True)
class Literal:
    """An IR node that must hold (or, ``holds`` False, must not); ordered and equal by its canonical text."""

    name: str
    holds: bool
    node: Pattern = field(compare=False)

    @classmethod
    def of(cls, node: Pattern, holds: bool) -> Literal:
        return cls(str(node), holds, node)

    def negated(self) -> Literal:
        return Literal(self.name, not self.holds, self.node)


@dataclass(frozen=True, order=True)
class Term:
    """d in [d_lo, d_hi] and kv in [kv_lo, kv_hi] and every literal (node, holds) in ``literals``."""

    d_lo: int
    d_hi: int
    kv_lo: int
    kv_hi: int
    literals: tuple[Literal, ...] = ()  # sorted

    def empty(self) -> bool:
        contradiction = any(lit.negated() in self.literals for lit in self.literals)
        return self.d_lo > self.d_hi or self.kv_lo > self.kv_hi or contradiction

    def meet(self, other: Term) -> Term:
        return Term(
            max(self.d_lo, other.d_lo),
            min(self.d_hi, other.d_hi),
            max(self.kv_lo, other.kv_lo),
            min(self.kv_hi, other.kv_hi),
            tuple(sorted(set(self.literals) | set(other.literals))),
        )

    def contains(self, other: Term) -> bool:
        return (
            self.d_lo <= other.d_lo
            and other.d_hi <= self.d_hi
            and self.kv_lo <= other.kv_lo
            and other.kv_hi <= self.kv_hi
            and set(self.literals) <= set(other.literals)
        )


class BoolValue:
    """A union of Terms (empty: False)."""

    def __init__(self, terms, bounds: Bounds):
        self.bounds = bounds
        terms = [t for t in terms if not t.empty()]
        if len(terms) > 4 * MAX_TERMS:
            raise NotAffineError(f"more than {4 * MAX_TERMS} terms before simplification")
        self.terms = _simplified(terms) if len(terms) > 1 else terms
        if len(self.terms) > MAX_TERMS:
            raise NotAffineError(f"more than {MAX_TERMS} terms")

    @classmethod
    def constant(cls, value: bool, bounds: Bounds) -> BoolValue:
        return cls([everything(bounds)] if value else [], bounds)

    def __and__(self, other: BoolValue) -> BoolValue:
        return BoolValue([a.meet(b) for a in self.terms for b in other.terms], self.bounds)

    def __or__(self, other: BoolValue) -> BoolValue:
        return BoolValue(self.terms + other.terms, self.bounds)

    def __invert__(self) -> BoolValue:
        return reduce(
            operator.and_, (_complement(t, self.bounds) for t in self.terms), self.constant(True, self.bounds)
        )


def everything(bounds: Bounds) -> Term:
    return Term(bounds.d_min, bounds.d_max, 0, bounds.kv_max)


def _complement(term: Term, bounds: Bounds) -> BoolValue:
    """not term: the union of its violated constraints."""
    full = everything(bounds)
    parts = [
        Term(full.d_lo, term.d_lo - 1, 0, full.kv_hi),
        Term(term.d_hi + 1, full.d_hi, 0, full.kv_hi),
        Term(full.d_lo, full.d_hi, 0, term.kv_lo - 1),
        Term(full.d_lo, full.d_hi, term.kv_hi + 1, full.kv_hi),
    ]
    parts += [Term(full.d_lo, full.d_hi, 0, full.kv_hi, (lit.negated(),)) for lit in term.literals]
    return BoolValue(parts, bounds)


def _simplified(terms: list[Term]) -> list[Term]:
    """Drop duplicates and contained terms; merge terms equal but for touching d (or kv) intervals."""
    terms = sorted(set(terms))
    changed = True
    while changed:
        changed = False
        for i, j in itertools.permutations(range(len(terms)), 2):
            a, b = terms[i], terms[j]
            merged = None
            if a.contains(b):
                merged = a
            elif (
                a.literals == b.literals and (a.kv_lo, a.kv_hi) == (b.kv_lo, b.kv_hi) and a.d_lo <= b.d_lo <= a.d_hi + 1
            ):
                merged = Term(a.d_lo, max(a.d_hi, b.d_hi), a.kv_lo, a.kv_hi, a.literals)
            elif (
                a.literals == b.literals and (a.d_lo, a.d_hi) == (b.d_lo, b.d_hi) and a.kv_lo <= b.kv_lo <= a.kv_hi + 1
            ):
                merged = Term(a.d_lo, a.d_hi, a.kv_lo, max(a.kv_hi, b.kv_hi), a.literals)
            if merged is not None:
                terms = sorted(set([t for k, t in enumerate(terms) if k not in (i, j)] + [merged]))
                changed = True
                break
    return terms


@dataclass(frozen=True)
class Affine:
    """a*q + b*kv + c."""

    a: int
    b: int
    c: int

    def __add__(self, other: Affine) -> Affine:
        return Affine(self.a + other.a, self.b + other.b, self.c + other.c)

    def scaled(self, k: int) -> Affine:
        return Affine(self.a * k, self.b * k, self.c * k)


def _integer_le(coefficient: int, bound: int) -> tuple[int | None, int | None]:
    """The x with coefficient * x <= bound, as (lo, hi) with None unbounded (coefficient != 0)."""
    if coefficient > 0:
        return None, bound // coefficient
    return -(bound // -coefficient), None


def _compare_affine(form: Affine, op: str, bounds: Bounds) -> BoolValue:
    """form op 0 as terms (form = a q + b kv + c with (a, b) = (k, -k), (0, k) or (0, 0))."""
    if op in ("ne",):
        return ~_compare_affine(form, "eq", bounds)
    if op == "eq":
        return _compare_affine(form, "le", bounds) & _compare_affine(form, "ge", bounds)
    # normalise to coefficient * x <= bound
    if op in ("lt", "le"):
        coefficient, bound = (form.a or form.b), -form.c - (1 if op == "lt" else 0)
    else:
        coefficient, bound = -(form.a or form.b), form.c - (1 if op == "gt" else 0)
    full = everything(bounds)
    if form.a == 0 and form.b == 0:
        return BoolValue.constant(0 <= bound, bounds)
    lo, hi = _integer_le(coefficient, bound)
    lo = -(1 << 62) if lo is None else lo
    hi = 1 << 62 if hi is None else hi
    if form.a != 0 and form.b == -form.a:
        term = Term(max(lo, full.d_lo), min(hi, full.d_hi), full.kv_lo, full.kv_hi)
    elif form.a == 0:
        term = Term(full.d_lo, full.d_hi, max(lo, 0), min(hi, full.kv_hi))
    else:
        raise NotAffineError(f"comparison of {form.a}*q + {form.b}*kv (only q - kv and kv alone are affine bands)")
    return BoolValue([term], bounds)


OPS = ("lt", "le", "gt", "ge", "eq", "ne")
_HOLDS: dict[str, Callable[[int, int], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}
_MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


class Value:
    """A traced int or bool; the proxy the mask_mod sees."""

    def __init__(self, bounds: Bounds):
        self.bounds = bounds

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _torch_function(func, args, kwargs or {})

    def __bool__(self):
        raise NotAffineError("Python control flow on a traced value")

    def __index__(self):
        raise NotAffineError("a traced value used as a Python int")

    __int__ = __index__

    def __getattr__(self, name):  # tensor methods: q.abs(), q.eq(kv), m.logical_and(...)
        if name.startswith("__"):
            raise AttributeError(name)
        function = getattr(torch, name, None)
        if function is None:
            return lambda *args, **kwargs: Unknown(self.bounds)
        return lambda *args, **kwargs: _torch_function(function, (self, *args), kwargs)


class Int(Value):
    """Pieces (condition, form): the value is form where condition holds (conditions partition the space)."""

    def __init__(self, pieces: list[tuple[BoolValue, Affine]], bounds: Bounds):
        super().__init__(bounds)
        self.pieces = [(cond, form) for cond, form in pieces if cond.terms]
        if len(self.pieces) > MAX_TERMS:
            raise NotAffineError("too many pieces")

    @classmethod
    def of(cls, form: Affine, bounds: Bounds) -> Int:
        return cls([(BoolValue.constant(True, bounds), form)], bounds)

    def single(self) -> Affine:
        if len(self.pieces) != 1:
            raise NotAffineError("// or % of a piecewise value")
        return self.pieces[0][1]

    def combine(self, other: Int, how: Callable[[Affine, Affine], Affine]) -> Int:
        return Int([(c1 & c2, how(f1, f2)) for c1, f1 in self.pieces for c2, f2 in other.pieces], self.bounds)

    def compare(self, op: str, other: Int) -> BoolValue:
        terms = BoolValue.constant(False, self.bounds)
        for c1, f1 in self.pieces:
            for c2, f2 in other.pieces:
                terms = terms | (c1 & c2 & _compare_affine(f1 + f2.scaled(-1), op, self.bounds))
        return terms


@dataclass
class Division:
    """form // s + t (``kind`` "floordiv") or form % s + t ("mod"), s > 0."""

    kind: str
    form: Affine
    s: int
    t: int


class Divided(Value):
    def __init__(self, division: Division, bounds: Bounds):
        super().__init__(bounds)
        self.division = division


class Bool(Value):
    """A traced bool, known between ``lower`` and ``upper`` (equal when exact): lower implies the value implies
    upper. Operations on bounds: and/or bound-wise, not swaps them; an Unknown comparison is (False, True)."""

    def __init__(self, lower: BoolValue, upper: BoolValue | None = None):
        super().__init__(lower.bounds)
        self.lower, self.upper = lower, lower if upper is None else upper

    @classmethod
    def unknown(cls, bounds: Bounds) -> Bool:
        return cls(BoolValue.constant(False, bounds), BoolValue.constant(True, bounds))

    @property
    def exact(self) -> bool:
        return self.lower.terms == self.upper.terms


def both(a: Bool, b: Bool) -> Bool:
    return Bool(a.lower & b.lower, a.upper & b.upper)


def either(a: Bool, b: Bool) -> Bool:
    return Bool(a.lower | b.lower, a.upper | b.upper)


def negation(a: Bool) -> Bool:
    return Bool(~a.upper, ~a.lower)


class Unknown(Value):
    """An int the fragment cannot follow (a table lookup, q * kv, b, h...): comparisons with it are unknown."""


def _lift(x, bounds: Bounds) -> Value:
    """A proxy, a Python/numpy int or bool, or a 0-d int/bool tensor (its value now)."""
    if isinstance(x, Value):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != 0 or x.is_floating_point() or x.is_complex():
            raise NotAffineError(f"a captured tensor of shape {tuple(x.shape)} and dtype {x.dtype}")
        x = x.item()
    if isinstance(x, (bool, np.bool_)):
        return Bool(BoolValue.constant(bool(x), bounds))
    if isinstance(x, (int, np.integer)):
        return Int.of(Affine(0, 0, int(x)), bounds)
    raise NotAffineError(f"a {type(x).__name__} operand")


def _as_int(v: Value) -> Int:
    if isinstance(v, Divided):
        raise NotAffineError("arithmetic on // or % results")
    if not isinstance(v, Int):
        raise NotAffineError("arithmetic on a bool")
    return v


def _as_bool(v: Value) -> Bool:
    if isinstance(v, Unknown):
        return Bool.unknown(v.bounds)
    if not isinstance(v, Bool):
        raise NotAffineError("an int where a bool is needed")
    return v


def _constant(v: Value) -> int | None:
    if isinstance(v, Int) and len(v.pieces) == 1 and v.pieces[0][1].a == v.pieces[0][1].b == 0:
        return v.pieces[0][1].c
    return None


def _add(x: Value, y: Value, sign: int = 1) -> Value:
    k = _constant(y)
    if isinstance(x, Divided) and k is not None:
        d = x.division
        return Divided(Division(d.kind, d.form, d.s, d.t + sign * k), x.bounds)
    if isinstance(y, Divided) and sign == 1:
        return _add(y, x)
    return _as_int(x).combine(_as_int(y), lambda f, g: f + g.scaled(sign))


def _mul(x: Value, y: Value) -> Value:
    k, j = _constant(y), _constant(x)
    if k is None and j is None:
        raise NotAffineError("a product of two indices")
    if k is None:
        x, k = y, j
    return Int([(c, f.scaled(k)) for c, f in _as_int(x).pieces], x.bounds)


def _divide(kind: str, x: Value, y: Value) -> Value:
    s = _constant(y)
    if s is None or s <= 0:
        raise NotAffineError(f"{kind} by something other than a positive constant")
    return Divided(Division(kind, _as_int(x).single(), s, 0), x.bounds)


def _where(cond: Value, x: Value, y: Value) -> Value:
    c = _as_bool(cond)
    if isinstance(x, Bool) or isinstance(y, Bool):
        return either(both(c, _as_bool(x)), both(negation(c), _as_bool(y)))
    if not c.exact or isinstance(x, Unknown) or isinstance(y, Unknown):
        return Unknown(x.bounds)
    xs, ys = _as_int(x), _as_int(y)
    c = c.lower
    not_c = ~c
    pieces = [(c & cx, fx) for cx, fx in xs.pieces] + [(not_c & cy, fy) for cy, fy in ys.pieces]
    return Int(pieces, x.bounds)


def _compare(op: str, x: Value, y: Value) -> Bool:
    if isinstance(x, Bool) or isinstance(y, Bool):
        if op not in ("eq", "ne"):
            raise NotAffineError("ordering of bools")
        a, b = _as_bool(x), _as_bool(y)
        same = either(both(a, b), both(negation(a), negation(b)))
        return same if op == "eq" else negation(same)
    if isinstance(x, Unknown) or isinstance(y, Unknown):
        return Bool.unknown(x.bounds)
    if isinstance(y, Divided) and not isinstance(x, Divided):
        return _compare(_MIRROR[op], y, x)
    if isinstance(x, Divided):
        return Bool(_compare_divided(op, x.division, y, x.bounds))
    return Bool(_as_int(x).compare(op, _as_int(y)))


def _compare_divided(op: str, d: Division, y: Value, bounds: Bounds) -> BoolValue:
    k = _constant(y)
    if k is not None:
        k -= d.t
        if d.kind == "floordiv":  # A // s op k  <=>  A op' s k ...
            below = {
                "lt": ("lt", d.s * k),
                "ge": ("ge", d.s * k),
                "le": ("lt", d.s * (k + 1)),
                "gt": ("ge", d.s * (k + 1)),
            }
            if op in below:
                new_op, bound = below[op]
                return _compare_affine(d.form + Affine(0, 0, -bound), new_op, bounds)
            eq = _compare_affine(d.form + Affine(0, 0, -d.s * k), "ge", bounds) & _compare_affine(
                d.form + Affine(0, 0, -d.s * (k + 1)), "lt", bounds
            )
            return eq if op == "eq" else ~eq
        residues = [r for r in range(d.s) if _HOLDS[op](r, k)]
        return _residue_terms(d.form, d.s, residues, bounds)
    if not isinstance(y, Divided) or d.kind != "floordiv" or y.division.kind != "floordiv":
        raise NotAffineError("a comparison of // or % with an index")
    return _compare_blocks(op, d, y.division, bounds)


def _residue_terms(form: Affine, s: int, residues: list[int], bounds: Bounds) -> BoolValue:
    """form mod s in ``residues`` (form = +-(q - kv) + c or +-kv + c)."""
    if not residues:
        return BoolValue.constant(False, bounds)
    if len(residues) == s:
        return BoolValue.constant(True, bounds)
    sign = form.a or form.b
    if abs(sign) != 1 or (form.a and form.b != -form.a):
        raise NotAffineError("% of a form other than +-(q - kv) + c or +-kv + c")
    # sign * x + c = r (mod s)  <=>  x = sign * (r - c) (mod s)
    wanted = sorted({(sign * (r - form.c)) % s for r in residues})
    full = everything(bounds)
    if form.a and s > max(full.d_hi, -full.d_lo):  # |d| < s: at most two d per residue, no Strided needed
        values = [d for r in wanted for d in (r - s, r) if full.d_lo <= d <= full.d_hi]
        return BoolValue([Term(d, d, 0, full.kv_hi) for d in values], bounds)
    if not form.a and s > full.kv_hi:  # kv < s: kv mod s is kv
        return BoolValue([Term(full.d_lo, full.d_hi, lo, hi) for lo, hi in _runs(wanted)], bounds)
    if form.a:
        if len(wanted) > MAX_RESIDUE_TERMS:
            raise NotAffineError("too many residues")
        return _literal_union([(Strided(s, r), True) for r in wanted], bounds)
    runs = _runs(wanted)
    if len(runs) > MAX_RESIDUE_TERMS:
        raise NotAffineError("too many residue runs")
    value = BoolValue.constant(False, bounds)
    for lo, hi in runs:  # lo <= kv mod s <= hi as Columns: kv mod s >= s - w
        run = BoolValue.constant(True, bounds)
        if lo > 0:
            run = run & _literal_union([(Columns(s, s - lo), True)], bounds)
        if hi < s - 1:
            run = run & _literal_union([(Columns(s, s - hi - 1), False)], bounds)
        value = value | run
    return value


def _runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _literal_union(literals: list[tuple[Pattern, bool]], bounds: Bounds) -> BoolValue:
    full = everything(bounds)
    return BoolValue([Term(full.d_lo, full.d_hi, 0, full.kv_hi, (Literal.of(n, h),)) for n, h in literals], bounds)


def _compare_blocks(op: str, x: Division, y: Division, bounds: Bounds) -> BoolValue:
    """(q + o) // s + t op (kv + o') // s + t' with o = o' (mod s): Blocks(s, o mod s) and Causal."""
    if x.form.b != 0 and y.form.a != 0:
        x, y, op = y, x, _MIRROR[op]
    fq, fk = x.form, y.form
    if (fq.a, fq.b, fk.a, fk.b) != (1, 0, 0, 1) or x.s != y.s or not bounds.flat_blocks:
        raise NotAffineError("// comparison other than (q + o) // s against (kv + o) // s on 1-D canvases")
    s = x.s
    offset = fq.c % s
    if (fk.c - fq.c) % s:
        raise NotAffineError("block comparison with different offsets")
    # (q + o) // s - (kv + o) // s op k'
    k = y.t - x.t + (fk.c - offset) // s - (fq.c - offset) // s
    if k != 0:
        raise NotAffineError("block comparison with a constant block distance")
    same = _literal_union([(Blocks(s, offset), True)], bounds)
    kv_le_q = _compare_affine(Affine(1, -1, 0), "ge", bounds)
    kv_ge_q = _compare_affine(Affine(1, -1, 0), "le", bounds)
    block_ge = {"eq": same, "ge": kv_le_q | same, "le": kv_ge_q | same}
    if op in block_ge:
        return block_ge[op]
    return ~block_ge[{"ne": "eq", "gt": "le", "lt": "ge"}[op]]


def _minmax(x: Value, y: Value, take_first: str) -> Value:
    return _where(_compare(take_first, x, y), x, y)


def _abs(x: Value) -> Value:
    return _where(_compare("ge", x, _lift(0, x.bounds)), x, _mul(x, _lift(-1, x.bounds)))


def _logical(op: Callable[[Bool, Bool], Bool]) -> Callable[[Value, Value], Bool]:
    return lambda x, y: op(_as_bool(x), _as_bool(y))


def _bitwise(op: Callable[[Bool, Bool], Bool]) -> Callable[[Value, Value], Value]:
    def apply(x: Value, y: Value) -> Value:
        if isinstance(x, (Int, Divided)) or isinstance(y, (Int, Divided)):
            return Unknown(x.bounds)  # bitwise logic on ints
        return op(_as_bool(x), _as_bool(y))

    return apply


def _not(x: Value) -> Bool:
    return negation(_as_bool(x))


BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "add": _add,
    "sub": lambda x, y: _add(x, y, -1),
    "mul": _mul,
    "floordiv": lambda x, y: _divide("floordiv", x, y),
    "floor_divide": lambda x, y: _divide("floordiv", x, y),
    "mod": lambda x, y: _divide("mod", x, y),
    "remainder": lambda x, y: _divide("mod", x, y),
    "and": _bitwise(both),
    "or": _bitwise(either),
    "xor": _bitwise(lambda a, b: either(both(a, negation(b)), both(negation(a), b))),
    "bitwise_and": _bitwise(both),
    "bitwise_or": _bitwise(either),
    "logical_and": _logical(both),
    "logical_or": _logical(either),
    "minimum": lambda x, y: _minmax(x, y, "le"),
    "maximum": lambda x, y: _minmax(x, y, "ge"),
    **{op: (lambda o: lambda x, y: _compare(o, x, y))(op) for op in OPS},
    **{
        alias: (lambda o: lambda x, y: _compare(o, x, y))(op)
        for alias, op in (
            ("less", "lt"),
            ("less_equal", "le"),
            ("greater", "gt"),
            ("greater_equal", "ge"),
            ("not_equal", "ne"),
        )
    },
}
UNARY: dict[str, Callable[[Value], Value]] = {
    "neg": lambda x: _mul(x, _lift(-1, x.bounds)),
    "abs": _abs,
    "invert": lambda x: _not(x) if isinstance(x, Bool) else Unknown(x.bounds),
    "bitwise_not": _not,
    "logical_not": _not,
}


COMPARISONS = {*OPS, "less", "less_equal", "greater", "greater_equal", "not_equal"}


def _tolerant(name: str, op: Callable[..., Value]) -> Callable[..., Value]:
    """``op``, with what the fragment cannot follow made Unknown (an unknown bool for a comparison)."""

    def apply(*values: Value) -> Value:
        try:
            return op(*values)
        except NotAffineError:
            bounds = values[0].bounds
            return Bool.unknown(bounds) if name in COMPARISONS else Unknown(bounds)

    return apply


BINARY = {name: _tolerant(name, op) for name, op in BINARY.items()}
UNARY = {name: _tolerant(name, op) for name, op in UNARY.items()}


def _torch_function(func, args, kwargs) -> Value:
    """torch.where/minimum/..., and Tensor dunders reached from a tensor operand (``limit > kv``)."""
    name = getattr(func, "__name__", "").strip("_")
    reflected = name.startswith("r") and name[1:] in BINARY and getattr(func, "__name__", "").startswith("__")
    operands = (*args, *kwargs.values())
    nested = (b for a in operands if isinstance(a, (tuple, list)) for b in a)  # T[q // 16, kv // 16]
    bounds = next(a.bounds for a in (*operands, *nested) if isinstance(a, Value))
    if kwargs:  # e.g. torch.where(c, x, y, out=...): outside the fragment
        return Unknown(bounds)
    values = [_lift_or_unknown(a, bounds) for a in args]
    if name == "where" and len(values) == 3:
        return _tolerant(name, _where)(*values)
    if name in ("min", "max") and len(values) == 2:
        return BINARY["minimum" if name == "min" else "maximum"](*values)
    if reflected and len(values) == 2:
        return BINARY[name[1:]](values[1], values[0])
    if name in BINARY and len(values) == 2:
        return BINARY[name](*values)
    if name in UNARY and len(values) == 1:
        return UNARY[name](values[0])
    return Unknown(bounds)  # a table lookup (T[q]), float math, an op the fragment does not model


def _lift_or_unknown(x, bounds: Bounds) -> Value:
    """``_lift``, with a tensor or number the fragment cannot hold (a 1-D table, a float) as Unknown."""
    try:
        return _lift(x, bounds)
    except NotAffineError:
        return Unknown(bounds)


def _install_operators() -> None:
    """Python operators on proxies: q - kv, kv <= q, m1 & m2, ~m, q // 64, -q, abs(q - kv)..."""
    for name in ("add", "sub", "mul", "floordiv", "mod", "and", "or", "xor", *OPS):
        setattr(
            Value,
            f"__{name}__",
            (lambda n: lambda self, other: BINARY[n](self, _lift_or_unknown(other, self.bounds)))(name),
        )
    for name in ("add", "sub", "mul", "floordiv", "mod", "and", "or", "xor"):
        setattr(
            Value,
            f"__r{name}__",
            (lambda n: lambda self, other: BINARY[n](_lift_or_unknown(other, self.bounds), self))(name),
        )
    for name in ("neg", "abs", "invert"):
        setattr(Value, f"__{name}__", (lambda n: lambda self: UNARY[n](self))(name))
    Value.__hash__ = object.__hash__  # defining __eq__ would remove it


_install_operators()


def _bounds(canvas: Canvas, kv_canvas: Canvas) -> Bounds:
    return Bounds(-(kv_canvas.size - 1), canvas.size - 1, kv_canvas.size - 1, canvas.ndim == 1 and kv_canvas.ndim == 1)


def _term_pattern(term: Term, bounds: Bounds) -> Pattern | None:
    """The term as an And of IR nodes (None: no constraint)."""
    nodes: list[Pattern] = []
    lo_bound, hi_bound = term.d_lo > bounds.d_min, term.d_hi < bounds.d_max
    if lo_bound or hi_bound:
        if lo_bound and hi_bound and term.d_lo <= 0 <= term.d_hi:
            nodes.append(Window(term.d_hi, -term.d_lo))
        else:  # d >= lo: kv <= q - lo;  d <= hi: not kv <= q - hi - 1
            nodes += [Causal(-term.d_lo)] if lo_bound else []
            nodes += [Not(Causal(-term.d_hi - 1))] if hi_bound else []
    if term.kv_lo > 0:
        nodes.append(Not(Prefix(term.kv_lo)))
    if term.kv_hi < bounds.kv_max:
        nodes.append(Prefix(term.kv_hi + 1))
    nodes += [lit.node if lit.holds else Not(lit.node) for lit in term.literals]
    return reduce(And, nodes) if nodes else None


def as_pattern(value: BoolValue) -> Pattern:
    """The union of terms as IR: Or of And of nodes; ~Full() when empty, Full() when unconstrained."""
    if not value.terms:
        return Not(Full())
    parts = [_term_pattern(t, value.bounds) for t in value.terms]
    if any(p is None for p in parts):
        return Full()
    return reduce(Or, parts)


@lru_cache(maxsize=256)
def analyse(predicate: Predicate, canvas: Canvas, kv_canvas: Canvas) -> tuple[Pattern, bool] | None:
    """(IR pattern, exact): a pattern equal to ``predicate`` on every (q, kv) of the canvases (exact) or a
    superset of it (the affine parts, with what the fragment cannot follow taken as allowed); None when the
    mask_mod cannot be traced at all (Python control flow on an index, an error)."""
    bounds = _bounds(canvas, kv_canvas)
    try:
        result = predicate.fn(
            Unknown(bounds), Unknown(bounds), Int.of(Affine(1, 0, 0), bounds), Int.of(Affine(0, 1, 0), bounds)
        )
        value = _as_bool(_lift_or_unknown(result, bounds))
        pattern = as_pattern(value.upper)
        check_canvas(pattern, canvas, kv_canvas)  # e.g. Blocks larger than the canvas: evaluate instead
        return pattern, value.exact
    except NotAffineError:
        return None
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError, ZeroDivisionError):
        return None  # the mask_mod did something our proxies do not support: evaluate it exactly


def recognise(predicate: Predicate, canvas: Canvas, kv_canvas: Canvas) -> Pattern | None:
    """An IR pattern equal to ``predicate`` on every (q, kv) of the canvases, or None when not affine."""
    found = analyse(predicate, canvas, kv_canvas)
    return found[0] if found is not None and found[1] else None


def rewrite_predicates(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas) -> Pattern:
    """``pattern`` with every Predicate leaf replaced by its IR when recognised exactly, or by ``superset &
    predicate`` when its affine parts bound it (so only the superset's tiles are evaluated); the rest unchanged."""
    if isinstance(pattern, Predicate):
        found = analyse(pattern, canvas, kv_canvas)
        if found is None or found[0] == Full():
            return pattern
        return found[0] if found[1] else And(found[0], pattern)
    if isinstance(pattern, (And, Or)):
        left, right = (rewrite_predicates(c, canvas, kv_canvas) for c in pattern.children())
        return pattern if (left, right) == pattern.children() else type(pattern)(left, right)
    if isinstance(pattern, Not):
        inner = rewrite_predicates(pattern.inner, canvas, kv_canvas)
        return pattern if inner is pattern.inner else Not(inner)
    if isinstance(pattern, PerHead):
        parts = tuple(rewrite_predicates(p, canvas, kv_canvas) for p in pattern.patterns)
        return pattern if parts == pattern.patterns else PerHead(parts)
    return pattern
