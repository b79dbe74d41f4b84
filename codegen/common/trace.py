"""Trace a flex-style Python callable once, with symbolic arguments, into an Expr.

The arguments are ``Symbol`` proxies. Python operators on them build expressions, and torch functions
reach :meth:`Symbol.__torch_function__` (the ``torch.overrides`` protocol), so ``torch.where(q_idx >=
kv_idx, score, -float("inf"))``, ``torch.tanh(score / 30)`` and ``slopes[h]`` trace. Indexing a captured
torch tensor with symbols becomes a ``load`` from a tensor named ``{prefix}_0``, ``{prefix}_1``... (one name
per tensor object), whose ``TensorRef.data`` is the tensor itself: the kernel reads its values at call
time. A negative index counts from the end, as in torch; an index out of range loads 0 (torch would
raise). A 0-d tensor in arithmetic is a load with no index.

What cannot be traced raises ``TypeError`` naming the operation: Python control flow on a symbol
(``if``, ``and``, ``bool()``, ``min()``), converting it to a Python number, an unsupported torch function
or method, slicing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from maskir.codegen.common import expr as E  # noqa: N812 (the builders read as E.where, E.eq)
from maskir.codegen.common.expr import Expr, TensorRef


class Captures:
    """Names the torch tensors traced functions index: ``{prefix}_0``, ``{prefix}_1``, ... in first-use order."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._refs: dict[int, TensorRef] = {}

    def ref(self, tensor: torch.Tensor) -> TensorRef:
        """The TensorRef of ``tensor`` (the same object always gets the same name)."""
        if id(tensor) not in self._refs:
            if tensor.is_complex():
                raise TypeError(f"Cannot capture a complex tensor (dtype {tensor.dtype}) in a traced function.")
            dtype = "float" if tensor.is_floating_point() else "bool" if tensor.dtype == torch.bool else "int"
            name = f"{self.prefix}_{len(self._refs)}"
            self._refs[id(tensor)] = TensorRef(name, dtype, tuple(tensor.shape), tensor)
        return self._refs[id(tensor)]


class _Context:
    """What every Symbol of one trace shares: the capture names and the kind of function (for messages)."""

    def __init__(self, captures: Captures, what: str):
        self.captures = captures
        self.what = what

    def lift(self, value: Any) -> Expr:
        """A Symbol's Expr, a Python number as a constant, a 0-d tensor as a load."""
        if isinstance(value, Symbol):
            return value.expr
        if isinstance(value, torch.Tensor):
            if value.dim() != 0:
                raise TypeError(
                    f"{self.what} tracing: a captured tensor of shape {tuple(value.shape)} must be indexed "
                    "with symbols (e.g. bias[q_idx, kv_idx]) before it is combined with them."
                )
            return E.load(self.captures.ref(value))
        try:
            return E.as_expr(value)
        except TypeError:
            raise TypeError(f"{self.what} tracing: cannot use a {type(value).__name__} ({value!r}) here.") from None

    def apply(self, build: Callable[..., Expr], *values: Any) -> Symbol:
        return Symbol(build(*(self.lift(v) for v in values)), self)

    def index(self, tensor: torch.Tensor, index: Any) -> Symbol:
        """``tensor[index]`` with one int or symbol per dim."""
        items = index if isinstance(index, tuple) else (index,)
        if len(items) != tensor.dim() or not all(isinstance(i, (Symbol, int)) for i in items):
            raise TypeError(
                f"{self.what} tracing: index a captured tensor of shape {tuple(tensor.shape)} with exactly one "
                f"int or symbol per dim, all at once (table[i, j], not table[i][j] or slices), got {index!r}."
            )
        ref = self.captures.ref(tensor)
        indices = []
        for item, extent in zip(items, tensor.shape):
            i = self.lift(item)
            indices.append(i if i.nonnegative else E.where(i < 0, i + extent, i))
        return Symbol(E.load(ref, *indices), self)


def _kind(dtype: Any, what: str) -> str:
    """The Expr dtype a torch dtype converts to."""
    if not isinstance(dtype, torch.dtype) or dtype.is_complex:
        raise TypeError(f"{what} tracing: can convert only to a real torch dtype, got {dtype!r}.")
    return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "int"


def _convert(ctx: _Context, x: Any, dtype: Any) -> Symbol:
    """``x.to(dtype)``: to float, to bool (x != 0), or to int (a float cannot be converted)."""
    e, kind = ctx.lift(x), _kind(dtype, ctx.what)
    if kind == "float":
        return Symbol(E.to_float(e), ctx)
    if kind == "bool":
        return Symbol(e if e.dtype == "bool" else E.ne(e, 0), ctx)
    if e.dtype == "float":
        raise TypeError(f"{ctx.what} tracing: converting a float to an int is not supported ({e}).")
    return Symbol(E.where(e, 1, 0) if e.dtype == "bool" else e, ctx)


def _filled(ctx: _Context, like: Any, value: Any, dtype: Any = None) -> Symbol:
    """A constant with the kind of ``like`` (or of ``dtype``): ``zeros_like``, ``x.new_ones(())``..."""
    kind = ctx.lift(like).dtype if dtype is None else _kind(dtype, ctx.what)
    return Symbol(E.const({"float": float, "int": int, "bool": bool}[kind](value)), ctx)


def _new(value: Any) -> Callable[..., Symbol]:
    def build(ctx: _Context, like: Any, size: Any = (), dtype: Any = None, device: Any = None) -> Symbol:
        if tuple(size) != ():
            raise TypeError(f"{ctx.what} tracing: new tensors must have shape (), got {size!r}.")
        return _filled(ctx, like, value, dtype)

    return build


def _clamp(ctx: _Context, x: Any, min: Any = None, max: Any = None) -> Symbol:  # noqa: A002 (torch's names)
    e = ctx.lift(x)
    e = e if min is None else E.maximum(e, ctx.lift(min))
    return Symbol(e if max is None else E.minimum(e, ctx.lift(max)), ctx)


def _sigmoid(x: Expr) -> Expr:
    return 1.0 / (1.0 + E.exp(-x))


def _pow(x: Expr, exponent: Expr) -> Expr:
    if not (exponent.is_const and exponent.dtype == "int" and 0 <= exponent.value <= 4):
        raise TypeError(f"Tracing supports x ** n for a constant int 0 <= n <= 4 only, got exponent {exponent}.")
    result = E.const(1)
    for _ in range(exponent.value):
        result = result * x
    return result


_UNARY: dict[str, Callable[[Expr], Expr]] = {
    "abs": E.absolute,
    "absolute": E.absolute,
    "neg": E.neg,
    "negative": E.neg,
    "exp": E.exp,
    "exp2": E.exp2,
    "log": E.log,
    "tanh": E.tanh,
    "sqrt": E.sqrt,
    "sin": E.sin,
    "cos": E.cos,
    "sigmoid": _sigmoid,
    "logical_not": E.logical_not,
    "bitwise_not": E.logical_not,
}
_BINARY: dict[str, Callable[[Expr, Expr], Expr]] = {
    "add": E.add,
    "sub": E.sub,
    "subtract": E.sub,
    "mul": E.mul,
    "multiply": E.mul,
    "div": E.truediv,
    "true_divide": E.truediv,
    "floor_divide": E.floordiv,
    "remainder": E.mod,
    "minimum": E.minimum,
    "maximum": E.maximum,
    "lt": E.lt,
    "le": E.le,
    "gt": E.gt,
    "ge": E.ge,
    "eq": E.eq,
    "ne": E.ne,
    "logical_and": E.logical_and,
    "logical_or": E.logical_or,
    "bitwise_and": E.logical_and,
    "bitwise_or": E.logical_or,
    "pow": _pow,
}
_DUNDER = {"floordiv": "floor_divide", "mod": "remainder", "and": "logical_and", "or": "logical_or"}
_DUNDER_UNARY = {"invert": "logical_not", "neg": "neg", "abs": "abs"}


def _handler(name: str) -> Callable[..., Symbol] | None:
    """The tracing rule of a torch function or Tensor method, by its short name (``where``, ``__mod__``)."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        reflected = core.startswith("r") and core[1:] in (*_DUNDER, "add", "sub", "mul", "truediv", "pow")
        core = core[1:] if reflected else core
        if core in _DUNDER_UNARY:
            return _handler(_DUNDER_UNARY[core])
        binary = _DUNDER.get(core, "div" if core == "truediv" else core)
        if binary not in _BINARY:
            return None
        if reflected:
            return lambda ctx, a, b: ctx.apply(_BINARY[binary], b, a)
        return lambda ctx, a, b: ctx.apply(_BINARY[binary], a, b)
    if name in _UNARY:
        return lambda ctx, a: ctx.apply(_UNARY[name], a)
    if name in _BINARY:
        return lambda ctx, a, b: ctx.apply(_BINARY[name], a, b)
    return None


_SPECIAL: dict[str, Callable[..., Symbol]] = {
    "where": lambda ctx, condition, a, b: ctx.apply(E.where, condition, a, b),
    "clamp": _clamp,
    "clip": _clamp,
    "__getitem__": lambda ctx, tensor, index: ctx.index(tensor, index),
    "zeros_like": lambda ctx, x, dtype=None, device=None: _filled(ctx, x, 0, dtype),
    "ones_like": lambda ctx, x, dtype=None, device=None: _filled(ctx, x, 1, dtype),
    "full_like": lambda ctx, x, value, dtype=None, device=None: _filled(ctx, x, value, dtype),
    "new_zeros": _new(0),
    "new_ones": _new(1),
    "to": lambda ctx, x, dtype: _convert(ctx, x, dtype),
    "float": lambda ctx, x: _convert(ctx, x, torch.float32),
    "int": lambda ctx, x: _convert(ctx, x, torch.int32),
    "long": lambda ctx, x: _convert(ctx, x, torch.int64),
    "bool": lambda ctx, x: _convert(ctx, x, torch.bool),
}


def _call(ctx: _Context, name: str, args: tuple, kwargs: dict) -> Symbol:
    """Apply the tracing rule of the torch function or method ``name`` (``torch.where``, ``abs``)."""
    handler = _handler(name.rsplit(".", 1)[-1])
    if handler is None:
        raise TypeError(f"{ctx.what} tracing does not support {name} on symbolic values. {_SUPPORTED}")
    try:
        inspect.signature(handler).bind(ctx, *args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{ctx.what} tracing does not support these arguments to {name}: {error}.") from None
    return handler(ctx, *args, **kwargs)


def _symbols(values: Any):
    for value in values:
        if isinstance(value, Symbol):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _symbols(value)


class Symbol:
    """A symbolic value during tracing: wraps an Expr; operators and torch functions build Exprs."""

    __slots__ = ("expr", "_ctx")

    def __init__(self, expr: Expr, ctx: _Context):
        self.expr = expr
        self._ctx = ctx

    def __repr__(self) -> str:
        return f"Symbol({self.expr})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = torch.overrides.resolve_name(func) or getattr(func, "__name__", repr(func))
        ctx = next(_symbols([*args, *kwargs.values()]))._ctx
        return _call(ctx, name, args, kwargs)

    def _method(self, name: str, *args: Any, **kwargs: Any) -> Symbol:
        return _call(self._ctx, name, (self, *args), kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._method(name, *args, **kwargs)

    def _control_flow(self, *_: Any):
        raise TypeError(
            f"{self._ctx.what} tracing: a symbolic value ({self.expr}) has no Python value (it is known only "
            "per (q, kv) pair inside the kernel), so it cannot drive Python control flow (if, and, or, not, "
            "min(), max(), bool(), int()). Use torch.where(cond, a, b), & | ~, torch.minimum/maximum."
        )

    __bool__ = __index__ = __int__ = __float__ = __len__ = __iter__ = _control_flow
    __hash__ = None


def _install_operators() -> None:
    """Python operators on Symbols go through the same rules as the torch functions."""
    names = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or"]
    for name in names:
        setattr(Symbol, f"__{name}__", lambda self, other, n=f"__{name}__": self._method(n, other))
        setattr(Symbol, f"__r{name}__", lambda self, other, n=f"__r{name}__": self._method(n, other))
    for name in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(Symbol, f"__{name}__", lambda self, other, n=name: self._method(n, other))
    for name in ("neg", "abs", "invert"):
        setattr(Symbol, f"__{name}__", lambda self, n=f"__{name}__": self._method(n))


_install_operators()

_SUPPORTED = (
    "Supported: Python operators + - * / // % ** (small int powers) < <= > >= == != & | ~ abs(); "
    f"torch functions and methods {', '.join(sorted({*_UNARY, *_BINARY, *_SPECIAL} - {'__getitem__'}))}; "
    "and indexing captured tensors with symbols."
)


def trace(fn: Callable, names: tuple[str, ...], captures: Captures, what: str) -> Expr:
    """Call ``fn`` once with one Symbol per variable name; the Expr of its result.

    ``what`` names the kind of function in error messages ("score_mod", "mask_mod").
    """
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {fn!r}.")
    ctx = _Context(captures, what)
    result = fn(*(Symbol(E.var(name), ctx) for name in names))
    return ctx.lift(result)
