"""One benchmark configuration (``Case``) and the shape every benchmark runs at: B=1, H=16, D=128, bf16."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskir.canvas import Canvas
from maskir.ir import Pattern, Routing
from maskir.runtime.routing import score_routing

SIZES = ("full", "medium", "small")
BATCH, HEADS, HEAD_DIM, DTYPE = 1, 16, 128, torch.bfloat16


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: ``pattern`` on ``canvas`` (q and kv share it).

    ``documents`` > 0 means the pattern holds ``Segments()`` and the tokens form that many equal
    documents (``documents`` divides N).
    """

    name: str
    size: str
    pattern: Pattern
    canvas: Canvas
    documents: int = 0

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"Case size must be one of {SIZES}, got {self.size!r}.")
        if self.documents and self.canvas.size % self.documents:
            raise ValueError(f"Case {self.name}: {self.documents} documents must divide N={self.canvas.size}.")

    @property
    def tokens(self) -> int:
        return self.canvas.size

    def segment_ids(self, batch: int = BATCH, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Document ids [batch, N] (token t is in document t // (N / documents)), or None."""
        if not self.documents:
            return None
        ids = torch.arange(self.tokens, device=device, dtype=torch.int32) // (self.tokens // self.documents)
        return ids.expand(batch, -1).contiguous()

    def routing_indices(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
        """Top-k kv blocks [B, H, q_blocks, topk] chosen from q and k by the pattern's Routing node (maskir's
        scorer, ``maskir.runtime.routing.score_routing``), or None."""
        nodes = [node for node in self.pattern.walk() if isinstance(node, Routing)]
        return score_routing(q, k, nodes[0]) if nodes else None

    def __str__(self) -> str:
        return f"{self.name}[{self.size}]"
