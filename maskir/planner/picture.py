"""Pictures of a plan: the block map (FULL / PARTIAL / EMPTY per tile) and, for small canvases, the token mask.

``draw_plan(plan, path)`` writes a PNG with one block map per part (q tiles down, kv tiles across, in
the part's layout order) and the layout, blocks and efficiency in the titles. ``show_tokens=True`` adds
the per-token mask in the first part's layout order, with the tile grid drawn over it, so a good layout
shows the allowed pairs gathered into few tiles. matplotlib is imported on first use (object API, Agg
canvas: the caller's backend is left alone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.plan import Plan, PlanPart

MAX_MAP_SIDE = 1024
"""Block maps with more tiles per side are drawn from evenly sampled rows and columns."""
MAX_TOKEN_PICTURE = 4096
"""Largest canvas (tokens per side) whose token mask ``show_tokens`` draws."""
COLOURS = {EMPTY: "#ffffff", FULL: "#1f4e8c", PARTIAL: "#f4a259"}
"""Tile class colours: EMPTY white, FULL dark blue, PARTIAL orange."""


def block_map(part: PlanPart, head: int = 0) -> np.ndarray:
    """Tile classes [rows, cols] of one part for one head (sampled down to MAX_MAP_SIDE per side)."""
    runs = part.tables[part.head_table[head]].runs
    rows = np.unique(np.linspace(0, runs.n_rows - 1, min(runs.n_rows, MAX_MAP_SIDE)).astype(np.int64))
    cols = np.unique(np.linspace(0, runs.n_cols - 1, min(runs.n_cols, MAX_MAP_SIDE)).astype(np.int64))
    return runs.kind_at(rows[:, None] * runs.n_cols + cols[None, :])


def _layout_mask(plan: Plan, part: PlanPart, head: int) -> np.ndarray:
    """The token mask with rows and columns in the part's layout order (padding slots stay empty)."""
    mask = plan.to_mask(head)
    q_order = part.layout.q_tokens if part.layout.q_tokens is not None else np.arange(plan.canvas.size)
    kv_order = part.layout.kv_tokens if part.layout.kv_tokens is not None else np.arange(plan.kv_canvas.size)
    out = np.zeros((q_order.size, kv_order.size), dtype=bool)
    q_ok, kv_ok = q_order >= 0, kv_order >= 0
    out[np.ix_(q_ok, kv_ok)] = mask[np.ix_(q_order[q_ok], kv_order[kv_ok])]
    return out


def draw_plan(plan: Plan, path: str | Path, show_tokens: bool = False, head: int = 0) -> Path:
    """Write the plan's block map(s) (and with ``show_tokens`` the token mask) as a PNG; returns the path."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    if show_tokens and max(plan.canvas.size, plan.kv_canvas.size) > MAX_TOKEN_PICTURE:
        raise ValueError(
            f"draw_plan show_tokens draws canvases of at most {MAX_TOKEN_PICTURE} tokens, got "
            f"{plan.canvas.size} x {plan.kv_canvas.size}; use show_tokens=False for the block map."
        )
    path = Path(path)
    panels = len(plan.parts) + int(show_tokens)
    fig = Figure(figsize=(4.5 * panels, 4.8))
    colours = ListedColormap([COLOURS[EMPTY], COLOURS[FULL], COLOURS[PARTIAL]])
    counts = plan.tile_counts
    efficiency = "" if plan.dynamic else f", efficiency {plan.stats.efficiency:.2f}"
    fig.suptitle(
        f"{plan.pattern} on {plan.canvas}\nblocks {plan.block_q}x{plan.block_kv}: {counts.full_tiles} full "
        f"(blue) + {counts.partial_tiles} partial (orange) tiles{efficiency}",
        fontsize=8,
    )
    for i, part in enumerate(plan.parts):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.imshow(block_map(part, head), cmap=colours, vmin=0, vmax=2, interpolation="nearest", aspect="auto")
        ax.set_title(f"part {i}: layout {part.layout.name}", fontsize=8)
        ax.set_xlabel("kv tile")
        ax.set_ylabel("q tile")
    if show_tokens:
        part = plan.parts[0]
        ax = fig.add_subplot(1, panels, panels)
        ax.imshow(_layout_mask(plan, part, head), cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        for edge in np.arange(1, part.n_q_tiles) * plan.block_q:
            ax.axhline(edge - 0.5, color=COLOURS[PARTIAL], linewidth=0.3, alpha=0.4)
        for edge in np.arange(1, part.n_kv_tiles) * plan.block_kv:
            ax.axvline(edge - 0.5, color=COLOURS[PARTIAL], linewidth=0.3, alpha=0.4)
        ax.set_title(f"tokens in layout order ({part.layout.name})", fontsize=8)
        ax.set_xlabel("kv position")
        ax.set_ylabel("q position")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
