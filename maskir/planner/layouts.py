"""Layout candidates for a pattern: which token orders are worth pricing, per family.

Families (``LAYOUTS``; ``layout="auto"`` prices all that apply, a named family only its own):

- ``identity``: token order unchanged;
- ``tiled``: ND patches (``Tiling`` with dilation 1), shapes short-listed by an estimate of the work per
  allowed pair from the pattern's reach per dim (``reach``);
- ``grouped``: residue classes made contiguous, by the dilation of ``Dilated``/``Strided`` (flat) or of a
  dilated ``Neighborhood`` (per dim), then patches of each group;
- ``window-major``: patches aligned with ``Blocks``/``Stripes`` windows (offset included), and
  grid-major order for ``Grid`` (residues mod extent / size, one grid cell per group);
- ``gathered``: only the kv tokens a kv-only conjunct (``Columns``, ``Sink``, ``Prefix``) can allow,
  packed into tiles (used alone, and by union decomposition for one part).

A named family that does not apply to the pattern still gives a valid layout (the nearest thing: e.g.
``grouped`` with no dilation in the pattern groups by 2), so every family can be forced for testing.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from maskir.canvas import Canvas
from maskir.ir import (
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Grid,
    Neighborhood,
    Not,
    Or,
    Pattern,
    Prefix,
    Sink,
    Strided,
    Stripes,
    Window,
    expand,
)
from maskir.planner.tiling import Tiling

LAYOUTS = ("identity", "tiled", "grouped", "window-major", "gathered")
"""Layout families ``plan(layout=...)`` accepts besides "auto"."""

SHORTLIST = 3
"""Patch pairs per family and block size that get priced by the planner."""


@dataclass(frozen=True, eq=False)
class LayoutChoice:
    """A candidate: a name and one spec per side (None = identity, a Tiling, or gathered kv tokens)."""

    name: str
    q: Tiling | None
    kv: Tiling | np.ndarray | None


def conjuncts(pattern: Pattern) -> list[Pattern]:
    """The top-level And chain of a pattern, flattened."""
    if isinstance(pattern, And):
        return conjuncts(pattern.left) + conjuncts(pattern.right)
    return [pattern]


def reach(pattern: Pattern, canvas: Canvas) -> tuple[int, ...]:
    """Per dim, about how many coordinates a query may see (the canvas extent where unconstrained).

    And takes the smaller, Or the larger; it only ranks patch shapes, so rough is fine.
    """
    extent = canvas.shape
    if isinstance(pattern, And):
        return tuple(map(min, reach(pattern.left, canvas), reach(pattern.right, canvas)))
    if isinstance(pattern, Or):
        return tuple(map(max, reach(pattern.left, canvas), reach(pattern.right, canvas)))
    if isinstance(pattern, Not):
        return extent
    out = list(extent)

    def limit(dim: int, value: int) -> None:
        out[dim] = max(1, min(out[dim], value))

    if isinstance(pattern, Neighborhood):
        for d, k in enumerate(expand(pattern.kernel, canvas.ndim, "Neighborhood", "kernel")):
            limit(d, k)
    elif isinstance(pattern, Window) and pattern.dim is not None:
        limit(pattern.dim, pattern.left + pattern.right + 1)
    elif isinstance(pattern, Causal) and pattern.dim is not None:
        limit(pattern.dim, extent[pattern.dim] // 2 + 1)
    elif isinstance(pattern, Distance):
        limit(pattern.dim, 2 * pattern.hi - 1)
    elif isinstance(pattern, Blocks):
        for d, s in enumerate(expand(pattern.size, canvas.ndim, "Blocks", "size")):
            limit(d, s)
    elif isinstance(pattern, Stripes):
        limit(pattern.dim, pattern.width)
    elif isinstance(pattern, Grid):
        for d, s in enumerate(expand(pattern.size, canvas.ndim, "Grid", "size")):
            limit(d, s)
    return tuple(out)


def _factorizations(block: int, ndim: int) -> list[tuple[int, ...]]:
    """Every way to write block (a power of two) as a product of ndim powers of two."""
    bits = block.bit_length() - 1
    return [tuple(1 << e for e in exps) for exps in product(range(bits + 1), repeat=ndim) if sum(exps) == bits]


def _estimate(q_patch, kv_patch, extent, sees) -> float:
    """Rough computed pairs per allowed pair (smaller is better) for a window of ``sees`` per dim.

    Per dim, each q patch [i p, i p + p) sees [i p - h, i p + p - 1 + h] (h = (r - 1) / 2, clipped to the
    extent), which meets a whole number of kv tiles of side k; the average over q patches, over r, is that
    dim's factor (the q side also pays for padding past the extent).
    """
    ratio = 1.0
    for p, k, length, r in zip(q_patch, kv_patch, extent, sees):
        r = min(r, length)
        half = (r - 1) // 2
        start = np.arange(0, length, p)
        lo, hi = np.maximum(start - half, 0), np.minimum(start + p - 1 + half, length - 1)
        covered = ((hi // k - lo // k + 1) * k).mean()
        padding = (start.size * p) / length
        ratio *= covered / r * padding
    return float(ratio)


def shortlist(extent: tuple[int, ...], sees: tuple[int, ...], block_q: int, block_kv: int) -> list[tuple]:
    """The SHORTLIST best (q patch, kv patch) pairs for a grid of ``extent`` by ``_estimate``."""
    pairs = [(qp, kp) for qp in _factorizations(block_q, len(extent)) for kp in _factorizations(block_kv, len(extent))]
    pairs.sort(key=lambda pair: _estimate(*pair, extent, sees))
    return pairs[:SHORTLIST]


def _aligned_patches(block: int, windows: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Patches of ``block`` whose sides divide or are multiples of the window sides (tiles never cut a window
    into pieces that share a tile with another window's pieces), most window-like first."""
    fits = [
        p for p in _factorizations(block, len(windows)) if all(w % s == 0 or s % w == 0 for s, w in zip(p, windows))
    ]
    return sorted(fits, key=lambda p: sum(abs(np.log2(s) - np.log2(w)) for s, w in zip(p, windows)))[:2]


def _window_features(
    pattern: Pattern, canvas: Canvas
) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(window sides, offsets, dilation) of each Blocks/Stripes window and Grid cell in the pattern."""
    ndim = canvas.ndim
    found = []
    for node in pattern.walk():
        if isinstance(node, Blocks):
            sizes = expand(node.size, ndim, "Blocks", "size")
            found.append((sizes, expand(node.offset, ndim, "Blocks", "offset"), (1,) * ndim))
        elif isinstance(node, Stripes):
            sides = tuple(node.width if d == node.dim else canvas.shape[d] for d in range(ndim))
            found.append((sides, (0,) * ndim, (1,) * ndim))
        elif isinstance(node, Grid):
            sizes = expand(node.size, ndim, "Grid", "size")
            cells = tuple(extent // s for extent, s in zip(canvas.shape, sizes))
            found.append((sizes, (0,) * ndim, cells))
    return list(dict.fromkeys(found))


def _window_specs(pattern: Pattern, canvas: Canvas, block_q: int, block_kv: int) -> list[tuple[Tiling, Tiling]]:
    """Window-major (q, kv) tilings: patches aligned with each window (grid-major for Grid cells)."""
    specs = []
    for sides, offsets, dilation in _window_features(pattern, canvas):
        for qp in _aligned_patches(block_q, sides):
            for kp in _aligned_patches(block_kv, sides):
                specs.append(
                    (
                        Tiling(canvas.shape, dilation, qp, tuple(o % p for o, p in zip(offsets, qp))),
                        Tiling(canvas.shape, dilation, kp, tuple(o % p for o, p in zip(offsets, kp))),
                    )
                )
    return specs


def _dilations(pattern: Pattern, canvas: Canvas) -> list[tuple[str, tuple[int, ...]]]:
    """("flat", (d,)) for Dilated/Strided and ("coords", per-dim d) for dilated Neighborhood."""
    found = []
    for node in pattern.walk():
        if isinstance(node, (Dilated, Strided)):
            d = node.dilation if isinstance(node, Dilated) else node.stride
            if 1 < d < canvas.size:
                found.append(("flat", (d,)))
        if isinstance(node, Neighborhood):
            dil = expand(node.dilation, canvas.ndim, "Neighborhood", "dilation")
            if any(d > 1 for d in dil):
                found.append(("coords", dil))
    return list(dict.fromkeys(found))


def _grouped_specs(
    pattern: Pattern, canvas: Canvas, kv_canvas: Canvas, block_q: int, block_kv: int, forced: bool
) -> list[tuple[Tiling, Tiling]]:
    """(q, kv) grouped tilings for each dilation in the pattern (by 2 when forced and there is none)."""
    dilations = _dilations(pattern, canvas)
    if not dilations and forced:
        dilations = [("flat", (2,))]
    specs = []
    for space, dil in dilations:
        if space == "flat":
            q_view, kv_view = (canvas.size,), (kv_canvas.size,)
            sees = (max(1, canvas.size // dil[0]),)
        else:
            q_view, kv_view, sees = canvas.shape, kv_canvas.shape, reach(pattern, canvas)
        q_dil = tuple(min(d, extent) for d, extent in zip(dil, q_view))
        kv_dil = tuple(min(d, extent) for d, extent in zip(dil, kv_view))
        groups = tuple(-(-extent // d) for extent, d in zip(q_view, q_dil))
        zero = (0,) * len(q_view)
        for qp, kp in shortlist(groups, sees, block_q, block_kv):
            specs.append((Tiling(q_view, q_dil, qp, zero), Tiling(kv_view, kv_dil, kp, zero)))
    return specs


def _gathered_tokens(pattern: Pattern, kv_canvas: Canvas) -> np.ndarray | None:
    """Sorted kv tokens allowed by a kv-only conjunct (Columns, Sink, Prefix) of the pattern, if any."""
    selectors = [node for node in conjuncts(pattern) if isinstance(node, (Columns, Sink, Prefix))]
    if not selectors:
        return None
    kv = np.arange(kv_canvas.size)
    keep = None
    for node in selectors:
        if isinstance(node, Columns):
            hit = kv % node.stride >= node.stride - node.width
        else:
            hit = kv < node.n
        keep = hit if keep is None else keep & hit
    return None if keep is None else np.flatnonzero(keep)


def _pair_name(kind: str, q: Tiling | None, kv: Tiling | None) -> str:
    return f"{kind} {q.describe() if q else 'identity'}|{kv.describe() if kv else 'identity'}"


def layout_choices(
    pattern: Pattern, canvas: Canvas, kv_canvas: Canvas, block_q: int, block_kv: int, family: str
) -> list[LayoutChoice]:
    """The candidates of one family ("auto": of every family that applies to the pattern)."""
    auto = family == "auto"
    same_grid = canvas.shape == kv_canvas.shape
    choices: list[LayoutChoice] = []
    if auto or family == "identity":
        choices.append(LayoutChoice("identity", None, None))
    spatial = canvas.ndim > 1 and same_grid and reach(pattern, canvas) != canvas.shape
    if family == "tiled" or (auto and spatial):
        nd = canvas.ndim == kv_canvas.ndim
        q_view, kv_view = (canvas.shape, kv_canvas.shape) if nd else ((canvas.size,), (kv_canvas.size,))
        sees = reach(pattern, canvas) if nd else q_view
        for qp, kp in shortlist(q_view, sees, block_q, block_kv):
            q_spec = Tiling(q_view, (1,) * len(q_view), qp, (0,) * len(q_view))
            kv_spec = Tiling(kv_view, (1,) * len(kv_view), kp, (0,) * len(kv_view))
            choices.append(LayoutChoice(_pair_name("tiled", q_spec, kv_spec), q_spec, kv_spec))
    if auto or family == "grouped":
        for q_spec, kv_spec in _grouped_specs(pattern, canvas, kv_canvas, block_q, block_kv, family == "grouped"):
            choices.append(LayoutChoice(_pair_name("grouped", q_spec, kv_spec), q_spec, kv_spec))
    if (auto and same_grid) or family == "window-major":
        specs = _window_specs(pattern, canvas, block_q, block_kv) if same_grid else []
        for q_spec, kv_spec in specs:
            choices.append(LayoutChoice(_pair_name("window-major", q_spec, kv_spec), q_spec, kv_spec))
        if family == "window-major" and not specs:
            view = canvas.shape
            q_spec = Tiling(view, (1,) * len(view), _factorizations(block_q, len(view))[-1], (0,) * len(view))
            choices.append(LayoutChoice(_pair_name("window-major", q_spec, None), q_spec, None))
    if auto or family == "gathered":
        tokens = _gathered_tokens(pattern, kv_canvas)
        if tokens is not None and 0 < tokens.size < kv_canvas.size:
            choices.append(LayoutChoice("gathered kv", None, tokens))
        elif family == "gathered":
            choices.append(LayoutChoice("gathered kv (all tokens)", None, np.arange(kv_canvas.size)))
    return choices
