"""Hypothesis strategies for canvases and pattern trees, shared by the property tests.

``canvases()`` draws small 1-, 2- and 3-D token grids (at most ``MAX_TOKENS`` tokens, so a dense
N x N reference mask stays cheap). ``patterns(canvas)`` draws a pattern tree whose every node passes
``maskir.ir.check_canvas`` on that canvas (used as both q and kv canvas): leaves of every parseable
node with arguments in range, under ``Not``, ``And``, ``Or``, ``a - b`` and ``PerHead``, at most
``depth`` combinators deep. Data-dependent leaves (``Segments``, ``Routing``) appear only with
``dynamic=True``; ``Predicate`` never does (it has no text form and no planner analysis).

Typical use::

    @given(st.data())
    def test_something(data):
        canvas = data.draw(canvases())
        pattern = data.draw(patterns(canvas))
"""

from __future__ import annotations

import operator
from math import prod

from hypothesis import strategies as st

from maskir.canvas import Canvas
from maskir.ir import (
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    Pattern,
    PerHead,
    Prefix,
    Routing,
    Segments,
    Sink,
    Strided,
    Stripes,
    Window,
)

MAX_TOKENS = 96
"""Largest canvas drawn by ``canvases()``, in tokens."""


@st.composite
def canvases(draw: st.DrawFn, max_tokens: int = MAX_TOKENS) -> Canvas:
    """A 1-, 2- or 3-D canvas with at most ``max_tokens`` tokens (extents >= 1, each dim drawn in turn)."""
    shape: list[int] = []
    for _ in range(draw(st.integers(1, 3))):
        shape.append(draw(st.integers(1, max_tokens // prod(shape))))
    return Canvas(tuple(shape))


def _per_dim(canvas: Canvas, values_for_extent) -> st.SearchStrategy:
    """A per-dim argument: one value valid in every dim, or a tuple with one value per dim.

    ``values_for_extent(extent)`` gives the strategy of values valid for a dim of that extent.
    """
    one_for_all = values_for_extent(min(canvas.shape))
    one_per_dim = st.tuples(*(values_for_extent(extent) for extent in canvas.shape))
    return st.one_of(one_for_all, one_per_dim)


def _dims(canvas: Canvas) -> st.SearchStrategy[int]:
    return st.integers(0, canvas.ndim - 1)


@st.composite
def _window(draw: st.DrawFn, canvas: Canvas) -> Window:
    dim = draw(st.none() | _dims(canvas))
    extent = canvas.size if dim is None else canvas.shape[dim]
    reach = st.integers(0, extent - 1)
    return Window(draw(reach), draw(reach), dim)


@st.composite
def _dilated(draw: st.DrawFn, canvas: Canvas) -> Dilated:
    dilation = draw(st.integers(1, canvas.size))
    return Dilated(draw(st.integers(0, (canvas.size - 1) // dilation)), dilation)


@st.composite
def _neighborhood(draw: st.DrawFn, canvas: Canvas) -> Neighborhood:
    """kernel * dilation <= extent in every dim; stride and causal free."""
    dilation = draw(_per_dim(canvas, lambda extent: st.integers(1, extent)))
    per_dim_dilation = dilation if isinstance(dilation, tuple) else (dilation,) * canvas.ndim
    room = [extent // d for extent, d in zip(canvas.shape, per_dim_dilation)]
    kernel = draw(st.integers(1, min(room)) | st.tuples(*(st.integers(1, r) for r in room)))
    stride = draw(_per_dim(canvas, lambda extent: st.integers(1, extent)))
    causal = draw(_per_dim(canvas, lambda extent: st.booleans()))
    return Neighborhood(kernel, dilation, stride, causal)


def _divisors(extent: int) -> list[int]:
    return [d for d in range(1, extent + 1) if extent % d == 0]


def _grid(canvas: Canvas) -> st.SearchStrategy[Grid]:
    """Grid sizes divide every extent: a common divisor for the int form, any divisor per dim otherwise."""
    common = [d for d in _divisors(min(canvas.shape)) if all(extent % d == 0 for extent in canvas.shape)]
    per_dim = st.tuples(*(st.sampled_from(_divisors(extent)) for extent in canvas.shape))
    return st.builds(Grid, st.sampled_from(common) | per_dim)


@st.composite
def _stripes(draw: st.DrawFn, canvas: Canvas) -> Stripes:
    dim = draw(_dims(canvas))
    return Stripes(dim, draw(st.integers(1, canvas.shape[dim])))


@st.composite
def _columns(draw: st.DrawFn, canvas: Canvas) -> Columns:
    stride = draw(st.integers(1, canvas.size))
    return Columns(stride, draw(st.integers(1, stride)))


@st.composite
def _distance(draw: st.DrawFn, canvas: Canvas) -> Distance:
    dim = draw(_dims(canvas))
    lo = draw(st.integers(0, canvas.shape[dim]))
    return Distance(dim, lo, draw(st.integers(lo + 1, canvas.shape[dim] + 1)))


def leaves(canvas: Canvas, *, dynamic: bool = False) -> st.SearchStrategy[Pattern]:
    """One leaf node with arguments valid on ``canvas``; ``dynamic`` adds Segments and Routing."""
    n = canvas.size
    tokens = st.integers(1, n)
    options = [
        st.just(Full()),
        st.builds(Causal, st.integers(-n, n), st.none() | _dims(canvas)),
        _window(canvas),
        _dilated(canvas),
        _neighborhood(canvas),
        st.builds(
            Blocks,
            _per_dim(canvas, lambda extent: st.integers(1, extent)),
            _per_dim(canvas, lambda extent: st.integers(0, extent)),
        ),
        _stripes(canvas),
        _grid(canvas),
        st.builds(Strided, tokens, st.integers(0, n)),
        _columns(canvas),
        st.builds(Sink, tokens),
        st.builds(Prefix, tokens),
        st.builds(Global, st.lists(st.integers(0, n - 1), min_size=1, max_size=4)),
        _distance(canvas),
    ]
    if dynamic:
        options += [st.just(Segments()), st.builds(Routing, tokens, st.integers(1, 4))]
    return st.one_of(options)


def patterns(canvas: Canvas, *, dynamic: bool = False, depth: int = 3) -> st.SearchStrategy[Pattern]:
    """A pattern tree valid on ``canvas`` with at most ``depth`` levels of combinators above its leaves.

    Combinators: ``~a``, ``a & b``, ``a | b``, ``a - b`` (which is ``a & ~b``, one level more) and
    ``PerHead([...])`` of 1 to 3 patterns. Leaves come from :func:`leaves`.
    """
    leaf = leaves(canvas, dynamic=dynamic)
    if depth == 0:
        return leaf
    inner = patterns(canvas, dynamic=dynamic, depth=depth - 1)
    combinators = st.one_of(
        st.builds(Not, inner),
        st.builds(And, inner, inner),
        st.builds(Or, inner, inner),
        st.builds(operator.sub, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(PerHead),
    )
    # Half leaves, half combinators at each level (a flat one_of would weigh each leaf kind like a combinator).
    return st.booleans().flatmap(lambda nested: combinators if nested else leaf)


def canvas_and_pattern(*, dynamic: bool = False, depth: int = 3) -> st.SearchStrategy[tuple[Canvas, Pattern]]:
    """A canvas and a pattern valid on it, drawn together."""
    return canvases().flatmap(lambda canvas: st.tuples(st.just(canvas), patterns(canvas, dynamic=dynamic, depth=depth)))
