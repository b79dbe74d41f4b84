"""2-D and 3-D neighborhood attention layers (NAT/DiNAT, Hassani et al. 2023; GNA for video) via maskir.nn.

``maskir.nn.NeighborhoodAttention2D/3D`` take NATTEN 0.21's constructor and state_dict: when NATTEN is
installed, its module's weights load unchanged and the outputs agree. ``rpb=True`` adds NAT's learnable
relative position bias. Run ``python examples/neighborhood_layers.py [OUT_DIR]``.
"""

import sys
import warnings

import torch
from example_check import check, draw_block_map

from maskir import Canvas
from maskir.nn import NeighborhoodAttention2D, NeighborhoodAttention3D
from maskir.reference import reference_attention

EMBED_DIM, HEADS = 32, 2


def image_layer() -> NeighborhoodAttention2D:
    """A 5x5 dilated (DiNAT) neighborhood on an image, with NAT's relative position bias."""
    return NeighborhoodAttention2D(EMBED_DIM, HEADS, kernel_size=5, dilation=2, rpb=True)


def video_layer() -> NeighborhoodAttention3D:
    """A 3x5x5 neighborhood on video, causal in time (GNA-style)."""
    return NeighborhoodAttention3D(EMBED_DIM, HEADS, kernel_size=(3, 5, 5), is_causal=(True, False, False))


def layer_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's math in float64: qkv projection, masked softmax with its bias, output projection."""
    batch, *spatial, channels = x.shape
    weights = {name: t.double() for name, t in layer.state_dict().items()}
    qkv = torch.nn.functional.linear(x.double(), weights["qkv.weight"], weights["qkv.bias"])
    q, k, v = qkv.reshape(batch, -1, 3, HEADS, channels // HEADS).permute(2, 0, 3, 1, 4)
    score_mod = layer.attention_score_mod(tuple(spatial))
    out = reference_attention(q, k, v, layer.pattern, Canvas(tuple(spatial)), score_mod=score_mod)
    out = out.transpose(1, 2).reshape(batch, *spatial, channels)
    return torch.nn.functional.linear(out, weights["proj.weight"], weights["proj.bias"])


def compare_with_natten(layer, x: torch.Tensor) -> None:
    """Load the layer's weights into NATTEN's module of the same arguments and compare (if NATTEN is there)."""
    try:
        import natten
    except ImportError:
        print("NATTEN not installed: skipping the side-by-side check")
        return
    peer_class = getattr(natten, type(layer).__name__)
    peer = peer_class(EMBED_DIM, HEADS, layer.kernel_size, layer.stride, layer.dilation, layer.is_causal)
    peer.load_state_dict(layer.state_dict())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NATTEN's flex backend warns on a CPU that it runs unfused
        check(f"{type(layer).__name__} vs NATTEN", layer(x), peer(x))


def main(out_dir: str = ".") -> None:
    torch.manual_seed(0)
    for name, layer, x in [
        ("neighborhood_2d", image_layer(), torch.randn(1, 12, 12, EMBED_DIM)),
        ("neighborhood_3d", video_layer(), torch.randn(1, 4, 8, 8, EMBED_DIM)),
    ]:
        print(layer)
        with torch.no_grad():
            check(name, layer(x), layer_reference(layer, x))
        if layer.rpb is None:
            compare_with_natten(layer, x)
        draw_block_map(layer.pattern, x.shape[1:-1], out_dir, name)


if __name__ == "__main__":
    main(*sys.argv[1:])
