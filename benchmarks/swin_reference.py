"""A straightforward Swin window attention (Liu et al. 2021, as in its reference code): cyclic shift,
window partition, attention with the relative position bias and the shift mask, reverse, shift back.

The peer ``maskir.nn.WindowAttention`` is tested against (tests/test_nn_layers.py) and timed beside
(benchmarks/layers.py); it reads the weights of a ``WindowAttention`` (same names as Swin's).
``SwinV2WindowAttention`` is Swin v2's ``WindowAttention`` in the form of its reference code
(microsoft/Swin-Transformer, ``models/swin_transformer_v2.py``), run on windows by ``swin_v2_block_attention``
(the same roll / partition / mask / reverse), the peer of ``maskir.nn.WindowAttentionV2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)
from torch import nn


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, Wh * Ww, C], windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """The inverse of ``window_partition``."""
    b = windows.shape[0] // (h // window[0] * (w // window[1]))
    x = windows.view(b, h // window[0], w // window[1], window[0], window[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def swin_shift_mask(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Swin's attn_mask [windows, N, N]: -100 between regions the cyclic shift brought into one window."""
    image = torch.zeros(1, h, w, 1)
    regions = [(slice(0, -wi), slice(-wi, -s), slice(-s, None)) for wi, s in zip(window, shift)]
    for label, (rows, cols) in enumerate((r, c) for r in regions[0] for c in regions[1]):
        image[:, rows, cols, :] = label
    labels = window_partition(image, window).squeeze(-1)
    return (labels[:, None, :] != labels[:, :, None]).double() * -100.0


def swin_window_attention(layer, x: torch.Tensor) -> torch.Tensor:
    """Swin v1's block body around its WindowAttention, with ``layer``'s weights, on x [B, H, W, C]."""
    b, h, w, c = x.shape
    window, shift = layer.window_size, layer.shift_size
    shifted = any(shift)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if shifted else x
    windows = window_partition(x, window)
    n = windows.shape[1]
    q, k, v = layer.qkv(windows).reshape(-1, n, 3, layer.num_heads, c // layer.num_heads).permute(2, 0, 3, 1, 4)
    scores = (q * layer.scale) @ k.transpose(-2, -1)
    bias = layer.relative_position_bias_table[layer.relative_position_index.view(-1)].view(n, n, -1)
    scores = scores + bias.permute(2, 0, 1)[None]
    if shifted:
        mask = swin_shift_mask(h, w, window, shift).to(scores)
        scores = (scores.view(b, -1, layer.num_heads, n, n) + mask[None, :, None]).view(-1, layer.num_heads, n, n)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    out = window_reverse(layer.proj(out), window, h, w)
    return torch.roll(out, shifts=shift, dims=(1, 2)) if shifted else out


class SwinV2WindowAttention(nn.Module):
    """Swin v2's window attention on windows x [B * windows, N, C] (its reference code's form): cosine
    attention with a clamped learnable temperature, the continuous position bias MLP on log-spaced
    coordinates (16 sigmoid), q_bias / v_bias, and Swin's additive mask."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, pretrained_window_size=(0, 0)):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))), requires_grad=True)
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        relative_coords_h = torch.arange(-(self.window_size[0] - 1), self.window_size[0], dtype=torch.float32)
        relative_coords_w = torch.arange(-(self.window_size[1] - 1), self.window_size[1], dtype=torch.float32)
        relative_coords_table = (
            torch.stack(torch.meshgrid([relative_coords_h, relative_coords_w], indexing="ij"))
            .permute(1, 2, 0)
            .contiguous()
            .unsqueeze(0)
        )  # 1, 2*Wh-1, 2*Ww-1, 2
        if pretrained_window_size[0] > 0:
            relative_coords_table[:, :, :, 0] /= pretrained_window_size[0] - 1
            relative_coords_table[:, :, :, 1] /= pretrained_window_size[1] - 1
        else:
            relative_coords_table[:, :, :, 0] /= self.window_size[0] - 1
            relative_coords_table[:, :, :, 1] /= self.window_size[1] - 1
        relative_coords_table *= 8  # normalize to -8, 8
        relative_coords_table = (
            torch.sign(relative_coords_table) * torch.log2(torch.abs(relative_coords_table) + 1.0) / math.log2(8)
        )
        self.register_buffer("relative_coords_table", relative_coords_table)
        coords_h = torch.arange(self.window_size[0])
        coords_w = torch.arange(self.window_size[1])
        coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))  # 2, Wh, Ww
        coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
        relative_coords[:, :, 0] += self.window_size[0] - 1  # shift to start from 0
        relative_coords[:, :, 1] += self.window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape  # noqa: N806 (the reference code's names)
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        attn = attn * logit_scale
        relative_position_bias_table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        relative_position_bias = relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1
        )  # Wh*Ww,Wh*Ww,nH
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()  # nH, Wh*Ww, Wh*Ww
        relative_position_bias = 16 * torch.sigmoid(relative_position_bias)
        attn = attn + relative_position_bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]  # noqa: N806
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


def swin_v2_block_attention(attention: nn.Module, x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Swin v2's block body around ``attention`` (windows in, windows out) on x [B, H, W, C]: roll by
    -shift, partition, attention with the shift mask, reverse, roll back."""
    _, h, w, _ = x.shape
    window = tuple(attention.window_size)
    shifted = any(shift)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if shifted else x
    mask = swin_shift_mask(h, w, window, shift).to(x) if shifted else None
    out = window_reverse(attention(window_partition(x, window), mask), window, h, w)
    return torch.roll(out, shifts=shift, dims=(1, 2)) if shifted else out
