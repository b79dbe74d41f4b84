"""Attention layers that drop into vision and video models: channels-last input ``[B, *spatial, C]``.

``NeighborhoodAttention1D/2D/3D`` take NATTEN 0.21's constructor and state_dict (``qkv``, ``proj``) and add
an optional learnable relative position bias; ``WindowAttention`` is Swin's window attention over the whole
feature map in one call (its ``relative_position_bias_table`` and index convention), ``WindowAttentionV2``
Swin v2's (cosine attention, continuous position bias MLP, its state_dict); ``MaskedAttention``
runs any maskir pattern. The layers sit above the runtime and call ``maskir.attention``.
"""

from maskir.nn.masked import MaskedAttention
from maskir.nn.neighborhood import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from maskir.nn.window import WindowAttention, WindowAttentionV2

__all__ = [
    "MaskedAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "WindowAttention",
    "WindowAttentionV2",
]
