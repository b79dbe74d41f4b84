"""Attention over a joint sequence: text tokens first, then the tokens of a canvas, in diffusers' layout.

diffusers' processors hand ``dispatch_attention_fn`` q, k, v as ``[B, N, heads, head_dim]``. Here the last
``canvas.size`` tokens lie on ``canvas`` (row-major, e.g. frames x height x width) and the first
``N - canvas.size`` are text: the allowed set is

    allowed(q, kv) = q is text  or  kv is text  or  pattern(q - T, kv - T) on the canvas    (T text tokens).
"""

from __future__ import annotations

import torch

from maskir.canvas import Canvas
from maskir.ir import Full, Pattern
from maskir.runtime import attention


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Softmax over the union of disjoint key sets from each part's (out, lse): sum_i out_i exp(lse_i - lse)."""
    lse = torch.logsumexp(torch.stack([part_lse for _, part_lse in parts]), dim=0)
    return sum(out * torch.exp(part_lse - lse)[..., None].to(out.dtype) for out, part_lse in parts)


def canvas_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: Pattern,
    canvas: Canvas | tuple[int, ...],
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of ``[B, N, H, D]`` tensors over the allowed set in the module docstring; ``[B, N, H, D]`` out.

    Without text tokens, or with ``Full()``, this is one ``maskir.attention`` call. With both text and
    another pattern it is three: text queries over every key, canvas queries over canvas keys (the pattern)
    and over text keys, the last two merged by their log-sum-exp. maskir's log-sum-exp carries no
    gradient, so that case runs without autograd (diffusion sampling): a ValueError says so otherwise.
    """
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(tuple(canvas))
    n = query.shape[1]
    text = n - canvas.size
    if text < 0 or key.shape[1] != n:
        raise ValueError(
            f"canvas {canvas.shape} holds {canvas.size} tokens but the self-attention sequence has {n} queries and "
            f"{key.shape[1]} keys: pass the token grid after patchification (e.g. (frames, height // 2, width // 2))."
        )
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if text == 0 or pattern == Full():
        out = attention(q, k, v, pattern, canvas if text == 0 else Canvas((n,)), scale=scale, backend=backend)
        return out.transpose(1, 2)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(
            f"{text} text tokens plus {pattern} on the canvas merge partial attentions by their log-sum-exp, which "
            "maskir does not differentiate: run under torch.no_grad() (sampling), or use Full() to train."
        )
    text_out = attention(q[:, :, :text], k, v, Full(), (text,), kv_canvas=(n,), scale=scale, backend=backend)
    q_canvas = q[:, :, text:].contiguous()
    canvas_part = attention(
        q_canvas, k[:, :, text:], v[:, :, text:], pattern, canvas, scale=scale, backend=backend, return_lse=True
    )
    text_part = attention(
        q_canvas, k[:, :, :text], v[:, :, :text], Full(), canvas, kv_canvas=(text,), scale=scale,
        backend=backend, return_lse=True,
    )  # fmt: skip
    return torch.cat([text_out, _merge([canvas_part, text_part])], dim=2).transpose(1, 2)
