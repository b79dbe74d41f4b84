"""``WindowAttention``: Swin's window attention (shifted or not, with its relative position bias) in one call.

Swin partitions the feature map into windows (after a cyclic shift for shifted blocks), attends inside each
window with ``relative_position_bias_table[relative_position_index]`` added, masks pairs the shift brought
together, and reverses the partition. Here the whole map is one ``maskir.attention`` call over
``Blocks(window, offset=window - shift)`` (equal to the shift plus Swin's mask, DESIGN.md): the planner
lays tokens out window-major, and the bias is a score_mod reading Swin's table by relative map coordinates:
inside a shifted window they differ from the rolled ones by a constant, so relative positions are Swin's.
The table is trainable (maskir's trainable score_mod tensors: gradients from the same backward).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from maskir.ir import Blocks
from maskir.nn.masked import MaskedAttention


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {name}={value!r}.")
    return pair


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """Swin's ``relative_position_index`` [Wh*Ww, Wh*Ww]: for tokens i, j of a window (row-major),
    ``(y_i - y_j + Wh - 1) * (2 Ww - 1) + (x_i - x_j + Ww - 1)``, a row of the bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (relative[..., 0] + window[0] - 1) * (2 * window[1] - 1) + relative[..., 1] + window[1] - 1


def swin_bias(table: torch.Tensor, window: tuple[int, int], width: int) -> Callable:
    """score_mod adding Swin's ``table[row, h]`` (``table`` [(2Wh - 1)(2Ww - 1), heads], read as it is, so a
    trained parameter gets its gradient and its optimizer steps) for flat tokens of a map ``width`` wide:
    ``row`` is ``relative_position_index``'s, from map coordinates. The same bias as
    ``maskir.score_mods.relative_position_bias(table.T.reshape(heads, 2Wh - 1, 2Ww - 1), ...)`` (convention
    "swin"), which would read a reshaped copy."""

    def bias(score, b, h, q_idx, kv_idx):
        dy = q_idx // width - kv_idx // width + (window[0] - 1)
        dx = q_idx % width - kv_idx % width + (window[1] - 1)
        return score + table[dy * (2 * window[1] - 1) + dx, h]

    return bias


class WindowAttention(MaskedAttention):
    """Swin (v1) window attention over a whole map x ``[B, H, W, C]``; ``shift_size`` > 0 is the shifted block.

    Parameters and buffers carry Swin's names and shapes (``qkv``, ``proj``,
    ``relative_position_bias_table`` [(2Wh - 1)(2Ww - 1), heads], ``relative_position_index``), so a Swin
    ``WindowAttention``'s state_dict loads unchanged. H and W must be multiples of the window (Swin pads
    the map first). The output equals Swin's partition / roll / mask / reverse, in one maskir call.
    """

    def __init__(
        self,
        dim: int,
        window_size,
        num_heads: int,
        shift_size=0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        backend: str = "auto",
    ):
        self.window_size = _pair(window_size, "window_size")
        self.shift_size = _pair(shift_size, "shift_size")
        if not all(0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(
                f"shift_size must be in [0, window_size) per dim, got shift_size={shift_size!r}, "
                f"window_size={window_size!r} (Swin shifts by window_size // 2)."
            )
        offset = tuple(w - s if s else 0 for w, s in zip(self.window_size, self.shift_size))
        super().__init__(
            dim,
            num_heads,
            Blocks(self.window_size, offset),
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            backend=backend,
        )
        self.dim = dim
        rows = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))

    def spatial_rank(self) -> int:
        return 2

    def attention_score_mod(self, spatial: tuple[int, ...]) -> Callable:
        if spatial[0] % self.window_size[0] or spatial[1] % self.window_size[1]:
            raise ValueError(
                f"WindowAttention needs a map whose height and width are multiples of window_size="
                f"{self.window_size}, got {spatial}: pad the map first, as Swin does."
            )
        return swin_bias(self.relative_position_bias_table, self.window_size, spatial[1])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"num_heads={self.num_heads}, backend={self.backend!r}"
        )
