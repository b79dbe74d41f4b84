"""maskir.nn: NATTEN's modules with their weights, Swin's window attention in one call, MaskedAttention.

Peers: NATTEN 0.21.7's own modules (forward on CPU through its flex backend), a straightforward Swin
implementation (partition, cyclic shift, mask, reverse: benchmarks/swin_reference.py), and the float64
reference.
"""

import copy
import math
import warnings

import natten
import pytest
import torch
from torch import nn

import maskir
import maskir.nn as mnn
from benchmarks.swin_reference import (
    SwinV2WindowAttention,
    swin_v2_block_attention,
    swin_window_attention,
    window_partition,
)
from maskir import Blocks, Canvas, Causal, Window
from maskir.reference import reference_attention

TRITON = "triton"
"""The layers' semantics do not depend on the backend (every backend is checked against float64 on every
IR node elsewhere), and at these tiny sizes Triton's interpreter builds a layer's kernels 2-4x faster than
TVM: most cases here pin it, and each layer family keeps a case on ``"auto"`` (TVM on a CPU)."""

NATTEN_CASES = [
    # (na_dim, spatial, kernel_size, stride, dilation, is_causal, backend)
    (1, (20,), 5, 1, 2, False, "auto"),
    (1, (17,), 4, 3, 1, True, TRITON),
    (2, (9, 12), (3, 5), (2, 1), (1, 2), (False, True), "auto"),
    (2, (8, 8), 4, 1, 1, False, TRITON),
    (3, (4, 6, 6), 3, 2, 1, (True, False, False), TRITON),
    (3, (3, 5, 6), (2, 3, 3), 1, (1, 1, 2), False, "auto"),
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
    na_dim, spatial, kernel_size, stride, dilation, is_causal, backend = case
    torch.manual_seed(0)
    args = dict(kernel_size=kernel_size, stride=stride, dilation=dilation, is_causal=is_causal)
    peer = NATTEN_MODULES[na_dim](32, 2, **args)
    layer = MASKIR_MODULES[na_dim](32, 2, **args, backend=backend)
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


def swin_gradients(layer: mnn.WindowAttention, x: torch.Tensor, grad: torch.Tensor, train: bool) -> list:
    """d x, d qkv.weight, d proj.weight (and with ``train`` d relative_position_bias_table) of the Swin
    implementation above, in float64 on a copy of ``layer``."""
    reference = mnn.WindowAttention(layer.dim, layer.window_size, layer.num_heads, layer.shift_size).double()
    reference.load_state_dict(layer.state_dict())
    reference.relative_position_bias_table.requires_grad_(train)
    x64 = x.detach().double().requires_grad_()
    swin_window_attention(reference, x64).backward(grad.double())
    table = [reference.relative_position_bias_table.grad] if train else []
    return [x64.grad, reference.qkv.weight.grad, reference.proj.weight.grad, *table]


@pytest.mark.parametrize("train", [False, True], ids=["frozen-table", "trained-table"])
def test_window_attention_equals_swin_partition_and_roll_backward(train):
    """Shifted windows: gradients of the input, the projections and (trained) the bias table equal Swin's."""
    torch.manual_seed(0)
    layer = mnn.WindowAttention(32, 4, 2, 2)
    nn.init.normal_(layer.relative_position_bias_table, std=1.0)
    layer.relative_position_bias_table.requires_grad_(train)
    x = torch.randn(2, 8, 8, 32, requires_grad=True)
    grad = torch.randn(2, 8, 8, 32)
    layer(x).backward(grad)
    got = [x.grad, layer.qkv.weight.grad, layer.proj.weight.grad]
    got += [layer.relative_position_bias_table.grad] if train else []
    for g, e in zip(got, swin_gradients(layer, x, grad, train), strict=True):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1e-5)


def swin_v2_pair(window, shift, pretrained=0, qkv_bias=True):
    """Swin v2's reference WindowAttention with random weights (temperatures 5 to 20, so its -100 shift mask
    is exact to float64) and a WindowAttentionV2 that loaded its state_dict."""
    torch.manual_seed(0)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    peer = SwinV2WindowAttention(32, pair(window), 2, qkv_bias, pretrained_window_size=pair(pretrained))
    with torch.no_grad():
        peer.logit_scale.copy_(torch.empty(2, 1, 1).uniform_(math.log(5), math.log(20)))
        for name, parameter in peer.named_parameters():
            if name in ("q_bias", "v_bias", "cpb_mlp.2.weight"):
                parameter.normal_(std=0.5)
    layer = mnn.WindowAttentionV2(32, window, 2, shift, qkv_bias=qkv_bias, pretrained_window_size=pretrained)
    layer.load_state_dict(peer.state_dict())
    return peer, layer


SWIN_V2_CASES = [((8, 8), 4, 0, 0, True), ((8, 8), 4, 2, 0, False), ((6, 8), (3, 4), (1, 2), (6, 8), True)]


@pytest.mark.parametrize("spatial, window, shift, pretrained, qkv_bias", SWIN_V2_CASES, ids=str)
def test_window_attention_v2_loads_swin_v2_and_equals_its_partition_and_roll_forward(
    spatial, window, shift, pretrained, qkv_bias
):
    peer, layer = swin_v2_pair(window, shift, pretrained, qkv_bias)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in peer.state_dict().items()}
    torch.testing.assert_close(layer.relative_coords_table, peer.relative_coords_table)
    x = torch.randn(2, *spatial, 32)
    with torch.no_grad():
        expected = swin_v2_block_attention(peer.double(), x.double(), layer.shift_size)
        torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_window_attention_v2_equals_swin_v2_backward_every_parameter():
    """Shifted windows: d x and the gradient of every parameter (cpb_mlp through its bias table,
    logit_scale, q_bias, v_bias, qkv, proj) equal Swin v2's reference, in float64 there."""
    peer, layer = swin_v2_pair(4, 2)
    peer.double()
    x = torch.randn(2, 8, 8, 32, requires_grad=True)
    grad = torch.randn(2, 8, 8, 32)
    layer(x).backward(grad)
    x64 = x.detach().double().requires_grad_()
    swin_v2_block_attention(peer, x64, (2, 2)).backward(grad.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    expected = dict(peer.named_parameters())
    assert set(dict(layer.named_parameters())) == set(expected)
    for name, parameter in layer.named_parameters():
        assert expected[name].grad.abs().sum() > 0, name
        torch.testing.assert_close(parameter.grad.double(), expected[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_window_attention_v2_equals_transformers_swinv2_self_attention():
    """A peer no one here wrote: transformers' Swinv2SelfAttention (separate query/key/value, its own
    coordinates), on windows, forward and the gradients of its bias MLP and temperature."""
    swinv2 = pytest.importorskip("transformers.models.swinv2.modeling_swinv2")
    torch.manual_seed(0)
    config = swinv2.Swinv2Config(qkv_bias=True, attention_probs_dropout_prob=0.0)
    peer = swinv2.Swinv2SelfAttention(config, 32, 2, 4, pretrained_window_size=[0, 0]).double()
    with torch.no_grad():
        peer.logit_scale.uniform_(math.log(5), math.log(20))
        peer.query.bias.normal_(std=0.5)
        peer.value.bias.normal_(std=0.5)
    layer = mnn.WindowAttentionV2(32, 4, 2)
    weights = {
        "qkv.weight": torch.cat([peer.query.weight, peer.key.weight, peer.value.weight]),
        "q_bias": peer.query.bias,
        "v_bias": peer.value.bias,
        "logit_scale": peer.logit_scale,
        "cpb_mlp.0.weight": peer.continuous_position_bias_mlp[0].weight,
        "cpb_mlp.0.bias": peer.continuous_position_bias_mlp[0].bias,
        "cpb_mlp.2.weight": peer.continuous_position_bias_mlp[2].weight,
        "proj.weight": torch.eye(32),  # Swinv2SelfAttention stops before the output projection
        "proj.bias": torch.zeros(32),
    }
    layer.load_state_dict(weights, strict=False)
    x = torch.randn(2, 8, 8, 32)
    out = layer(x)
    windows = window_partition(x.double(), (4, 4))
    (expected,) = peer(windows)
    torch.testing.assert_close(window_partition(out.double(), (4, 4)), expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(window_partition(grad.double(), (4, 4)))
    for ours, theirs in [
        (layer.cpb_mlp[0].weight, peer.continuous_position_bias_mlp[0].weight),
        (layer.cpb_mlp[2].weight, peer.continuous_position_bias_mlp[2].weight),
        (layer.logit_scale, peer.logit_scale),
    ]:  # the fp32 kernels sum the bias table's gradient over all pairs in their own order (TVM's on a CPU)
        torch.testing.assert_close(ours.grad.double(), theirs.grad, atol=5e-5, rtol=1e-4)


def nat_rpb_score_mod(rpb: torch.Tensor, spatial: tuple[int, ...], dilation: tuple[int, ...]):
    """NAT/DiNAT's bias written out: rpb[h, k_i - 1 + (kv_i - q_i) / d_i per dim], on broadcast index
    tensors (float64 reference; only pairs inside a neighborhood are used, where the index is in range)."""
    spans = rpb.shape[1:]

    def bias(score, b, h, q_idx, kv_idx):
        index = [h.expand_as(score)]
        q_rest, kv_rest = q_idx, kv_idx
        for dim in reversed(range(len(spatial))):
            q_coord, kv_coord = q_rest % spatial[dim], kv_rest % spatial[dim]
            q_rest, kv_rest = q_rest // spatial[dim], kv_rest // spatial[dim]
            offset = torch.div(kv_coord - q_coord, dilation[dim], rounding_mode="floor") + (spans[dim] - 1) // 2
            index.insert(1, offset.clamp(0, spans[dim] - 1).expand_as(score))
        return score + rpb.double()[tuple(index)]

    return bias


@pytest.mark.parametrize(
    "na_dim, spatial, kernel_size, dilation, is_causal, backend",
    [
        (1, (12,), 5, 2, False, TRITON),
        (2, (6, 7), (3, 5), (2, 1), False, "auto"),
        (3, (3, 4, 4), 3, 1, (True, False, False), TRITON),
    ],
    ids=str,
)
def test_neighborhood_rpb_adds_nat_bias_and_trains(na_dim, spatial, kernel_size, dilation, is_causal, backend):
    """rpb [heads, 2k-1, ...] in NAT/DiNAT's convention: forward and the gradient of rpb equal the float64
    formula."""
    torch.manual_seed(0)
    args = dict(kernel_size=kernel_size, dilation=dilation, is_causal=is_causal, rpb=True)
    layer = MASKIR_MODULES[na_dim](32, 2, **args, backend=backend)
    assert layer.rpb.shape == (2, *(2 * k - 1 for k in layer.kernel_size))
    nn.init.normal_(layer.rpb, std=1.0)
    x = torch.randn(2, *spatial, 32)

    def expected(module, x64):
        q, k, v = module.qkv(x64).reshape(2, -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
        score_mod = nat_rpb_score_mod(module.rpb, spatial, module.dilation)
        out = reference_attention(q, k, v, module.pattern, Canvas(spatial), score_mod=score_mod)
        return module.proj(out.transpose(1, 2).reshape(2, *spatial, 32))

    reference = MASKIR_MODULES[na_dim](32, 2, **args).double()
    reference.load_state_dict(layer.state_dict())
    want = expected(reference, x.double())
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), want, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    layer(x).backward(grad.float())
    torch.testing.assert_close(layer.rpb.grad.double(), reference.rpb.grad, atol=1e-5, rtol=1e-5)
    assert layer.rpb.grad.abs().sum() > 0


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
    """Each layer traces without graph breaks on its first call (its kernels are built while tracing),
    forward and backward, bias tables trained, and equals eager mode."""
    torch.manual_seed(0)
    for layer, x in [
        (mnn.NeighborhoodAttention2D(32, 2, 3, dilation=2, backend=TRITON), torch.randn(1, 8, 8, 32)),
        (mnn.NeighborhoodAttention2D(32, 2, 3, rpb=True, backend=TRITON), torch.randn(1, 8, 8, 32)),
        (mnn.WindowAttention(32, 4, 2, 2), torch.randn(1, 8, 8, 32)),
        (mnn.WindowAttentionV2(32, 4, 2, 2, backend=TRITON), torch.randn(1, 8, 8, 32)),
        (mnn.MaskedAttention(32, 2, maskir.patterns.swin(4, shifted=True), backend=TRITON), torch.randn(1, 8, 8, 32)),
    ]:
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.square().sum().backward()
        compiled_grads = {name: p.grad for name, p in layer.named_parameters()}
        layer.zero_grad(set_to_none=True)
        eager = layer(x)
        eager.square().sum().backward()
        torch.testing.assert_close(out, eager)
        for name, parameter in layer.named_parameters():
            torch.testing.assert_close(compiled_grads[name], parameter.grad, msg=name)


def test_a_copied_layer_reads_its_own_bias_table():
    """copy.deepcopy (EMA models) makes a new layer: its kernels read the copy's table, not the original's."""
    torch.manual_seed(0)
    layer = mnn.WindowAttention(32, 4, 2, 2)
    x = torch.randn(1, 8, 8, 32)
    with torch.no_grad():
        before = layer(x)
        twin = copy.deepcopy(layer)
        nn.init.normal_(twin.relative_position_bias_table, std=1.0)
        assert (twin(x) - before).abs().max() > 1e-2
        torch.testing.assert_close(layer(x), before)
