"""The token grid a pattern lives on: row-major flat indices over a 1-, 2- or 3-D shape."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

MAX_TOKENS = 2**31
"""Most tokens a canvas holds: every flat token index (0 to 2**31 - 1) is an int32."""


@dataclass(frozen=True)
class Canvas:
    """A token grid of 1 to 3 dims; token index t is row-major: t = ((x0 * L1) + x1) * L2 + x2."""

    shape: tuple[int, ...]

    def __init__(self, shape: int | tuple[int, ...] | list[int]):
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (int(shape),)
        if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 3:
            raise ValueError(f"Canvas shape must be an int or a tuple of 1 to 3 ints, got {shape!r}.")
        if any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1 for s in shape):
            raise ValueError(f"Canvas extents must be positive ints, got {shape!r}.")
        shape = tuple(int(s) for s in shape)
        if prod(shape) > MAX_TOKENS:
            raise ValueError(
                f"Canvas shape {shape!r} holds {prod(shape)} tokens; at most {MAX_TOKENS} = 2**31 fit (token indices "
                "are int32 in the kernels)."
            )
        object.__setattr__(self, "shape", shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of tokens N = prod(shape)."""
        return prod(self.shape)

    def coords(self, index: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-dim coordinates of flat token indices (row-major)."""
        return np.unravel_index(np.asarray(index, dtype=np.int64), self.shape)

    def __str__(self) -> str:
        return f"Canvas({self.shape!r})"

    @classmethod
    def parse(cls, text: str) -> Canvas:
        """Read '128x128', '16384', '16,32,32' or '(16, 32, 32)' into a Canvas."""
        cleaned = text.strip().strip("()[]").replace("x", ",").replace("X", ",").replace("*", ",")
        parts = [p.strip() for p in cleaned.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(f"Cannot read canvas {text!r}: write it like 16384, 128x128 or 16x32x32.")
        return cls(tuple(int(p) for p in parts))
