"""``MaskedAttention``: qkv projection, maskir attention over a pattern on the input's grid, output projection."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

import torch
from torch import nn

from maskir.ir import Pattern
from maskir.runtime import CompiledAttention, attention
from maskir.runtime import compile as maskir_compile
from maskir.runtime.compiled import CAPTURE_PREFIX

TRITON_MIN_HEAD_DIM = 16
"""The Triton kernels' smallest head dim: smaller heads are zero-padded to it (q.k and the kept columns of
the output are unchanged by zero columns)."""


class MaskedAttention(nn.Module):
    """y = proj(attention(q, k, v over ``pattern``)) for channels-last x ``[B, *spatial, C]``.

    q, k, v come from one ``qkv`` linear layer as ``[..., 3, heads, head_dim]`` per token (NATTEN's and
    Swin's layout); the canvas is ``spatial`` (row-major tokens), so ``pattern`` may use its coordinates
    (``Neighborhood``, ``Blocks``, ``Distance(dim, ...)``). ``qk_scale`` defaults to ``head_dim ** -0.5``.
    ``score_mod`` is a flex-style ``score_mod(score, b, h, q_idx, kv_idx)`` added to every call;
    ``backend`` as in ``maskir.attention`` (a registered name or "auto"); with "auto" and "triton", heads
    narrower than the Triton kernels' 16 are zero-padded to 16 (zero channels change no score or output).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        pattern: Pattern | str,
        *,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        score_mod: Callable | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")
        if embed_dim % num_heads:
            raise ValueError(
                f"Number of attention heads must evenly divide embedding dimension, got {embed_dim=}, {num_heads=}."
            )
        if isinstance(pattern, str):
            from maskir.spec import parse

            pattern = parse(pattern)
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a maskir Pattern or spec text, got {type(pattern).__name__}.")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5 if qk_scale is None else float(qk_scale)
        self.pattern = pattern
        self.score_mod = score_mod
        self.backend = backend
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._register()

    def _register(self) -> None:
        """Give this layer its own number, by which a build run while torch.compile traces finds it."""
        self._handle = next(_NUMBERS)
        _LAYERS[self._handle] = self
        weakref.finalize(self, _forget, self._handle)

    def __setstate__(self, state: dict) -> None:
        """A copy (copy.deepcopy, pickle) is a new layer: its own number, its own kernels and parameters."""
        super().__setstate__(state)
        self._register()

    def spatial_rank(self) -> int | None:
        """The number of spatial dims the input must have (None: any)."""
        return None

    def attention_score_mod(self, spatial: tuple[int, ...]) -> Callable | None:
        """The score_mod of a call on a ``spatial`` grid (subclasses add their biases here)."""
        return self.score_mod

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, heads, N, head_dim] of x [B, *spatial, C] (subclasses change how: Swin v2's cosine q, k)."""
        qkv = self.qkv(x).reshape(x.shape[0], -1, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def score_mod_tensors(self) -> list[torch.Tensor] | None:
        """The tensors this layer's score_mod reads, computed by this forward, in the order it reads them
        (a bias table an MLP makes: Swin v2); None: the score_mod reads the layer's parameters themselves."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = self.spatial_rank()
        if x.dim() < 3 or (rank is not None and x.dim() != rank + 2):
            expected = f"rank {rank + 2} ([B, {rank} spatial dims, C])" if rank else "[B, *spatial, C]"
            raise ValueError(f"{type(self).__name__} expects a channels-last tensor of {expected}, got {x.dim()=}.")
        batch, *spatial, channels = x.shape
        if channels != self.embed_dim:
            raise ValueError(f"Expected embedding dimension {self.embed_dim}, got {channels} ({x.shape=}).")
        spatial = tuple(spatial)
        q, k, v = self.project(x)
        pad = TRITON_MIN_HEAD_DIM - self.head_dim if self.backend in ("auto", "triton") else 0
        if pad > 0:
            q, k, v = (torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v))
        out = self._attend(q, k, v, spatial)
        out = out[..., : self.head_dim] if pad > 0 else out
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, *spatial, channels)))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """Attention over the pattern on ``spatial``. With a score_mod, through a ``maskir.compile`` object held
        per (grid, dtype, device, head dim), built on first use (while tracing, under torch.compile): its
        score_mod's tensors (the layer's bias parameters, or what ``score_mod_tensors`` computes in this
        forward) reach maskir's op as inputs, so they get gradients and optimizer steps are seen, in eager
        mode and under torch.compile alike."""
        score_mod = self.attention_score_mod(spatial)
        if score_mod is None:
            return attention(q, k, v, self.pattern, spatial, scale=self.scale, backend=self.backend)
        held = _HELD[_build_held(self._handle, *_held_key(spatial, q))]  # built on first use (while tracing)
        tensors = self.score_mod_tensors()
        if tensors is None:
            return held(q, k, v, scale=self.scale)
        captures = {f"{CAPTURE_PREFIX}{i}": t for i, t in enumerate(tensors)}  # the tracer's names, in order
        return held._run(q, k, v, scale=self.scale, segments=None, routing=None, return_lse=False, captures=captures)

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}, head_dim={self.head_dim}, num_heads={self.num_heads}, backend={self.backend!r}"


_LAYERS: weakref.WeakValueDictionary[int, MaskedAttention] = weakref.WeakValueDictionary()
"""Layers by number, so that a build run while torch.compile traces can find its layer from constants."""
_NUMBERS = itertools.count()
_HELD: dict[str, CompiledAttention] = {}
"""The layers' ``maskir.compile`` objects by ``_build_held``'s handle (dropped with their layer)."""


def _forget(number: int) -> None:
    for handle in [h for h in _HELD if h.startswith(f"{number}:")]:
        del _HELD[handle]


def _held_key(spatial: tuple[int, ...], q: torch.Tensor) -> tuple:
    """(grid, dtype name, device type, head dim): plain constants, which torch.compile can pass on."""
    return spatial, str(q.dtype).removeprefix("torch."), q.device.type, q.shape[-1]


def _build_held(number: int, spatial: tuple[int, ...], dtype: str, device: str, head_dim: int) -> str:
    """The handle in ``_HELD`` of layer ``number``'s ``maskir.compile`` object for this key, built if new.
    torch.compile runs this body instead of tracing it (its result is a constant of the graph)."""
    handle = f"{number}:{spatial}:{dtype}:{device}:{head_dim}"
    if handle not in _HELD:
        layer = _LAYERS[number]
        _HELD[handle] = maskir_compile(
            layer.pattern,
            spatial,
            heads=layer.num_heads,
            head_dim=head_dim,
            dtype=getattr(torch, dtype),
            device=device,
            score_mod=layer.attention_score_mod(spatial),
            backend=layer.backend,
            quiet=True,
        )
    return handle


_build_held._dynamo_marked_constant = True
"""As ``maskir.runtime.api._build_while_tracing``: what ``torch.compiler.assume_constant_result`` sets."""
