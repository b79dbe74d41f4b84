"""The mask IR: immutable pattern nodes, each a predicate allowed(b, h, q, kv) over flat token indices.

Coordinates come from the canvas (row-major). Nodes check their own arguments in ``__post_init__``;
checks that need the canvas live in :func:`check_canvas`. ``str(p)`` is canonical: ``maskir.parse``
reads it back to an equal node (``Predicate`` excepted: a Python callable has no text form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from maskir.canvas import Canvas

PerDim = int | tuple[int, ...]


class Pattern:
    """Base of every node. ``&`` and, ``|`` or, ``~`` not, ``a - b`` is ``a & ~b``."""

    def __and__(self, other: Pattern) -> Pattern:
        return And(self, _as_pattern(other, "&"))

    def __or__(self, other: Pattern) -> Pattern:
        return Or(self, _as_pattern(other, "|"))

    def __invert__(self) -> Pattern:
        return Not(self)

    def __sub__(self, other: Pattern) -> Pattern:
        return And(self, Not(_as_pattern(other, "-")))

    def children(self) -> tuple[Pattern, ...]:
        """Sub-patterns (for combinators and PerHead); leaves have none."""
        return ()

    def walk(self):
        """Yield this node and every node below it, pre-order."""
        yield self
        for child in self.children():
            yield from child.walk()


def _as_pattern(other: Any, op: str) -> Pattern:
    if not isinstance(other, Pattern):
        raise TypeError(f"Operator {op!r} combines two patterns, got {type(other).__name__}.")
    return other


# -- argument checks -------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


INT_LIMIT = 2**31 - 1
"""Every integer of the IR lies in [-INT_LIMIT, INT_LIMIT] (the int32 range, symmetric): the planner's
int64 arithmetic holds any sum or product of two of them, the reference's int64 numpy too, and the
lowering (``maskir.codegen.common.lower``) clamps each to the canvas before the kernels' int32 index
arithmetic sees it (an offset past the canvas means the same as one at its edge)."""


def _check_int(node: str, name: str, value: Any, minimum: int | None = None) -> None:
    """Check an int argument (numpy ints accepted; the node stores them as Python ints) against
    ``minimum`` and the IR's range [-INT_LIMIT, INT_LIMIT]."""
    if not _is_int(value):
        raise TypeError(f"{node} argument {name} must be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{node} argument {name} must be >= {minimum}, got {name}={value}.")
    low = -INT_LIMIT if minimum is None else minimum
    if not low <= value <= INT_LIMIT:
        raise ValueError(
            f"{node} argument {name} must lie in [{low}, {INT_LIMIT}] (maskir's integers stay in the int32 range "
            f"its kernels index with), got {name}={value}."
        )


def _int_field(obj: Any, name: str, minimum: int | None = None) -> None:
    """Check an int field of a node and store it as a Python int."""
    value = getattr(obj, name)
    _check_int(type(obj).__name__, name, value, minimum)
    object.__setattr__(obj, name, int(value))


def _per_dim(obj: Any, name: str, minimum: int | None, kind: type = int) -> None:
    """Normalise a per-dim argument (an int for every dim, or a tuple/list of 1-3) in place."""
    node = type(obj).__name__
    value = getattr(obj, name)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(obj, name, value)
    items = value if isinstance(value, tuple) else (value,)
    if kind is int and all(_is_int(item) for item in items):
        value = tuple(int(item) for item in value) if isinstance(value, tuple) else int(value)
        object.__setattr__(obj, name, value)
    if not 1 <= len(items) <= 3:
        raise ValueError(f"{node} argument {name} takes one value or one per dim (1 to 3), got {value!r}.")
    for item in items:
        if kind is bool:
            if not isinstance(item, bool):
                raise TypeError(f"{node} argument {name} must be a bool or a tuple of bools, got {value!r}.")
        else:
            _check_int(node, name, item, minimum)


def expand(value: Any, ndim: int, node: str, name: str) -> tuple:
    """A per-dim argument as a tuple of length ndim (an int or bool applies to every dim)."""
    if not isinstance(value, tuple):
        return (value,) * ndim
    if len(value) != ndim:
        raise ValueError(f"{node} argument {name}={value!r} has {len(value)} values but the canvas has {ndim} dims.")
    return value


def _fmt(value: Any) -> str:
    """Canonical text of an argument: ints, bools and tuples print as Python literals."""
    return repr(value)


# -- leaves ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Full(Pattern):
    """Always allowed."""

    def __str__(self) -> str:
        return "Full()"


@dataclass(frozen=True)
class Causal(Pattern):
    """kv <= q + offset on flat indices; with ``dim`` on that coordinate: kv_dim <= q_dim + offset."""

    offset: int = 0
    dim: int | None = None

    def __post_init__(self):
        _int_field(self, "offset")
        if self.dim is not None:
            _int_field(self, "dim", 0)

    def __str__(self) -> str:
        args = [str(self.offset)] if self.offset or self.dim is not None else []
        args += [f"dim={self.dim}"] if self.dim is not None else []
        return f"Causal({', '.join(args)})"


@dataclass(frozen=True)
class Window(Pattern):
    """q - left <= kv <= q + right, on flat indices or, with ``dim``, on that coordinate."""

    left: int
    right: int
    dim: int | None = None

    def __post_init__(self):
        _int_field(self, "left", 0)
        _int_field(self, "right", 0)
        if self.dim is not None:
            _int_field(self, "dim", 0)

    def __str__(self) -> str:
        return f"Window({self.left}, {self.right}" + (f", dim={self.dim})" if self.dim is not None else ")")


def SlidingWindow(size: int, causal: bool = True) -> Window:  # noqa: N802 (a constructor by name)
    """Sugar: causal -> 0 <= q - kv < size (``Window(size - 1, 0)``, Mistral's convention);
    non-causal -> |q - kv| <= size // 2 (``Window(size // 2, size // 2)``, Longformer's w/2 a side)."""
    _check_int("SlidingWindow", "size", size, 1)
    if not isinstance(causal, bool):
        raise TypeError(f"SlidingWindow argument causal must be a bool, got {causal!r}.")
    return Window(size - 1, 0) if causal else Window(size // 2, size // 2)


@dataclass(frozen=True)
class Dilated(Pattern):
    """|q - kv| <= window * dilation  and  (q - kv) % dilation == 0, on flat indices."""

    window: int
    dilation: int

    def __post_init__(self):
        _int_field(self, "window", 0)
        _int_field(self, "dilation", 1)

    def __str__(self) -> str:
        return f"Dilated({self.window}, {self.dilation})"


@dataclass(frozen=True)
class Neighborhood(Pattern):
    """NATTEN/GNA neighborhood, per dim (extent L, kernel k, dilation d, stride s), AND over dims.

    Same dilation group (x % d equal); in the group x' = x // d, L_g = ceil((L - g) / d).
    Non-causal: leader l = min(x' // s * s + s // 2, L_g - 1), r = k // 2 - (1 - k % 2),
    centre c = clamp(l, k // 2, L_g - 1 - r); allowed iff c - k // 2 <= kv' <= c + r.
    Causal: l = min(x' // s * s + s - 1, L_g - 1); allowed iff kv' <= x' and l - kv' < k.
    """

    kernel: PerDim
    dilation: PerDim = 1
    stride: PerDim = 1
    causal: bool | tuple[bool, ...] = False

    def __post_init__(self):
        _per_dim(self, "kernel", 1)
        _per_dim(self, "dilation", 1)
        _per_dim(self, "stride", 1)
        _per_dim(self, "causal", None, bool)

    def __str__(self) -> str:
        extra = [f"dilation={_fmt(self.dilation)}"] if self.dilation != 1 else []
        extra += [f"stride={_fmt(self.stride)}"] if self.stride != 1 else []
        extra += [f"causal={_fmt(self.causal)}"] if self.causal is not False else []
        return f"Neighborhood({', '.join([_fmt(self.kernel), *extra])})"


@dataclass(frozen=True)
class Blocks(Pattern):
    """Same block in every dim: (x + offset) // size equal (Swin; offset = size - size // 2 is shifted Swin)."""

    size: PerDim
    offset: PerDim = 0

    def __post_init__(self):
        _per_dim(self, "size", 1)
        _per_dim(self, "offset", 0)

    def __str__(self) -> str:
        return f"Blocks({_fmt(self.size)}" + (f", offset={_fmt(self.offset)})" if self.offset != 0 else ")")


@dataclass(frozen=True)
class Stripes(Pattern):
    """CSWin stripe: same x_dim // width."""

    dim: int
    width: int

    def __post_init__(self):
        _int_field(self, "dim", 0)
        _int_field(self, "width", 1)

    def __str__(self) -> str:
        return f"Stripes({self.dim}, {self.width})"


@dataclass(frozen=True)
class Grid(Pattern):
    """MaxViT grid: x % (L // size) equal in every dim (size tokens per dim share a grid cell)."""

    size: PerDim

    def __post_init__(self):
        _per_dim(self, "size", 1)

    def __str__(self) -> str:
        return f"Grid({_fmt(self.size)})"


@dataclass(frozen=True)
class Strided(Pattern):
    """(q - kv) % stride == offset % stride, on flat indices (Sparse Transformer "strided")."""

    stride: int
    offset: int = 0

    def __post_init__(self):
        _int_field(self, "stride", 1)
        _int_field(self, "offset", 0)

    def __str__(self) -> str:
        return f"Strided({self.stride}" + (f", offset={self.offset})" if self.offset else ")")


@dataclass(frozen=True)
class Columns(Pattern):
    """kv % stride >= stride - width (Sparse Transformer "fixed" summary columns)."""

    stride: int
    width: int

    def __post_init__(self):
        _int_field(self, "stride", 1)
        _int_field(self, "width", 1)
        if self.width > self.stride:
            raise ValueError(f"Columns needs width <= stride, got width={self.width}, stride={self.stride}.")

    def __str__(self) -> str:
        return f"Columns({self.stride}, {self.width})"


@dataclass(frozen=True)
class Sink(Pattern):
    """kv < n: the first n tokens are attention sinks (StreamingLLM)."""

    n: int

    def __post_init__(self):
        _int_field(self, "n", 1)

    def __str__(self) -> str:
        return f"Sink({self.n})"


@dataclass(frozen=True)
class Prefix(Pattern):
    """kv < n: a bidirectional prefix (prefix LM is ``Prefix(n) | Causal()``)."""

    n: int

    def __post_init__(self):
        _int_field(self, "n", 1)

    def __str__(self) -> str:
        return f"Prefix({self.n})"


@dataclass(frozen=True)
class Global(Pattern):
    """q in indices or kv in indices (flat, static global tokens as in Longformer/BigBird)."""

    indices: tuple[int, ...]

    def __post_init__(self):
        value = self.indices
        if isinstance(value, (list, tuple)):
            value = tuple(value)
        else:
            raise TypeError(f"Global argument indices must be a tuple or list of ints, got {value!r}.")
        if not value:
            raise ValueError("Global argument indices must not be empty.")
        for item in value:
            _check_int("Global", "indices", item, 0)
        object.__setattr__(self, "indices", tuple(sorted({int(item) for item in value})))

    def __str__(self) -> str:
        return f"Global({_fmt(self.indices)})"


@dataclass(frozen=True)
class Segments(Pattern):
    """Same segment id: ids[b, q] == ids[b, kv], with ids a [B, N] tensor given at call time."""

    def __str__(self) -> str:
        return "Segments()"


@dataclass(frozen=True)
class Distance(Pattern):
    """lo <= |q_dim - kv_dim| < hi (a ring of distances on one coordinate)."""

    dim: int
    lo: int
    hi: int

    def __post_init__(self):
        _int_field(self, "dim", 0)
        _int_field(self, "lo", 0)
        _int_field(self, "hi", 1)
        if self.hi <= self.lo:
            raise ValueError(f"Distance needs lo < hi, got lo={self.lo}, hi={self.hi}.")

    def __str__(self) -> str:
        return f"Distance({self.dim}, {self.lo}, {self.hi})"


ROUTING_SCORERS = ("mean_qk",)


@dataclass(frozen=True)
class Routing(Pattern):
    """kv block (kv // block) allowed iff among the top-k kv blocks chosen for the q block (q // block).

    The choice is data dependent: ``scorer="mean_qk"`` ranks kv blocks by mean(q block) . mean(kv block)
    per head (BiFormer / MoBA); an index tensor [B, H, q_blocks, topk] may be given instead.
    """

    block: int
    topk: int
    scorer: str = "mean_qk"

    def __post_init__(self):
        _int_field(self, "block", 1)
        _int_field(self, "topk", 1)
        if self.scorer not in ROUTING_SCORERS:
            raise ValueError(f"Routing scorer must be one of {ROUTING_SCORERS}, got {self.scorer!r}.")

    def __str__(self) -> str:
        scorer = f", scorer={self.scorer!r}" if self.scorer != "mean_qk" else ""
        return f"Routing({self.block}, {self.topk}{scorer})"


@dataclass(frozen=True, eq=False)
class Predicate(Pattern):
    """A flex-style ``mask_mod(b, h, q_idx, kv_idx) -> bool``; equal when the callable is the same."""

    fn: Callable

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Predicate argument fn must be a callable mask_mod(b, h, q_idx, kv_idx), got {self.fn!r}.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Predicate) and other.fn is self.fn

    def __hash__(self) -> int:
        return hash(("Predicate", id(self.fn)))

    def __str__(self) -> str:
        return f"Predicate({getattr(self.fn, '__name__', 'fn')})"


# -- combinators -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerHead(Pattern):
    """Head h uses patterns[h % len(patterns)] (MoA, S2-Attention shards)."""

    patterns: tuple[Pattern, ...]

    def __post_init__(self):
        value = self.patterns
        if not isinstance(value, (list, tuple)) or not value:
            shown = value if isinstance(value, Pattern) else repr(value)  # canonical text for a lone pattern
            raise TypeError(f"PerHead takes a non-empty list of patterns, got {shown}: write PerHead([...]).")
        for item in value:
            if not isinstance(item, Pattern):
                raise TypeError(f"PerHead takes patterns, got {item!r}.")
        object.__setattr__(self, "patterns", tuple(value))

    def children(self) -> tuple[Pattern, ...]:
        return self.patterns

    def __str__(self) -> str:
        return "PerHead([" + ", ".join(map(str, self.patterns)) + "])"


def _binary(cls_name: str, symbol: str):
    @dataclass(frozen=True)
    class Binary(Pattern):
        left: Pattern
        right: Pattern

        def __post_init__(self):
            for side in (self.left, self.right):
                if not isinstance(side, Pattern):
                    raise TypeError(f"{cls_name} combines patterns, got {side!r}.")

        def children(self) -> tuple[Pattern, ...]:
            return (self.left, self.right)

        def __str__(self) -> str:
            return f"({self.left} {symbol} {self.right})"

    Binary.__name__ = Binary.__qualname__ = cls_name
    return Binary


And = _binary("And", "&")
And.__doc__ = "left and right."
Or = _binary("Or", "|")
Or.__doc__ = "left or right."


@dataclass(frozen=True)
class Not(Pattern):
    """not inner."""

    inner: Pattern

    def __post_init__(self):
        if not isinstance(self.inner, Pattern):
            raise TypeError(f"Not takes a pattern, got {self.inner!r}.")

    def children(self) -> tuple[Pattern, ...]:
        return (self.inner,)

    def __str__(self) -> str:
        return f"~{self.inner}"


# -- the catalogue and the canvas checks -----------------------------------------------------------

NODES: dict[str, type | Callable] = {
    cls.__name__: cls
    for cls in (
        Full,
        Causal,
        Window,
        Dilated,
        Neighborhood,
        Blocks,
        Stripes,
        Grid,
        Strided,
        Columns,
        Sink,
        Prefix,
        Global,
        Segments,
        Distance,
        Routing,
        PerHead,
    )
}
NODES["SlidingWindow"] = SlidingWindow
"""Constructors the spec language may call, by name (Predicate, And, Or, Not are not callable there)."""

DYNAMIC_NODES = (Segments, Routing)


def is_dynamic(pattern: Pattern) -> bool:
    """True when the allowed set depends on run-time data (segment ids or routing)."""
    return any(isinstance(node, DYNAMIC_NODES) for node in pattern.walk())


_TREE_TAG = "maskir.node"
_TREE_CLASSES: dict[str, type] = {
    **{name: cls for name, cls in NODES.items() if isinstance(cls, type)},
    **{cls.__name__: cls for cls in (Predicate, And, Or, Not)},
}


def node_tree(node: Pattern) -> tuple:
    """``node`` as nested tuples ("maskir.node", class name, field values), sub-patterns as trees.

    torch.compile hands plain tuples to functions it runs while tracing, but not a pattern built inside
    the compiled region; ``node_from_tree`` rebuilds an equal node (by class name, from this module only).
    """
    return (_TREE_TAG, type(node).__name__, tuple(_tree_value(getattr(node, f.name)) for f in fields(node)))


def _tree_value(value: Any) -> Any:
    if isinstance(value, Pattern):
        return node_tree(value)
    if isinstance(value, (tuple, list)):
        return tuple(_tree_value(item) for item in value)
    return value


def node_from_tree(tree: tuple) -> Pattern:
    """The node ``node_tree`` described."""
    tag, name, values = tree
    if tag != _TREE_TAG or name not in _TREE_CLASSES:
        raise ValueError(f"Not a maskir pattern tree: {tree!r}.")
    return _TREE_CLASSES[name](*(_from_tree_value(value) for value in values))


def _from_tree_value(value: Any) -> Any:
    if isinstance(value, tuple) and value and value[0] == _TREE_TAG:
        return node_from_tree(value)
    if isinstance(value, tuple):
        return tuple(_from_tree_value(item) for item in value)
    return value


def _check_dim(node: Pattern, dim: int, canvas: Canvas) -> None:
    if dim >= canvas.ndim:
        raise ValueError(f"{node} names dim={dim} but the canvas {canvas.shape} has {canvas.ndim} dims.")


def check_canvas(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas | None = None) -> None:
    """Raise ValueError when ``pattern`` is not well defined on the q/kv canvases (dims, sizes)."""
    kv_canvas = kv_canvas or canvas
    for node in pattern.walk():
        name = type(node).__name__
        same_ndim = canvas.ndim == kv_canvas.ndim
        if isinstance(node, (Causal, Window)) and node.dim is not None or isinstance(node, (Stripes, Distance)):
            _check_dim(node, node.dim, canvas)
            if not same_ndim:
                raise ValueError(f"{node} needs q and kv canvases with the same dims, got {canvas} and {kv_canvas}.")
        if isinstance(node, Window):
            extent = canvas.shape[node.dim] if node.dim is not None else max(canvas.size, kv_canvas.size)
            if max(node.left, node.right) >= extent:
                raise ValueError(f"{node} reaches past the canvas: left and right must be < {extent}.")
        longest = max(canvas.size, kv_canvas.size)
        if isinstance(node, Dilated) and node.window * node.dilation >= longest:
            raise ValueError(f"{node} reaches past the canvas: window * dilation must be < {longest}.")
        if isinstance(node, Neighborhood):
            if canvas.shape != kv_canvas.shape:
                raise ValueError(f"{node} needs equal q and kv canvases, got {canvas} and {kv_canvas}.")
            kernel = expand(node.kernel, canvas.ndim, name, "kernel")
            dilation = expand(node.dilation, canvas.ndim, name, "dilation")
            expand(node.stride, canvas.ndim, name, "stride")
            expand(node.causal, canvas.ndim, name, "causal")
            for d, (k, dil, extent) in enumerate(zip(kernel, dilation, canvas.shape)):
                if k * dil > extent:
                    raise ValueError(
                        f"{node}: kernel * dilation = {k * dil} exceeds the canvas extent {extent} in dim {d}."
                    )
        if isinstance(node, (Blocks, Grid)):
            if not same_ndim:
                raise ValueError(f"{node} needs q and kv canvases with the same dims, got {canvas} and {kv_canvas}.")
            sizes = expand(node.size, canvas.ndim, name, "size")
            if isinstance(node, Blocks):
                expand(node.offset, canvas.ndim, name, "offset")
            for d, (size, extent) in enumerate(zip(sizes, canvas.shape)):
                if size > extent:
                    raise ValueError(f"{node}: size {size} exceeds the canvas extent {extent} in dim {d}.")
                if isinstance(node, Grid) and (extent % size or canvas.shape != kv_canvas.shape):
                    raise ValueError(
                        f"{node}: grid size {size} must divide the extent {extent} in dim {d} "
                        "(and q and kv canvases must be equal)."
                    )
        if isinstance(node, Stripes) and node.width > canvas.shape[node.dim]:
            raise ValueError(f"{node}: width exceeds the canvas extent {canvas.shape[node.dim]}.")
        if isinstance(node, (Sink, Prefix)) and node.n > kv_canvas.size:
            raise ValueError(f"{node}: n must be <= the number of kv tokens {kv_canvas.size}.")
        shortest = min(canvas.size, kv_canvas.size)
        if isinstance(node, Global) and node.indices[-1] >= shortest:
            raise ValueError(f"{node}: index {node.indices[-1]} is outside the canvas of {shortest} tokens.")
        if isinstance(node, Strided) and node.stride > longest:
            raise ValueError(f"{node}: stride exceeds the number of tokens {longest}.")
        if isinstance(node, Columns) and node.stride > kv_canvas.size:
            raise ValueError(f"{node}: stride exceeds the number of kv tokens {kv_canvas.size}.")


def node_fields(node: Pattern) -> dict[str, Any]:
    """The constructor arguments of a node, by name."""
    return {f.name: getattr(node, f.name) for f in fields(node)}
