"""Swin window attention (Liu et al. 2021) with its relative position bias table trained, in one maskir call
per map: shifted windows are ``Blocks(window, offset)`` (no roll, no partition), the table a score_mod.
Swin v2 (``WindowAttentionV2``): cosine attention, and a bias table that an MLP computes on each forward,
which the same kernels read, so the MLP trains.

Run ``python examples/swin_trainable_bias.py [OUT_DIR]``: a few SGD steps on the table and the
projections, the table's gradient checked against the float64 reference (TVM's CPU kernels on a CPU),
then Swin v2's bias-MLP gradient checked the same way.
"""

import sys

import torch
from example_check import check, draw_block_map

from maskir.nn import WindowAttention, WindowAttentionV2

EMBED_DIM, HEADS, MAP = 32, 2, (8, 8)
STEPS = 3


def shifted_window_attention(backend: str) -> WindowAttention:
    """Swin's shifted block: 4x4 windows shifted by 2, with its [(2*4-1)^2, heads] bias table."""
    return WindowAttention(EMBED_DIM, window_size=4, num_heads=HEADS, shift_size=2, backend=backend)


def table_gradient(layer: WindowAttention, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    layer.zero_grad()
    (layer(x) - target).square().mean().backward()
    return layer.relative_position_bias_table.grad.clone()


def cpb_mlp_gradient(backend: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Swin v2's shifted block; the gradient of its continuous position bias MLP's first layer."""
    torch.manual_seed(1)
    layer = WindowAttentionV2(EMBED_DIM, window_size=4, num_heads=HEADS, shift_size=2, backend=backend)
    (layer(x) - target).square().mean().backward()
    return layer.cpb_mlp[0].weight.grad


def main(out_dir: str = ".") -> None:
    torch.manual_seed(0)
    layer = shifted_window_attention("auto")
    x, target = torch.randn(2, *MAP, EMBED_DIM), torch.randn(2, *MAP, EMBED_DIM)
    reference = shifted_window_attention("reference")
    reference.load_state_dict(layer.state_dict())
    check("d table", table_gradient(layer, x, target), table_gradient(reference, x, target))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    losses = []
    for step in range(STEPS):
        loss = (layer(x) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}")
    if not losses[-1] < losses[0]:
        raise SystemExit(f"training did not lower the loss: {losses}")
    check("d cpb_mlp.0.weight (v2)", cpb_mlp_gradient("auto", x, target), cpb_mlp_gradient("reference", x, target))
    # the same pattern on a 32x32 map: the planner lays tokens out window-major, so every tile is FULL or EMPTY
    draw_block_map(layer.pattern, (32, 32), out_dir, "swin_shifted_windows", block_q=16, block_kv=16)


if __name__ == "__main__":
    main(*sys.argv[1:])
