"""Progress of slow planning work: a line redrawn with a carriage return when stderr is a terminal;
otherwise (a log file, CI, a notebook's captured stream) a ``logging`` INFO record on the ``maskir.planner``
logger at most every ``LOG_EVERY_SECONDS`` (and one at the end), never carriage returns. Nothing is shown
for work shorter than ``PROGRESS_AFTER_SECONDS``.
"""

from __future__ import annotations

import logging
import sys
import time

PROGRESS_AFTER_SECONDS = 1.0
LOG_EVERY_SECONDS = 10.0
LOGGER = logging.getLogger("maskir.planner")


class Progress:
    """``update(done)`` after each step of ``total`` (counted in ``unit``), ``close()`` at the end."""

    def __init__(self, what: str, total: int, unit: str = "tiles"):
        self.what, self.total, self.unit = what, total, unit
        self.started, self.shown = time.perf_counter(), False
        self.terminal = sys.stderr.isatty()
        self.logged_at = -float("inf")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.started <= PROGRESS_AFTER_SECONDS:
            return
        self.shown = True
        message = f"maskir plan: {self.what}: {done:,}/{self.total:,} {self.unit}"
        if self.terminal:
            print(f"\r{message}", end="", file=sys.stderr, flush=True)
        elif now - self.logged_at >= LOG_EVERY_SECONDS or done == self.total:
            self.logged_at = now
            LOGGER.info(message)

    def close(self) -> None:
        if self.shown and self.terminal:
            print(file=sys.stderr, flush=True)
