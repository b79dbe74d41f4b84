"""Tile summaries of one side (q or kv) under a layout, and the tiles that meet a region.

A tile is summarised, vectorized over all tiles, by what the classifiers need:

- flat: ``count`` valid tokens, ``lo``/``hi`` their min and max flat index, and a side-wide ``step``: every
  token of a tile is congruent to ``lo`` modulo ``step``; ``run`` marks tiles that hold *every* such token
  between lo and hi (the tile is the arithmetic progression lo, lo + step, ..., hi);
- per dim: ``box_lo``/``box_hi`` [ndim, n_tiles] coordinate hulls, a side-wide ``coord_step`` per dim, and
  ``box`` marking tiles that are exactly the product of their per-dim progressions.

``run`` and ``box`` tell the classifiers when their min/max arithmetic is exact; without them it is only
sound. ``meeting`` returns, per q tile, the tiles of this side that may hold a token of a flat range or a
coordinate box: a superset, as column segments of the tile grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from math import prod

import numpy as np

from maskir.canvas import Canvas
from maskir.planner.runs import ragged_arange
from maskir.planner.tiling import Tiling


def box_of_flat_range(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim coordinate hull [ndim, n] of the flat index ranges [lo, hi] on a row-major grid.

    In dim d (inner size I, extent L) the range visits u mod L for every u in [lo // I, hi // I]: the
    hull is exact unless the visited values wrap around, where it widens to [0, L - 1].
    """
    box_lo, box_hi = [], []
    for d, extent in enumerate(shape):
        inner = prod(shape[d + 1 :])
        u0, u1 = lo // inner, hi // inner
        whole = (u1 - u0 + 1 >= extent) | (u0 % extent > u1 % extent)
        box_lo.append(np.where(whole, 0, u0 % extent))
        box_hi.append(np.where(whole, extent - 1, u1 % extent))
    return np.stack(box_lo), np.stack(box_hi)


def flat_of_box(shape: tuple[int, ...], coords: np.ndarray) -> np.ndarray:
    """Flat row-major index of coordinates [ndim, n]."""
    flat = np.zeros(coords.shape[1:], dtype=np.int64)
    for d, extent in enumerate(shape):
        flat = flat * extent + coords[d]
    return flat


@dataclass(frozen=True, eq=False)
class Region:
    """Per q tile, where a node may find allowed kv tokens: a flat range, a coordinate box, residues.

    Any field may be None (no constraint). ``residue`` is (space, moduli, wanted): kv tokens must have
    x_d = wanted[d, row] mod moduli[d] (wanted -1: any), where x is the flat index (space "flat", one
    modulus) or the coordinates (space "coords", one modulus per dim).
    """

    n_rows: int
    flat_lo: np.ndarray | None = None
    flat_hi: np.ndarray | None = None
    box_lo: np.ndarray | None = None  # [ndim, n_q_tiles]
    box_hi: np.ndarray | None = None
    residue: tuple[str, tuple[int, ...], np.ndarray] | None = None


class Side:
    """Tiles of one side; subclasses fill the flat summaries (``count``, ``lo``, ``hi``) and ``tokens``."""

    canvas: Canvas
    block: int
    n_tiles: int
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    step: int = 1
    coord_step: tuple[int, ...]
    monotone: bool = False  # lo and hi are non-decreasing in the tile index
    name: str

    @cached_property
    def run(self) -> np.ndarray:
        return self.count == (self.hi - self.lo) // self.step + 1

    @cached_property
    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.token_matrix(np.arange(self.n_tiles))
        valid = tokens >= 0
        coords = np.stack(self.canvas.coords(np.where(valid, tokens, 0)))
        big = np.iinfo(np.int64).max
        return np.where(valid, coords, big).min(axis=2), np.where(valid, coords, -1).max(axis=2)

    @property
    def box_lo(self) -> np.ndarray:
        return self._boxes[0]

    @property
    def box_hi(self) -> np.ndarray:
        return self._boxes[1]

    @cached_property
    def box(self) -> np.ndarray:
        steps = np.asarray(self.coord_step)[:, None]
        return self.count == np.prod((self.box_hi - self.box_lo) // steps + 1, axis=0)

    def token_matrix(self, tiles: np.ndarray) -> np.ndarray:
        """Original tokens [len(tiles), block] of the given tiles, -1 for padding."""
        raise NotImplementedError

    @cached_property
    def packed(self) -> np.ndarray:
        """Token matrix [n_tiles, block] of every tile with its ``count`` tokens first (descending), then -1:
        a tile's tokens as a prefix, for loops and samples that visit only real tokens."""
        return -np.sort(-self.token_matrix(np.arange(self.n_tiles)), axis=1)

    def count_lo_below(self, x: np.ndarray, inclusive: bool = False) -> np.ndarray:
        """Monotone sides: number of tiles with lo < x (lo <= x when ``inclusive``)."""
        return np.searchsorted(self.lo, x, side="right" if inclusive else "left")

    def count_hi_below(self, x: np.ndarray, inclusive: bool = False) -> np.ndarray:
        """Monotone sides: number of tiles with hi < x (hi <= x when ``inclusive``)."""
        return np.searchsorted(self.hi, x, side="right" if inclusive else "left")

    def unary_counts(self, prefix_count) -> np.ndarray:
        """Per tile, how many tokens x satisfy a predicate given by its prefix count F(n) = #{x < n}."""
        tokens = self.token_matrix(np.arange(self.n_tiles))
        valid = tokens >= 0
        hits = prefix_count(np.where(valid, tokens, 0) + 1) - prefix_count(np.where(valid, tokens, 0))
        return np.where(valid, hits, 0).sum(axis=1)

    def meeting(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column segments (q row, first tile, stop tile) of tiles that may meet ``region`` per q row."""
        raise NotImplementedError

    def _flat_range(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """The region as a flat range per q row (a box becomes the range between its corners)."""
        size = self.canvas.size
        lo = np.zeros(region.n_rows, dtype=np.int64) if region.flat_lo is None else region.flat_lo
        hi = np.full(region.n_rows, size - 1, dtype=np.int64) if region.flat_hi is None else region.flat_hi
        if region.box_lo is not None:
            b_lo = flat_of_box(self.canvas.shape, np.clip(region.box_lo, 0, np.asarray(self.canvas.shape)[:, None] - 1))
            b_hi = flat_of_box(self.canvas.shape, np.clip(region.box_hi, 0, np.asarray(self.canvas.shape)[:, None] - 1))
            lo, hi = np.maximum(lo, b_lo), np.minimum(hi, b_hi)
            hi = np.where(np.any(region.box_lo > region.box_hi, axis=0), -1, hi)
        return np.clip(lo, 0, size), np.clip(hi, -1, size - 1)


class IdentitySide(Side):
    """Position p holds token p: tile t is the flat range [t * block, min((t + 1) * block, N)).

    Blocks are powers of two (``plan`` checks them), so tile arithmetic is shifts: with block = 2^s,
    #{t : t * block < x} = ceil(x / block) and #{t : t * block + block - 1 < x} = floor(x / block).
    """

    def __init__(self, canvas: Canvas, block: int):
        assert block > 0 and block & (block - 1) == 0, f"identity tiles need a power-of-two block, got {block}"
        self.canvas, self.block, self.name = canvas, block, "identity"
        self.shift = block.bit_length() - 1
        self.n_tiles = -(-canvas.size // block)
        self.lo = np.arange(self.n_tiles, dtype=np.int64) * block
        self.hi = np.minimum(self.lo + block, canvas.size) - 1
        self.count = self.hi - self.lo + 1
        self.coord_step = (1,) * canvas.ndim
        self.monotone = True

    @cached_property
    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        return box_of_flat_range(self.canvas.shape, self.lo, self.hi)

    @cached_property
    def run(self) -> np.ndarray:
        return np.ones(self.n_tiles, dtype=bool)

    def token_matrix(self, tiles: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tiles, dtype=np.int64)[:, None] * self.block + np.arange(self.block)
        return np.where(tokens < self.canvas.size, tokens, -1)

    def unary_counts(self, prefix_count) -> np.ndarray:
        return prefix_count(self.hi + 1) - prefix_count(self.lo)

    def _tile_count(self, count: np.ndarray) -> np.ndarray:
        """``count`` clipped to [0, n_tiles], in place."""
        np.maximum(count, 0, out=count)
        return np.minimum(count, self.n_tiles, out=count)

    def count_lo_below(self, x: np.ndarray, inclusive: bool = False) -> np.ndarray:
        round_up = self.block if inclusive else self.block - 1  # ceil(x / block), or of x + 1 when inclusive
        return self._tile_count((x + round_up) >> self.shift)  # lo = t * block < x

    def count_hi_below(self, x: np.ndarray, inclusive: bool = False) -> np.ndarray:
        below = self._tile_count((x + 1 if inclusive else x) >> self.shift)  # t * block + block - 1 < x
        if self.canvas.size % self.block:
            below[x > self.canvas.size - (2 if inclusive else 1)] = self.n_tiles  # the ragged last tile ends at N - 1
        return below

    def meeting(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self._flat_range(region)
        rows = np.arange(lo.shape[0])
        return rows, lo // self.block, np.where(hi >= lo, hi // self.block + 1, 0)


class ExplicitSide(Side):
    """A side with an explicit token order (length n_tiles * block, -1 padding)."""

    order: np.ndarray

    def _summarise(self) -> None:
        tokens = self.order.reshape(self.n_tiles, self.block)
        valid = tokens >= 0
        self.count = valid.sum(axis=1)
        self.lo = np.where(valid, tokens, np.iinfo(np.int64).max).min(axis=1)
        self.hi = tokens.max(axis=1)

    def token_matrix(self, tiles: np.ndarray) -> np.ndarray:
        return self.order.reshape(self.n_tiles, self.block)[np.asarray(tiles, dtype=np.int64)]


class GatheredSide(ExplicitSide):
    """A sorted subset of the tokens, packed into tiles (a gathered part: e.g. only the summary columns)."""

    def __init__(self, canvas: Canvas, block: int, tokens: np.ndarray, name: str):
        self.canvas, self.block, self.name = canvas, block, name
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.n_tiles = max(1, -(-self.tokens.size // block))
        self.order = np.full(self.n_tiles * block, -1, dtype=np.int64)
        self.order[: self.tokens.size] = self.tokens
        gaps = np.unique(np.diff(self.tokens))
        self.step = int(gaps[0]) if gaps.size == 1 else 1
        self.coord_step = (1,) * canvas.ndim
        self.monotone = True
        self._summarise()

    def meeting(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self._flat_range(region)
        first = np.searchsorted(self.tokens, lo, side="left")
        last = np.searchsorted(self.tokens, hi, side="right")
        rows = np.arange(lo.shape[0])
        return rows, first // self.block, np.where(last > first, (last - 1) // self.block + 1, 0)


class TiledSide(ExplicitSide):
    """Tokens grouped by residue and cut into patches (see ``layouts.Tiling``)."""

    def __init__(self, canvas: Canvas, block: int, tiling: Tiling):
        self.canvas, self.block, self.tiling = canvas, block, tiling
        self.name = tiling.describe()
        self.order = tiling.order
        self.n_tiles = self.order.size // block
        flat_view = len(tiling.view) == 1
        self.step = tiling.dilation[0] if flat_view else 1
        self.coord_step = tiling.dilation if len(tiling.view) == canvas.ndim else (1,) * canvas.ndim
        self.monotone = flat_view and tiling.dilation == (1,)
        self._summarise()

    def _residues_apply(self, space: str) -> bool:
        """Groups are residues of the view coordinates: flat residues on a flat view, coordinate ones on the canvas."""
        view_dims = len(self.tiling.view)
        return view_dims == 1 if space == "flat" else view_dims == self.canvas.ndim

    def meeting(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tiling = self.tiling
        view = np.asarray(tiling.view)[:, None]
        if len(tiling.view) == 1:
            lo, hi = self._flat_range(region)
            lo, hi = lo[None], hi[None]
        else:
            lo = np.zeros((view.shape[0], region.n_rows), dtype=np.int64)
            hi = np.broadcast_to(view - 1, lo.shape).copy()
            if region.flat_lo is not None or region.flat_hi is not None:
                f_lo, f_hi = self._flat_range(Region(region.n_rows, region.flat_lo, region.flat_hi))
                b_lo, b_hi = box_of_flat_range(self.canvas.shape, f_lo, np.maximum(f_hi, f_lo))
                empty = f_hi < f_lo
                lo, hi = np.maximum(lo, b_lo), np.where(empty, -1, np.minimum(hi, b_hi))
            if region.box_lo is not None:
                lo, hi = np.maximum(lo, region.box_lo), np.minimum(hi, region.box_hi)
        groups = tiling.groups  # [G, ndim] residues
        dil = np.asarray(tiling.dilation)[:, None, None]
        res = groups.T[:, None, :]  # [ndim, 1, G]
        g_lo = -((res - lo[:, :, None]) // dil)  # ceil((lo - r) / d)
        g_hi = (hi[:, :, None] - res) // dil
        g_lo = np.maximum(g_lo, 0)
        g_hi = np.minimum(g_hi, tiling.group_extent.T[:, None, :] - 1)
        live = np.all(g_lo <= g_hi, axis=0)  # [rows, G]
        if region.residue is not None and self._residues_apply(region.residue[0]):
            _, moduli, wanted = region.residue
            for d, m in enumerate(moduli):
                if m > 1 and tiling.dilation[d] % m == 0:
                    live &= (wanted[d][:, None] < 0) | (groups[None, :, d] % m == wanted[d][:, None])
        if tiling.groups_are_tiles:  # tile g is group g: a row's runs of live groups are its segments
            edges = np.diff(np.pad(live, ((0, 0), (1, 1))).view(np.int8), axis=1)
            rows, start = np.nonzero(edges == 1)
            return rows, start, np.nonzero(edges == -1)[1]
        offset, patch = np.asarray(tiling.offset)[:, None, None], np.asarray(tiling.patch)[:, None, None]
        t_lo, t_hi = (g_lo + offset) // patch, (g_hi + offset) // patch
        rows, grp = np.nonzero(live)
        t_lo, t_hi = t_lo[:, rows, grp], t_hi[:, rows, grp]  # [ndim, E]
        if t_lo.shape[0] == 1:  # one dim: a segment per (row, group), its tiles consecutive
            base = tiling.group_base[grp]
            return rows, base + t_lo[0], base + t_hi[0] + 1
        extent = t_hi - t_lo + 1
        lead = np.prod(extent[:-1], axis=0)
        entry = np.repeat(np.arange(rows.size), lead)
        within = ragged_arange(np.zeros(rows.size, dtype=np.int64), lead)
        grid = tiling.tile_grid[grp][entry].T  # [ndim, S]
        tile = np.zeros(entry.shape, dtype=np.int64)
        for d in reversed(range(extent.shape[0] - 1)):  # mixed radix: the leading tile coords of each segment
            coord = t_lo[d][entry] + within % extent[d][entry]
            within = within // extent[d][entry]
            tile = tile + coord * np.prod(grid[d + 1 :], axis=0)
        base = tiling.group_base[grp][entry] + tile
        return rows[entry], base + t_lo[-1][entry], base + t_hi[-1][entry] + 1


def make_side(canvas: Canvas, block: int, spec) -> Side:
    """The side for a layout spec: None (identity), a ``Tiling``, or a sorted token array (gathered)."""
    if spec is None:
        return _identity_side(canvas, block)
    if isinstance(spec, Tiling):
        return _tiled_side(canvas, block, spec)
    return GatheredSide(canvas, block, spec, "gathered")


@lru_cache(maxsize=16)
def _identity_side(canvas: Canvas, block: int) -> IdentitySide:
    """Identity sides are priced for several block pairs (each q side against every kv block): build each once."""
    return IdentitySide(canvas, block)


@lru_cache(maxsize=16)
def _tiled_side(canvas: Canvas, block: int, tiling: Tiling) -> TiledSide:
    """Tiled sides are priced for several block pairs and parts: build each (O(N)) once."""
    return TiledSide(canvas, block, tiling)
