"""A tiling: the token order of one side, as residue groups cut into patches.

On a ``view`` grid (the canvas shape, or (N,) for the flat index) token x belongs to the residue group
r = x mod dilation (per dim) and has group coordinates x' = x div dilation; group r spans
L_r = ceil((L - r) / dilation) positions per dim. Each group's grid is cut into patches of ``patch``
positions starting at -offset: tile coordinates t = (x' + offset) div patch, position in the tile
u = (x' + offset) mod patch. Tiles are ordered group-major, then row-major over the tile grid; a tile
lists its tokens row-major over the patch, -1 where the patch sticks out of the group.

- dilation 1, offset 0: ND tiling (each tile is a compact patch, like NATTEN's token permute);
- patch aligned with ``Blocks``/``Stripes`` windows (offset = the window offset): window-major;
- dilation > 1: dilation grouping (each residue class contiguous); with dilation = extent / size per dim
  and patch = size this is MaxViT's grid-major order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np


@dataclass(frozen=True)
class Tiling:
    """Residue groups (``dilation`` per dim of ``view``) cut into ``patch`` tiles shifted by ``offset``."""

    view: tuple[int, ...]
    dilation: tuple[int, ...]
    patch: tuple[int, ...]
    offset: tuple[int, ...]

    def __post_init__(self):
        n = len(self.view)
        if not (len(self.dilation) == len(self.patch) == len(self.offset) == n):
            raise ValueError(f"Tiling needs one dilation, patch and offset per view dim, got {self}.")
        if any(not 0 <= o < p for o, p in zip(self.offset, self.patch)):
            raise ValueError(f"Tiling offsets must lie in [0, patch), got {self.offset} for patch {self.patch}.")

    @property
    def block(self) -> int:
        return prod(self.patch)

    @cached_property
    def groups(self) -> np.ndarray:
        """Residues [G, ndim] of the non-empty groups, row-major."""
        residues = np.indices(self.dilation).reshape(len(self.view), -1).T
        return residues[np.all(residues < np.asarray(self.view), axis=1)]

    @cached_property
    def group_extent(self) -> np.ndarray:
        """[G, ndim] group lengths L_r = ceil((L - r) / dilation)."""
        view, dil = np.asarray(self.view), np.asarray(self.dilation)
        return (view - self.groups + dil - 1) // dil

    @cached_property
    def tile_grid(self) -> np.ndarray:
        """[G, ndim] tiles per dim in each group."""
        return (self.group_extent - 1 + np.asarray(self.offset)) // np.asarray(self.patch) + 1

    @cached_property
    def groups_are_tiles(self) -> bool:
        """Every group fits in one tile (its patch holds the whole group), so tile g is group g."""
        return bool(np.all(self.tile_grid == 1))

    @cached_property
    def group_base(self) -> np.ndarray:
        """[G] index of each group's first tile."""
        sizes = np.prod(self.tile_grid, axis=1)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def n_tiles(self) -> int:
        return int(np.prod(self.tile_grid, axis=1).sum())

    @cached_property
    def order(self) -> np.ndarray:
        """Kernel position -> original token (length n_tiles * block, -1 padding)."""
        n = len(self.view)
        x = np.indices(self.view).reshape(n, -1)
        dil, offset, patch = (np.asarray(a)[:, None] for a in (self.dilation, self.offset, self.patch))
        residue, inner = x % dil, x // dil + offset
        t, u = inner // patch, inner % patch
        group_index = np.full(self.dilation, -1, dtype=np.int64)
        group_index[tuple(self.groups.T)] = np.arange(self.groups.shape[0])
        g = group_index[tuple(residue)]
        grid = self.tile_grid[g].T  # [ndim, N]
        tile = np.zeros(x.shape[1], dtype=np.int64)
        pos = np.zeros(x.shape[1], dtype=np.int64)
        for d in range(n):
            tile = tile * grid[d] + t[d]
            pos = pos * self.patch[d] + u[d]
        order = np.full(self.n_tiles * self.block, -1, dtype=np.int64)
        order[(self.group_base[g] + tile) * self.block + pos] = np.arange(x.shape[1])
        order.flags.writeable = False  # shared by the sides and layouts built from this tiling
        return order

    def describe(self) -> str:
        """Short text: patch, then dilation and offset when used, e.g. '8x8', '128 d4', '8x8+4'."""
        text = "x".join(map(str, self.patch))
        if any(d > 1 for d in self.dilation):
            text += " d" + "x".join(map(str, self.dilation))
        if any(self.offset):
            text += " +" + "x".join(map(str, self.offset))
        return text
