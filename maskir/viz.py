"""Pictures of a mask: pure functions of a dense bool array [Nq, Nkv] (q down, kv across).

``ascii_mask`` pools the mask into at most ``height`` x ``width`` cells and draws one character
per cell: ' ' no allowed pair, '.' some, '#' all. ``save_mask_png`` writes the full mask with matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CELL_CHARS = (" ", ".", "#")
"""Characters for a cell with no allowed pair, some, and all of them."""


def _cell_starts(extent: int, max_cells: int) -> np.ndarray:
    """Start index of each cell when ``extent`` rows are pooled into at most ``max_cells`` equal cells."""
    step = -(-extent // max_cells)
    return np.arange(0, extent, step)


def pool_counts(mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Allowed pairs and total pairs per cell of the pooled grid (at most height x width cells)."""
    rows, cols = _cell_starts(mask.shape[0], height), _cell_starts(mask.shape[1], width)
    allowed = np.add.reduceat(np.add.reduceat(mask.astype(np.int64), rows, axis=0), cols, axis=1)
    heights = np.diff(np.append(rows, mask.shape[0]))
    widths = np.diff(np.append(cols, mask.shape[1]))
    return allowed, np.outer(heights, widths)


def ascii_mask(mask: np.ndarray, width: int = 64, height: int = 64) -> str:
    """The mask as text in a frame, one character per pooled cell (see ``CELL_CHARS``)."""
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"ascii_mask needs a non-empty 2-D bool mask, got dtype={mask.dtype}, shape={mask.shape}.")
    if width < 1 or height < 1:
        raise ValueError(f"ascii_mask needs width and height >= 1, got {width=}, {height=}.")
    allowed, total = pool_counts(mask, height, width)
    level = np.where(allowed == 0, 0, np.where(allowed == total, 2, 1))
    border = "+" + "-" * level.shape[1] + "+"
    rows = ["|" + "".join(CELL_CHARS[x] for x in row) + "|" for row in level]
    return "\n".join([border, *rows, border])


def save_mask_png(mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Write the mask as a black (allowed) / white picture with q down and kv across; returns the path.

    Uses matplotlib's object API (no pyplot), so the caller's matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"save_mask_png needs a 2-D mask, got shape {mask.shape}.")
    path = Path(path)
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.imshow(mask, cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xlabel("kv token")
    ax.set_ylabel("q token")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
