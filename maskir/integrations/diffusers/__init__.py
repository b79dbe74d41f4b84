"""diffusers attention processors that restrict self-attention to a maskir pattern over the token canvas.

``apply_pattern(model, pattern, canvas)`` installs them with diffusers' ``set_attn_processor``: the
canvas is the grid of image/video tokens after patchification (Flux: ``(h, w)``; Wan: ``(frames, h, w)``),
and text tokens placed before it in a joint sequence attend to every token and are attended by every token.
Needs ``pip install maskir[diffusers]``.
"""

from maskir.integrations.diffusers.attention import canvas_attention
from maskir.integrations.diffusers.processors import (
    FluxMaskedAttnProcessor,
    MaskedAttnProcessor,
    WanMaskedAttnProcessor,
    apply_pattern,
)

__all__ = [
    "FluxMaskedAttnProcessor",
    "MaskedAttnProcessor",
    "WanMaskedAttnProcessor",
    "apply_pattern",
    "canvas_attention",
]
