"""Exact tile classes by evaluation: the path for leaves no rule covers (``Predicate``), and the test oracle.

For each q tile the candidate kv tiles' tokens are evaluated with ``maskir.reference.evaluate_pairs`` in
blocks of at most ``PAIRS_PER_EVALUATION`` pairs (so memory stays bounded, well under 256 MiB), and a tile
is FULL when all its pairs are allowed, EMPTY when none is. Runs longer than a second report progress: a
line redrawn with a carriage return when stderr is a terminal; otherwise (a log file, CI, a notebook's
captured stream) a ``logging`` INFO record on the ``maskir.planner`` logger at most every
``LOG_EVERY_SECONDS``, never carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from maskir.ir import Pattern
from maskir.planner.kinds import EMPTY, FULL, PARTIAL
from maskir.planner.plan import PAIRS_PER_EVALUATION
from maskir.planner.tiles import Side
from maskir.reference import evaluate_pairs

PROGRESS_AFTER_SECONDS = 1.0
LOG_EVERY_SECONDS = 10.0
LOGGER = logging.getLogger("maskir.planner")


class Progress:
    """Progress of slow work, reported once it has taken longer than PROGRESS_AFTER_SECONDS: a redrawn line
    on a terminal stderr, else a log record at most every LOG_EVERY_SECONDS (and one at the end)."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.started, self.shown = what, total, time.perf_counter(), False
        self.terminal = sys.stderr.isatty()
        self.logged_at = -float("inf")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.started <= PROGRESS_AFTER_SECONDS:
            return
        self.shown = True
        message = f"maskir plan: {self.what}: {done:,}/{self.total:,} tiles"
        if self.terminal:
            print(f"\r{message}", end="", file=sys.stderr, flush=True)
        elif now - self.logged_at >= LOG_EVERY_SECONDS or done == self.total:
            self.logged_at = now
            LOGGER.info(message)

    def close(self) -> None:
        if self.shown and self.terminal:
            print(file=sys.stderr, flush=True)


def exact_kinds(
    pattern: Pattern, q: Side, kv: Side, rows: np.ndarray, cols: np.ndarray, *, head: int = 0, **data
) -> np.ndarray:
    """Exact class of each pair (q tile rows[i], kv tile cols[i]); pairs must be sorted by row."""
    kinds = np.empty(rows.shape, dtype=np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1, [rows.size]]) if rows.size else []
    progress = Progress(f"evaluating {pattern} exactly", rows.size)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        q_tokens = q.token_matrix(rows[lo : lo + 1])[0]
        q_tokens = q_tokens[q_tokens >= 0]
        per_call = max(1, PAIRS_PER_EVALUATION // max(1, q_tokens.size * kv.block))
        for first in range(lo, hi, per_call):
            tiles = cols[first : min(hi, first + per_call)]
            tokens = kv.token_matrix(tiles)
            valid = tokens >= 0
            allowed = evaluate_pairs(pattern, q.canvas, kv.canvas, q_tokens, tokens[valid], head=head, **data)
            per_token = np.zeros(tokens.shape, dtype=np.int64)
            per_token[valid] = allowed.sum(axis=0)
            hits = per_token.sum(axis=1)
            total = q_tokens.size * valid.sum(axis=1)
            kinds[first : first + tiles.size] = np.where(hits == 0, EMPTY, np.where(hits == total, FULL, PARTIAL))
        progress.update(hi)
    progress.close()
    return kinds
