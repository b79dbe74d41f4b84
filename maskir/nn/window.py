"""``WindowAttention``: Swin's window attention (shifted or not, with its relative position bias) in one call.

Swin partitions the feature map into windows (after a cyclic shift for shifted blocks), attends inside each
window with ``relative_position_bias_table[relative_position_index]`` added, masks pairs the shift brought
together, and reverses the partition. Here the whole map is one ``maskir.attention`` call over
``Blocks(window, offset=window - shift)`` (equal to the shift plus Swin's mask, DESIGN.md): the planner
lays tokens out window-major, and the bias is a score_mod reading Swin's table by relative map coordinates:
inside a shifted window they differ from the rolled ones by a constant, so relative positions are Swin's.
The table is trainable (maskir's trainable score_mod tensors: gradients from the same backward).

``WindowAttentionV2`` is Swin v2's (Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution",
CVPR 2022, arXiv:2111.09883): scaled cosine attention and a continuous position bias, a table that an MLP
computes from log-spaced relative coordinates on every forward; the same one call reads that table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)
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


class _ShiftedWindows(MaskedAttention):
    """What Swin v1 and v2 share: (shifted) windows as ``Blocks(window, offset=window - shift)`` over a
    whole map [B, H, W, C] whose sides are multiples of the window, Swin's ``relative_position_index``."""

    def __init__(self, dim: int, window_size, num_heads: int, shift_size, *, backend: str, **attention):
        self.window_size = _pair(window_size, "window_size")
        self.shift_size = _pair(shift_size, "shift_size")
        if not all(0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(
                f"shift_size must be in [0, window_size) per dim, got shift_size={shift_size!r}, "
                f"window_size={window_size!r} (Swin shifts by window_size // 2)."
            )
        offset = tuple(w - s if s else 0 for w, s in zip(self.window_size, self.shift_size))
        super().__init__(dim, num_heads, Blocks(self.window_size, offset), backend=backend, **attention)
        self.dim = dim
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))

    def spatial_rank(self) -> int:
        return 2

    def bias_table(self) -> torch.Tensor:
        """The [(2Wh - 1)(2Ww - 1), heads] table ``relative_position_index`` reads."""
        raise NotImplementedError

    def attention_score_mod(self, spatial: tuple[int, ...]) -> Callable:
        if spatial[0] % self.window_size[0] or spatial[1] % self.window_size[1]:
            raise ValueError(
                f"{type(self).__name__} needs a map whose height and width are multiples of window_size="
                f"{self.window_size}, got {spatial}: pad the map first, as Swin does."
            )
        return swin_bias(self.bias_table(), self.window_size, spatial[1])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"num_heads={self.num_heads}, backend={self.backend!r}"
        )


class WindowAttention(_ShiftedWindows):
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
        super().__init__(
            dim,
            window_size,
            num_heads,
            shift_size,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            backend=backend,
        )
        rows = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias_table(self) -> torch.Tensor:
        return self.relative_position_bias_table  # the parameter itself: the kernels read it in place


MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
"""Swin v2 clamps its learnable log logit scale here (a temperature of at most 100)."""
CPB_HIDDEN = 512
"""The width of Swin v2's continuous position bias MLP (2 -> 512 -> heads)."""


def log_spaced_coordinates(window: tuple[int, int], pretrained_window: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Swin v2's ``relative_coords_table`` [1, 2Wh - 1, 2Ww - 1, 2]: each relative offset (dy, dx) divided by
    (pretrained window or window) - 1 per dim, times 8, then ``sign(t) log2(|t| + 1) / log2(8)``. A side of 1
    divides by 1 (its only offset is 0; Swin's code divides 0 by 0 there)."""
    spans = [torch.arange(-(w - 1), w, dtype=torch.float32) for w in window]
    table = torch.stack(torch.meshgrid(*spans, indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
    reference = pretrained_window if pretrained_window[0] > 0 else window
    table = table / torch.tensor([max(r - 1, 1) for r in reference], dtype=torch.float32) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


class WindowAttentionV2(_ShiftedWindows):
    """Swin v2 window attention over a whole map x ``[B, H, W, C]``; ``shift_size`` > 0 is the shifted block.

    scores = cos(q_i, k_j) * exp(min(logit_scale[h], log 100)) + 16 sigmoid(cpb_mlp(relative_coords_table))
    [relative_position_index[i, j], h], softmax within (shifted) windows, as Swin v2's ``WindowAttention``.
    The temperature is folded into q (q / |q| * exp(...), k / |k|, kernel scale 1), so the kernels see plain
    dot products; the MLP's table is computed on every forward and read by the kernels as a trainable
    score_mod tensor, so gradients reach ``cpb_mlp``. qkv has no bias; ``q_bias`` and ``v_bias`` (k none).

    Names and shapes are Swin v2's (``logit_scale`` [heads, 1, 1], ``cpb_mlp.0`` / ``cpb_mlp.2``, ``q_bias``,
    ``v_bias``, ``qkv.weight``, ``proj``, buffers ``relative_coords_table`` and ``relative_position_index``),
    so its state_dict loads unchanged. ``pretrained_window_size`` (0: the window) scales the coordinates as
    there. One difference: Swin masks the pairs a shift brings together by adding -100, which at large
    temperatures (scores up to 116) leaves them some weight; here they are excluded exactly.
    """

    def __init__(
        self,
        dim: int,
        window_size,
        num_heads: int,
        shift_size=0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        pretrained_window_size=0,
        *,
        backend: str = "auto",
    ):
        super().__init__(
            dim, window_size, num_heads, shift_size, qkv_bias=False, qk_scale=1.0, proj_drop=proj_drop, backend=backend
        )
        self.pretrained_window_size = _pair(pretrained_window_size, "pretrained_window_size")
        if any(p < 0 for p in self.pretrained_window_size):
            raise ValueError(f"pretrained_window_size must be >= 0 (0: the window), got {pretrained_window_size!r}.")
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, CPB_HIDDEN, bias=True), nn.ReLU(inplace=True), nn.Linear(CPB_HIDDEN, num_heads, bias=False)
        )
        coordinates = log_spaced_coordinates(self.window_size, self.pretrained_window_size)
        self.register_buffer("relative_coords_table", coordinates)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None

    def bias_table(self) -> torch.Tensor:
        """16 sigmoid(cpb_mlp(relative_coords_table)) as [(2Wh - 1)(2Ww - 1), heads] (a function of cpb_mlp)."""
        return 16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads))

    def attention_score_mod(self, spatial: tuple[int, ...]) -> Callable:
        with torch.no_grad():  # the kernels are built with a detached table; each forward passes its own
            return super().attention_score_mod(spatial)

    def score_mod_tensors(self) -> list[torch.Tensor]:
        return [self.bias_table()]

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bias = None if self.q_bias is None else torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(x.shape[0], -1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        temperature = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        return F.normalize(q, dim=-1) * temperature, F.normalize(k, dim=-1), v
