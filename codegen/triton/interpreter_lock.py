"""Launch a generated Triton kernel; in Triton's interpreter, one launch at a time per process.

Triton's CPU interpreter is not re-entrant: while it runs a kernel it patches ``triton.language`` and
keeps the running program's state in module globals, so two Python threads launching at once corrupt
each other (``InterpreterError``). Interpreted launches therefore take one process-wide lock; compiled
(GPU) launches do not, and neither does anything else maskir does per call (planning, per-call lists,
the cache), which is safe from several threads.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

from triton.runtime.interpreter import InterpretedFunction

INTERPRETER_LOCK = threading.Lock()


def run_kernel(module: ModuleType, name: str, grid: tuple[int, ...], args: dict[str, Any]) -> None:
    """Run kernel ``name`` of a generated module on ``grid`` with keyword ``args`` and its launch options."""
    kernel = getattr(module, name)
    if isinstance(kernel, InterpretedFunction):
        with INTERPRETER_LOCK:
            kernel[grid](**args, **module.LAUNCH_OPTIONS[name])
    else:
        kernel[grid](**args, **module.LAUNCH_OPTIONS[name])
