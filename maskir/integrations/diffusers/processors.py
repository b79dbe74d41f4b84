"""Attention processors for diffusers' Flux and Wan transformers, restricted to a maskir pattern.

Each follows the model's default processor (diffusers 0.42: ``FluxAttnProcessor``, ``WanAttnProcessor``)
step for step, with diffusers' own projection and rotary helpers, and replaces only its
``dispatch_attention_fn`` call by ``canvas_attention``. ``apply_pattern`` installs them on a model.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers import transformer_flux, transformer_wan

from maskir.canvas import Canvas
from maskir.integrations.diffusers.attention import canvas_attention
from maskir.ir import Pattern


class MaskedAttnProcessor:
    """What the processors share: the pattern, the token canvas, and the attention call.

    ``attend(query, key, value)`` takes and returns diffusers' ``[B, N, heads, head_dim]``; a subclass may
    replace it (the tests put a float64 dense reference there).
    """

    def __init__(self, pattern: Pattern | str, canvas: Canvas | tuple[int, ...], *, backend: str = "auto"):
        if isinstance(pattern, str):
            from maskir.spec import parse

            pattern = parse(pattern)
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a maskir Pattern or spec text, got {type(pattern).__name__}.")
        self.pattern = pattern
        self.canvas = canvas if isinstance(canvas, Canvas) else Canvas(tuple(canvas))
        self.backend = backend

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return canvas_attention(query, key, value, self.pattern, self.canvas, backend=self.backend)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pattern}, {self.canvas})"


class FluxMaskedAttnProcessor(MaskedAttnProcessor):
    """Flux's joint attention (text tokens first, then the ``(h, w)`` image tokens) over the pattern."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ):
        if attention_mask is not None:
            raise ValueError("FluxMaskedAttnProcessor takes its mask from the pattern; got an attention_mask too.")
        query, key, value, encoder_query, encoder_key, encoder_value = transformer_flux._get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query, encoder_key, encoder_value = (
                t.unflatten(-1, (-1, attn.head_dim)) for t in (encoder_query, encoder_key, encoder_value)
            )
            encoder_query, encoder_key = attn.norm_added_q(encoder_query), attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        hidden_states = self.attend(query, key, value).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs (as in diffusers' ``WanAttnProcessor``)."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(hidden_states)


class WanMaskedAttnProcessor(MaskedAttnProcessor):
    """Wan's self-attention (``attn1``) over the ``(frames, h, w)`` video tokens, restricted to the pattern."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "WanMaskedAttnProcessor is for Wan's self-attention (attn1); keep the default processor on the "
                "cross-attention layers (apply_pattern does)."
            )
        query, key, value = transformer_wan._get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)
        hidden_states = self.attend(query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


def apply_pattern(model: torch.nn.Module, processor: MaskedAttnProcessor) -> None:
    """Install ``processor`` on the model's self-attention layers with ``set_attn_processor``: every
    attention of a Flux transformer (joint attention), the ``attn1`` layers of a Wan transformer (its
    ``attn2`` cross-attention keeps its processor)."""
    kinds = {
        "FluxTransformer2DModel": (FluxMaskedAttnProcessor, lambda name: True),
        "WanTransformer3DModel": (WanMaskedAttnProcessor, lambda name: name.endswith("attn1.processor")),
    }
    name = type(model).__name__
    if name not in kinds:
        raise TypeError(f"apply_pattern knows {', '.join(kinds)}, got a {name}.")
    kind, selected = kinds[name]
    if not isinstance(processor, kind):
        raise TypeError(f"a {name} needs a {kind.__name__}, got a {type(processor).__name__}.")
    model.set_attn_processor(
        {layer: processor if selected(layer) else current for layer, current in model.attn_processors.items()}
    )
