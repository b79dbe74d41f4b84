"""A straightforward Swin window attention (Liu et al. 2021, as in its reference code): cyclic shift,
window partition, attention with the relative position bias and the shift mask, reverse, shift back.

The peer ``maskir.nn.WindowAttention`` is tested against (tests/test_nn_layers.py) and timed beside
(benchmarks/layers.py); it reads the weights of a ``WindowAttention`` (same names as Swin's).
"""

from __future__ import annotations

import torch


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
