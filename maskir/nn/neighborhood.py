"""``NeighborhoodAttention1D/2D/3D``: NATTEN 0.21's modules (constructor, input, state_dict) on maskir.

A NATTEN module's ``state_dict`` (``qkv.weight/bias``, ``proj.weight/bias``) loads unchanged and gives the
same output: the pattern is ``Neighborhood(kernel_size, dilation, stride, is_causal)``, whose rule is
NATTEN's (DESIGN.md, checked against NATTEN's own masks). ``rpb=True`` adds what NATTEN >= 0.20 dropped
from its kernels: NAT/DiNAT's learnable relative position bias, trained through maskir's backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from maskir.ir import Neighborhood, expand
from maskir.nn.masked import MaskedAttention
from maskir.score_mods import relative_position_bias


def _per_dim(value, na_dim: int, name: str, kind: type) -> tuple:
    """NATTEN's argument form: one value for every dim, or a tuple of ``na_dim`` values."""
    values = expand(value, na_dim, f"NeighborhoodAttention{na_dim}D", name)
    if not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool)) for v in values):
        raise TypeError(f"{name} must be a {kind.__name__} or a tuple of {na_dim} of them, got {name}={value!r}.")
    return tuple(values)


class NeighborhoodAttentionND(MaskedAttention):
    """Neighborhood attention over ``na_dim`` spatial dims; x ``[B, *spatial, C]`` -> same shape.

    Arguments as NATTEN 0.21's ``NeighborhoodAttention{1,2,3}D`` (``kernel_size``, ``stride``,
    ``dilation``, ``is_causal``: an int/bool for every dim or one per dim). ``rpb=True`` adds a parameter
    ``rpb`` [num_heads, 2k_1 - 1, ..., 2k_n - 1] (NAT's truncated-normal init, std 0.02) and adds
    ``rpb[h, k_1 - 1 + kv_1 // d_1 - q_1 // d_1, ...]`` to the score of query q and key kv: offsets per dim
    in dilation-group steps, NAT/DiNAT's convention (``maskir.score_mods.relative_position_bias``,
    convention "nat"). ``backend`` as in ``maskir.attention``.
    """

    def __init__(
        self,
        na_dim: int,
        embed_dim: int,
        num_heads: int,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        rpb: bool = False,
        backend: str = "auto",
    ):
        self.na_dim = na_dim
        self.kernel_size = _per_dim(kernel_size, na_dim, "kernel_size", int)
        self.stride = _per_dim(stride, na_dim, "stride", int)
        self.dilation = _per_dim(dilation, na_dim, "dilation", int)
        self.is_causal = _per_dim(is_causal, na_dim, "is_causal", bool)
        pattern = Neighborhood(self.kernel_size, self.dilation, self.stride, self.is_causal)
        super().__init__(
            embed_dim,
            num_heads,
            pattern,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            backend=backend,
        )
        self.rpb = None
        if rpb:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)

    def spatial_rank(self) -> int:
        return self.na_dim

    def attention_score_mod(self, spatial: tuple[int, ...]) -> Callable | None:
        if self.rpb is None:
            return None
        return relative_position_bias(self.rpb, spatial, convention="nat", dilation=self.dilation)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}, "
            f"rpb={self.rpb is not None}, backend={self.backend!r}"
        )


class NeighborhoodAttention1D(NeighborhoodAttentionND):
    """1-D neighborhood attention, x ``[B, L, C]``: NATTEN 0.21's ``NeighborhoodAttention1D`` (+ ``rpb``)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        rpb: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            1, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale, proj_drop,
            rpb=rpb, backend=backend,
        )  # fmt: skip


class NeighborhoodAttention2D(NeighborhoodAttentionND):
    """2-D neighborhood attention, x ``[B, H, W, C]``: NATTEN 0.21's ``NeighborhoodAttention2D`` (+ ``rpb``)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        rpb: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            2, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale, proj_drop,
            rpb=rpb, backend=backend,
        )  # fmt: skip


class NeighborhoodAttention3D(NeighborhoodAttentionND):
    """3-D neighborhood attention, x ``[B, T, H, W, C]``: NATTEN 0.21's ``NeighborhoodAttention3D`` (+ ``rpb``)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        rpb: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            3, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale, proj_drop,
            rpb=rpb, backend=backend,
        )  # fmt: skip
