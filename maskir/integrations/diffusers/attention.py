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
from maskir.runtime import attention, union_attention


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
    another pattern it is two: text queries over every key, and canvas queries over the union of the canvas
    keys (the pattern) and the text keys (``Full()``): one softmax over both key sets
    (``maskir.runtime.union_attention``), differentiable in q, k and v, so the processors train.
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
    text_out = attention(q[:, :, :text], k, v, Full(), (text,), kv_canvas=(n,), scale=scale, backend=backend)
    canvas_parts = [
        (pattern, canvas, k[:, :, text:], v[:, :, text:]),
        (Full(), (text,), k[:, :, :text], v[:, :, :text]),
    ]
    canvas_out = union_attention(q[:, :, text:], canvas_parts, canvas=canvas, scale=scale, backend=backend)
    return torch.cat([text_out, canvas_out], dim=2).transpose(1, 2)
