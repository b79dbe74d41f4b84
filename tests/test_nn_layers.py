"""maskir.nn: NATTEN's modules with their weights, Swin's window attention in one call, MaskedAttention.

Peers: NATTEN 0.21.7's own modules (forward on CPU through its flex backend), a straightforward Swin
implementation (partition, cyclic shift, mask, reverse) written here, and the float64 reference.
"""

import warnings

import natten
import pytest
import torch
from torch import nn

import maskir
import maskir.nn as mnn
from maskir import Blocks, Canvas, Causal, Window
from maskir.reference import reference_attention

NATTEN_CASES = [
    # (na_dim, spatial, kernel_size, stride, dilation, is_causal)
    (1, (20,), 5, 1, 2, False),
    (1, (17,), 4, 3, 1, True),
    (2, (9, 12), (3, 5), (2, 1), (1, 2), (False, True)),
    (2, (8, 8), 4, 1, 1, False),
    (3, (4, 6, 6), 3, 2, 1, (True, False, False)),
    (3, (3, 5, 6), (2, 3, 3), 1, (1, 1, 2), False),
]
NATTEN_MODULES = {
    1: natten.NeighborhoodAttention1D,
    2: natten.NeighborhoodAttention2D,
    3: natten.NeighborhoodAttention3D,
}
MASKIR_MODULES = {1: mnn.NeighborhoodAttention1D, 2: mnn.NeighborhoodAttention2D, 3: mnn.NeighborhoodAttention3D}


def natten_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex on a CPU warns that it runs unfused
        return module(x)


@pytest.mark.parametrize("case", NATTEN_CASES, ids=str)
def test_natten_state_dict_loads_and_output_matches_natten(case):
    na_dim, spatial, kernel_size, stride, dilation, is_causal = case
    torch.manual_seed(0)
    args = dict(kernel_size=kernel_size, stride=stride, dilation=dilation, is_causal=is_causal)
    peer = NATTEN_MODULES[na_dim](32, 2, **args)
    layer = MASKIR_MODULES[na_dim](32, 2, **args)
    assert layer.load_state_dict(peer.state_dict()) is not None
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in peer.state_dict().items()}
    x = torch.randn(2, *spatial, 32)
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, natten_forward(peer, x), atol=2e-6, rtol=1e-5)


def test_natten_constructor_defaults_qk_scale_and_narrow_heads():
    """Positional arguments in NATTEN's order, no qkv bias, a given qk_scale, head_dim 8 (under the
    Triton kernels' 16: padded) all behave as NATTEN's module."""
    torch.manual_seed(1)
    peer = natten.NeighborhoodAttention2D(16, 2, 3, 1, 2, False, False, 0.3)
    layer = mnn.NeighborhoodAttention2D(16, 2, 3, 1, 2, False, False, 0.3)
    layer.load_state_dict(peer.state_dict())
    assert layer.qkv.bias is None and layer.scale == 0.3
    x = torch.randn(1, 7, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), natten_forward(peer, x), atol=2e-6, rtol=1e-5)


def test_neighborhood_module_rejects_bad_input_with_the_fix():
    layer = mnn.NeighborhoodAttention2D(16, 2, 3)
    with pytest.raises(ValueError, match="rank 4"):
        layer(torch.randn(1, 36, 16))
    with pytest.raises(ValueError, match="embedding dimension 16, got 8"):
        layer(torch.randn(1, 6, 6, 8))
    with pytest.raises(ValueError, match="evenly divide"):
        mnn.NeighborhoodAttention1D(10, 3, 3)
    with pytest.raises(ValueError, match="has 3 values"):
        mnn.NeighborhoodAttention2D(16, 2, (3, 3, 3))
    with pytest.raises(TypeError, match="kernel_size must be a int"):
        mnn.NeighborhoodAttention1D(16, 2, 3.0)


# --- Swin: a straightforward implementation, partition / roll / mask / reverse, as in Swin's code ---


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
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


def swin_window_attention(layer: mnn.WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Swin v1's block body around WindowAttention: roll, partition, attention with bias and mask, reverse."""
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


SWIN_CASES = [((8, 8), 4, 0), ((8, 8), 4, 2), ((6, 8), (3, 4), (1, 2))]


@pytest.mark.parametrize("spatial, window, shift", SWIN_CASES, ids=str)
def test_window_attention_equals_swin_partition_and_roll_forward(spatial, window, shift):
    torch.manual_seed(0)
    layer = mnn.WindowAttention(32, window, 2, shift)
    nn.init.normal_(layer.relative_position_bias_table, std=1.0)  # a bias that moves the softmax
    x = torch.randn(2, *spatial, 32)
    with torch.no_grad():
        out = layer(x)
        expected = swin_window_attention(layer.double(), x.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial, window, shift", SWIN_CASES[1:2], ids=str)
def test_window_attention_equals_swin_partition_and_roll_backward(spatial, window, shift):
    torch.manual_seed(0)
    layer = mnn.WindowAttention(32, window, 2, shift)
    nn.init.normal_(layer.relative_position_bias_table, std=1.0)
    layer.relative_position_bias_table.requires_grad_(False)
    x = torch.randn(2, *spatial, 32, requires_grad=True)
    grad = torch.randn(2, *spatial, 32)
    layer(x).backward(grad)
    got = [x.grad, layer.qkv.weight.grad, layer.proj.weight.grad]
    reference = mnn.WindowAttention(32, window, 2, shift).double()
    reference.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_()
    swin_window_attention(reference, x64).backward(grad.double())
    expected = [x64.grad, reference.qkv.weight.grad, reference.proj.weight.grad]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1e-5)


def test_window_attention_loads_a_swin_state_dict_and_plans_window_major():
    layer = mnn.WindowAttention(32, 4, 2, 2)
    names = {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    names |= {"relative_position_bias_table", "relative_position_index"}
    assert set(layer.state_dict()) == names
    assert layer.relative_position_bias_table.shape == (49, 2)
    assert layer.pattern == Blocks((4, 4), offset=(2, 2))  # patterns.swin(4, shifted=True) per dim
    plan = maskir.plan(layer.pattern, Canvas((16, 16)))
    assert [part.layout.name.split()[0] for part in plan.parts] == ["window-major"]
    with pytest.raises(ValueError, match="multiples of window_size"):
        layer(torch.randn(1, 6, 8, 32))
    with pytest.raises(ValueError, match=r"shift_size must be in \[0, window_size\)"):
        mnn.WindowAttention(32, 4, 2, 4)


def test_masked_attention_runs_any_pattern_with_a_score_mod():
    torch.manual_seed(0)
    pattern = Window(3, 0) & Causal()

    def tilt(score, b, h, q_idx, kv_idx):
        return score - 0.25 * (h + 1) * (q_idx - kv_idx)

    layer = mnn.MaskedAttention(32, 2, "Window(3, 0) & Causal()", score_mod=tilt)
    assert layer.pattern == pattern
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        out = layer(x)
        layer.double()
        q, k, v = layer.qkv(x.double()).view(2, 24, 3, 2, 16).permute(2, 0, 3, 1, 4)
        expected = reference_attention(q, k, v, pattern, score_mod=tilt).transpose(1, 2).reshape(2, 24, 32)
        expected = layer.proj(expected)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_layers_run_under_torch_compile_fullgraph():
    """NA2D and a MaskedAttention trace without graph breaks, forward and backward, and equal eager."""
    torch.manual_seed(0)
    for layer, x in [
        (mnn.NeighborhoodAttention2D(32, 2, 3, dilation=2), torch.randn(1, 8, 8, 32)),
        (mnn.MaskedAttention(32, 2, maskir.patterns.swin(4, shifted=True)), torch.randn(1, 8, 8, 32)),
    ]:
        for parameter in layer.parameters():
            parameter.requires_grad_(parameter is layer.qkv.weight)
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.square().sum().backward()
        compiled_grad, layer.qkv.weight.grad = layer.qkv.weight.grad, None
        eager = layer(x)
        eager.square().sum().backward()
        torch.testing.assert_close(out, eager)
        torch.testing.assert_close(compiled_grad, layer.qkv.weight.grad)
