"""Sound per-tile bounds of a mask_mod by interval arithmetic: which tiles cannot hold an allowed pair (EMPTY)
and which cannot hold a masked one (FULL), without evaluating a pair.

The mask_mod is called once with proxies: q and kv are int intervals ``[lo, hi]`` per tile (torch tensors,
one entry per asked tile), b and h the concrete batch 0 and head. Int operations give intervals that contain
every value the operation can take on the tile: ``+ - *`` by corners, ``// c`` and ``% c`` by a constant
c != 0 (``x % c`` keeps ``[lo % c, hi % c]`` when lo and hi share a quotient, else all residues), min/max,
abs, ``torch.where``, and a captured 1-D int or bool tensor indexed by an interval (its min and max over the
indexed range; a bool table gives "some entry true" / "some entry false"). A comparison gives, per tile,
*may be true* and *may be false* (``a < b`` may be true iff a.lo < b.hi, may be false iff a.hi >= b.lo;
``a == b`` may be false unless both are the same single value); ``&``, ``|``, ``~`` combine them (``x & y``
may be true only if both may be, may be false if either may be). So a tile whose result may not be true
has no allowed pair, one whose result may not be false has every pair allowed; the rest are PARTIAL or
unknown and are evaluated exactly (``cells``).

Anything else (float math, a table with more dimensions, an index outside the table, Python control flow
on a value, an op not listed) makes the analysis give up (None): every tile is evaluated, as before.
"""

from __future__ import annotations

import numpy as np
import torch

from maskir.ir import Predicate

TILES_PER_TRACE = 1 << 18
"""Tiles traced per call of the mask_mod (a few int64 tensors of this length live at once)."""


class UnsupportedError(Exception):
    """The mask_mod does something the interval proxies do not model."""


class Proxy:
    """A traced value. Python control flow on it, or using it as a Python int, is unsupported."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if kwargs:
            raise UnsupportedError(f"{func} with keywords")
        name = getattr(func, "__name__", "").strip("_")
        if name == "getitem" and len(args) == 2:
            return _lookup(args[0], args[1])
        if name == "where" and len(args) == 3:
            return _where(*args)
        if name in ("minimum", "maximum", "min", "max") and len(args) == 2:
            return _minmax(name[:3] == "min", _as_range(args[0]), _as_range(args[1]))
        if name.startswith("r") and name[1:] in BINARY and len(args) == 2:  # Tensor.__rsub__(t, proxy)
            return BINARY[name[1:]](args[1], args[0])
        if name in BINARY and len(args) == 2:
            return BINARY[name](args[0], args[1])
        if name in UNARY and len(args) == 1:
            return UNARY[name](args[0])
        raise UnsupportedError(name or str(func))

    def __bool__(self):
        raise UnsupportedError("Python control flow on a traced value")

    def __index__(self):
        raise UnsupportedError("a traced value used as a Python int")

    __int__ = __index__
    __hash__ = object.__hash__


class Range(Proxy):
    """Every value an int expression takes on a tile lies in [lo, hi] (int64 tensors, one entry per tile)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        self.lo, self.hi = lo, hi


class Truth(Proxy):
    """Per tile: whether the bool expression may be true on some pair of it, and may be false on some."""

    def __init__(self, may_true: torch.Tensor, may_false: torch.Tensor):
        self.may_true, self.may_false = may_true, may_false


def _as_range(x) -> Range:
    if isinstance(x, Range):
        return x
    if isinstance(x, bool) or isinstance(x, Truth):
        raise UnsupportedError("a bool used as an int")
    if isinstance(x, int):
        value = torch.tensor(x, dtype=torch.long)
        return Range(value, value)
    if isinstance(x, torch.Tensor) and x.ndim == 0 and not x.is_floating_point() and x.dtype != torch.bool:
        value = x.detach().to("cpu", torch.long)
        return Range(value, value)
    raise UnsupportedError(f"an operand of type {type(x).__name__}")


def _as_truth(x) -> Truth:
    if isinstance(x, Truth):
        return x
    if isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.ndim == 0 and x.dtype == torch.bool):
        value = torch.tensor(bool(x))
        return Truth(value, ~value)
    raise UnsupportedError(f"a bool operand of type {type(x).__name__}")


def _add(x, y, sign: int = 1) -> Range:
    x, y = _as_range(x), _as_range(y)
    if sign > 0:
        return Range(x.lo + y.lo, x.hi + y.hi)
    return Range(x.lo - y.hi, x.hi - y.lo)


def _mul(x, y) -> Range:
    x, y = _as_range(x), _as_range(y)
    corners = torch.stack(torch.broadcast_tensors(x.lo * y.lo, x.lo * y.hi, x.hi * y.lo, x.hi * y.hi))
    return Range(corners.amin(0), corners.amax(0))


def _constant_divisor(y) -> int:
    y = _as_range(y)
    if y.lo.ndim or y.hi.ndim or int(y.lo) != int(y.hi) or int(y.lo) == 0:
        raise UnsupportedError("// or % by a non-constant or zero")
    return int(y.lo)


def _floordiv(x, y) -> Range:
    x, c = _as_range(x), _constant_divisor(y)
    ends = (torch.div(x.lo, c, rounding_mode="floor"), torch.div(x.hi, c, rounding_mode="floor"))
    return Range(*ends) if c > 0 else Range(ends[1], ends[0])  # floor(x / c) is monotone in x


def _mod(x, y) -> Range:
    """x % c (floor modulo, torch's and Python's): in [0, c - 1] for c > 0, [c + 1, 0] for c < 0; on a run
    of x with one quotient floor(x / c), x % c = x - c * quotient grows with x: in [lo % c, hi % c]."""
    x, c = _as_range(x), _constant_divisor(y)
    same = torch.div(x.lo, c, rounding_mode="floor") == torch.div(x.hi, c, rounding_mode="floor")
    low, high = (torch.tensor(0), torch.tensor(c - 1)) if c > 0 else (torch.tensor(c + 1), torch.tensor(0))
    return Range(torch.where(same, torch.remainder(x.lo, c), low), torch.where(same, torch.remainder(x.hi, c), high))


def _minmax(smaller: bool, x: Range, y: Range) -> Range:
    pick = torch.minimum if smaller else torch.maximum
    return Range(pick(x.lo, y.lo), pick(x.hi, y.hi))


def _abs(x) -> Range:
    x = _as_range(x)
    lo = torch.where((x.lo <= 0) & (x.hi >= 0), torch.zeros_like(x.lo), torch.minimum(x.lo.abs(), x.hi.abs()))
    return Range(lo, torch.maximum(x.lo.abs(), x.hi.abs()))


def _compare(op: str, x, y) -> Truth:
    if isinstance(x, Truth) or isinstance(y, Truth) or isinstance(x, bool) or isinstance(y, bool):
        if op in ("eq", "ne"):  # bool == bool: true where both may agree
            a, b = _as_truth(x), _as_truth(y)
            equal = Truth(
                (a.may_true & b.may_true) | (a.may_false & b.may_false),
                (a.may_true & b.may_false) | (a.may_false & b.may_true),
            )
            return equal if op == "eq" else _not(equal)
        raise UnsupportedError("an ordering of bools")
    x, y = _as_range(x), _as_range(y)
    if op in ("gt", "ge"):
        x, y, op = y, x, {"gt": "lt", "ge": "le"}[op]
    if op == "lt":
        return Truth(x.lo < y.hi, x.hi >= y.lo)
    if op == "le":
        return Truth(x.lo <= y.hi, x.hi > y.lo)
    overlap = (x.lo <= y.hi) & (y.lo <= x.hi)
    single = (x.lo == x.hi) & (y.lo == y.hi) & (x.lo == y.lo)
    return Truth(overlap, ~single) if op == "eq" else Truth(~single, overlap)


def _and(x, y) -> Truth:
    a, b = _as_truth(x), _as_truth(y)
    return Truth(a.may_true & b.may_true, a.may_false | b.may_false)


def _or(x, y) -> Truth:
    a, b = _as_truth(x), _as_truth(y)
    return Truth(a.may_true | b.may_true, a.may_false & b.may_false)


def _not(x) -> Truth:
    a = _as_truth(x)
    return Truth(a.may_false, a.may_true)


def _xor(x, y) -> Truth:
    return _compare("ne", _as_truth(x), _as_truth(y))


def _where(condition, x, y):
    c = _as_truth(condition)
    if isinstance(x, Truth) or isinstance(y, Truth) or isinstance(x, bool) or isinstance(y, bool):
        a, b = _as_truth(x), _as_truth(y)
        return Truth(
            (c.may_true & a.may_true) | (c.may_false & b.may_true),
            (c.may_true & a.may_false) | (c.may_false & b.may_false),
        )
    a, b = _as_range(x), _as_range(y)
    big = torch.iinfo(torch.long)
    lo = torch.minimum(torch.where(c.may_true, a.lo, big.max), torch.where(c.may_false, b.lo, big.max))
    hi = torch.maximum(torch.where(c.may_true, a.hi, big.min), torch.where(c.may_false, b.hi, big.min))
    return Range(lo, hi)


def _range_min_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min and max of values[lo[i] : hi[i] + 1] per i (lo <= hi, inside values): sparse tables over the
    span the ranges touch (level j holds the min / max of each 2^j consecutive entries), so a range is the
    min / max of two overlapping power-of-two windows. O(span log span + ranges)."""
    if lo.size == 0:
        return np.empty(0, values.dtype), np.empty(0, values.dtype)
    first = int(lo.min())
    span = values[first : int(hi.max()) + 1]
    lo, hi = lo - first, hi - first
    level = np.floor(np.log2(hi - lo + 1)).astype(np.int64)
    level -= (1 << level) > hi - lo + 1  # guard against log2 rounding up
    low, high = np.empty(lo.size, values.dtype), np.empty(lo.size, values.dtype)
    mins, maxs = span, span
    for j in range(int(level.max()) + 1):
        if j:
            half = 1 << (j - 1)
            mins, maxs = np.minimum(mins[:-half], mins[half:]), np.maximum(maxs[:-half], maxs[half:])
        which = np.flatnonzero(level == j)
        if which.size:
            start, end = lo[which], hi[which] - (1 << j) + 1
            low[which] = np.minimum(mins[start], mins[end])
            high[which] = np.maximum(maxs[start], maxs[end])
    return low, high


def _lookup(table, index) -> Proxy:
    """table[index] for a captured 1-D int or bool tensor and an interval index inside it: the table's min and
    max over each indexed range (bool: whether some entry is true, some false)."""
    if not isinstance(table, torch.Tensor) or isinstance(table, Proxy) or table.ndim != 1:
        raise UnsupportedError("indexing other than a 1-D tensor by one interval")
    if table.is_floating_point() or table.is_complex():
        raise UnsupportedError("a float table")
    index = _as_range(index)
    lo, hi = torch.broadcast_tensors(index.lo, index.hi)
    if lo.numel() and (int(lo.min()) < 0 or int(hi.max()) >= table.numel()):
        raise UnsupportedError("an index range outside the table")
    values = table.detach().to("cpu", torch.long if table.dtype != torch.bool else torch.bool).numpy()
    low, high = _range_min_max(values, lo.reshape(-1).numpy(), hi.reshape(-1).numpy())
    low, high = torch.from_numpy(low).reshape(lo.shape), torch.from_numpy(high).reshape(lo.shape)
    return Truth(high, ~low) if table.dtype == torch.bool else Range(low, high)


BINARY = {
    "add": _add,
    "sub": lambda x, y: _add(x, y, -1),
    "mul": _mul,
    "floordiv": _floordiv,
    "floor_divide": _floordiv,
    "mod": _mod,
    "remainder": _mod,
    "and": _and,
    "or": _or,
    "xor": _xor,
    "bitwise_and": _and,
    "bitwise_or": _or,
    "bitwise_xor": _xor,
    "logical_and": _and,
    "logical_or": _or,
    "logical_xor": _xor,
    **{op: (lambda o: lambda x, y: _compare(o, x, y))(op) for op in ("lt", "le", "gt", "ge", "eq", "ne")},
    **{
        alias: (lambda o: lambda x, y: _compare(o, x, y))(op)
        for alias, op in (("less", "lt"), ("less_equal", "le"), ("greater", "gt"), ("greater_equal", "ge"))
    },
    "not_equal": lambda x, y: _compare("ne", x, y),
}
UNARY = {
    "neg": lambda x: _mul(x, -1),
    "abs": _abs,
    "invert": _not,
    "bitwise_not": _not,
    "logical_not": _not,
}


def _install_operators() -> None:
    for name in ("add", "sub", "mul", "floordiv", "mod", "and", "or", "xor", "lt", "le", "gt", "ge", "eq", "ne"):
        setattr(Proxy, f"__{name}__", (lambda n: lambda self, other: BINARY[n](self, other))(name))
    for name in ("add", "sub", "mul", "floordiv", "mod", "and", "or", "xor"):
        setattr(Proxy, f"__r{name}__", (lambda n: lambda self, other: BINARY[n](other, self))(name))
    for name in ("neg", "abs", "invert"):
        setattr(Proxy, f"__{name}__", (lambda n: lambda self: UNARY[n](self))(name))


_install_operators()


def tile_bounds(
    predicate: Predicate,
    n_q: int,
    n_kv: int,
    q_block: int,
    kv_block: int,
    rows: np.ndarray,
    cols: np.ndarray,
    head: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(may_true, may_false) per identity tile (rows[i], cols[i]) (``range_bounds`` of its token ranges)."""
    q_lo, kv_lo = np.asarray(rows, dtype=np.int64) * q_block, np.asarray(cols, dtype=np.int64) * kv_block
    q_hi, kv_hi = np.minimum(q_lo + q_block, n_q) - 1, np.minimum(kv_lo + kv_block, n_kv) - 1
    return range_bounds(predicate, q_lo, q_hi, kv_lo, kv_hi, head)


def range_bounds(
    predicate: Predicate, q_lo: np.ndarray, q_hi: np.ndarray, kv_lo: np.ndarray, kv_hi: np.ndarray, head: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """(may_true, may_false) per box q in [q_lo[i], q_hi[i]] x kv in [kv_lo[i], kv_hi[i]]: False in may_true
    proves no pair of the box allowed, False in may_false every pair allowed (so for a tile inside the box,
    EMPTY or FULL). None when the mask_mod is outside what the proxies model. Boxes are traced
    ``TILES_PER_TRACE`` at a time, so memory stays bounded however many are asked."""
    arrays = [np.asarray(a, dtype=np.int64) for a in (q_lo, q_hi, kv_lo, kv_hi)]
    may_true, may_false = np.empty(arrays[0].shape, dtype=bool), np.empty(arrays[0].shape, dtype=bool)
    for first in range(0, arrays[0].size, TILES_PER_TRACE):
        part = slice(first, first + TILES_PER_TRACE)
        traced = _trace(predicate, *(a[part] for a in arrays), head)
        if traced is None:
            return None
        may_true[part], may_false[part] = traced
    return may_true, may_false


def _trace(predicate, q_lo, q_hi, kv_lo, kv_hi, head):
    q = Range(torch.from_numpy(q_lo), torch.from_numpy(q_hi))
    kv = Range(torch.from_numpy(kv_lo), torch.from_numpy(kv_hi))
    zero, h = torch.tensor(0), torch.tensor(head)
    try:
        result = _as_truth(predicate.fn(Range(zero, zero), Range(h, h), q, kv))
    except (UnsupportedError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, ZeroDivisionError):
        return None
    return torch.broadcast_to(result.may_true, q_lo.shape).numpy(), torch.broadcast_to(
        result.may_false, q_lo.shape
    ).numpy()
