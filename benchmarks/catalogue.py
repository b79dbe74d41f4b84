"""The benchmark suite of DESIGN.md ("Performance targets") as data: name -> pattern on a canvas.

Every entry comes in three sizes of the same pattern family:
- ``full``: the table's sizes, N = 16384 tokens (B = 1, H = 16, D = 128, bf16: ``BATCH``, ``HEADS``,
  ``HEAD_DIM``, ``DTYPE``), what ``benchmarks/suite.py`` measures against flex and SDPA;
- ``medium``: N between 2048 and 4096, GPU correctness tests at real-ish sizes (``tests/gpu``);
- ``small``: N <= 1024, CPU checks (planner vs reference mask, the Triton interpreter).
Names match ``shared/anchors/h100_flex_sdpa.jsonl`` where they overlap (dense, causal, swa_causal_w1024,
na2d_128x128_k17, swin_128x128_w8), so measurements line up with the anchors.

Two entries are data dependent: ``documents16`` (``Segments() & Causal()`` over equal documents: ids from
``Case.segment_ids``) and ``routing_top8`` (MoBA: top-k kv blocks by pooled q.k plus the own block,
causal: indices from ``Case.routing_indices``).
"""

from __future__ import annotations

from maskir import Canvas, Causal, Columns, Dilated, Full, Pattern, Segments, Window, patterns
from maskir.bench.case import BATCH, DTYPE, HEAD_DIM, HEADS, SIZES, Case

__all__ = ["BATCH", "CATALOGUE", "DTYPE", "HEADS", "HEAD_DIM", "NAMES", "SIZES", "Case", "case", "cases"]


def _has(pattern: Pattern, node_type: type) -> bool:
    return any(isinstance(node, node_type) for node in pattern.walk())


def _fixed(local: int, stride: int) -> Pattern:
    """Sparse Transformer "fixed"-style: the last ``local`` tokens and every ``stride``-th column, causal."""
    return (Window(local - 1, 0) | Columns(stride, 1)) & Causal()


DOCUMENTS = 16
"""Entries with ``Segments()`` pack this many equal documents."""

_TABLE: dict[str, dict[str, tuple[Pattern, Canvas]]] = {
    "dense": {
        "full": (Full(), Canvas(16384)),
        "medium": (Full(), Canvas(4096)),
        "small": (Full(), Canvas(1024)),
    },
    "causal": {
        "full": (Causal(), Canvas(16384)),
        "medium": (Causal(), Canvas(4096)),
        "small": (Causal(), Canvas(1024)),
    },
    "swa_causal_w1024": {
        "full": (patterns.sliding_window(1024), Canvas(16384)),
        "medium": (patterns.sliding_window(512), Canvas(4096)),
        "small": (patterns.sliding_window(128), Canvas(1024)),
    },
    "sink64_swa1024": {
        "full": (patterns.streaming_llm(64, 1024), Canvas(16384)),
        "medium": (patterns.streaming_llm(32, 512), Canvas(4096)),
        "small": (patterns.streaming_llm(16, 128), Canvas(1024)),
    },
    "dilated_w256_d4": {
        "full": (Dilated(256, 4), Canvas(16384)),
        "medium": (Dilated(128, 4), Canvas(4096)),
        "small": (Dilated(32, 4), Canvas(1024)),
    },
    "na2d_128x128_k17": {
        "full": (patterns.natten(17), Canvas((128, 128))),
        "medium": (patterns.natten(13), Canvas((64, 64))),
        "small": (patterns.natten(7), Canvas((32, 32))),
    },
    "na3d_16x32x32_k5_9_9": {
        "full": (patterns.natten((5, 9, 9)), Canvas((16, 32, 32))),
        "medium": (patterns.natten((5, 9, 9)), Canvas((8, 16, 32))),
        "small": (patterns.natten((3, 5, 5)), Canvas((4, 16, 16))),
    },
    "swin_128x128_w8": {
        "full": (patterns.swin(8), Canvas((128, 128))),
        "medium": (patterns.swin(8), Canvas((64, 64))),
        "small": (patterns.swin(8), Canvas((32, 32))),
    },
    "fixed_local256_cols128": {
        "full": (_fixed(256, 128), Canvas(16384)),
        "medium": (_fixed(128, 64), Canvas(4096)),
        "small": (_fixed(64, 32), Canvas(1024)),
    },
    "radial_16x1024": {
        "full": (patterns.radial(16, 1024, 512), Canvas((16, 1024))),
        "medium": (patterns.radial(8, 512, 256), Canvas((8, 512))),
        "small": (patterns.radial(8, 128, 64), Canvas((8, 128))),
    },
    "documents16": {
        "full": (patterns.document(causal=True), Canvas(16384)),
        "medium": (patterns.document(causal=True), Canvas(4096)),
        "small": (patterns.document(causal=True), Canvas(1024)),
    },
    "routing_top8": {
        "full": (patterns.moba(128, 8), Canvas(16384)),
        "medium": (patterns.moba(128, 8), Canvas(4096)),
        "small": (patterns.moba(64, 4), Canvas(1024)),
    },
}

CATALOGUE: dict[str, dict[str, Case]] = {
    name: {
        size: Case(name, size, pattern, canvas, DOCUMENTS if _has(pattern, Segments) else 0)
        for size, (pattern, canvas) in sizes.items()
    }
    for name, sizes in _TABLE.items()
}
"""name -> size -> Case, in the order of DESIGN.md's table."""

NAMES = tuple(CATALOGUE)


def case(name: str, size: str = "full") -> Case:
    """The catalogue entry ``name`` at ``size`` ("full", "medium" or "small")."""
    if name not in CATALOGUE:
        raise ValueError(f"Unknown benchmark {name!r}; the catalogue has: {', '.join(NAMES)}.")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}.")
    return CATALOGUE[name][size]


def cases(size: str = "full", names: tuple[str, ...] | list[str] | None = None) -> list[Case]:
    """The entries ``names`` (default: all, in catalogue order) at ``size``."""
    return [case(name, size) for name in (NAMES if not names else names)]
