"""Launch a generated Triton kernel; in Triton's interpreter, one launch at a time per process.

Triton's CPU interpreter is not re-entrant: while it runs a kernel it patches ``triton.language`` and
keeps the running program's state in module globals, so two Python threads launching at once corrupt
each other (``InterpreterError``). Interpreted launches therefore take one process-wide lock; compiled
(GPU) launches do not, and neither does anything else maskir does per call (planning, per-call lists,
the cache), which is safe from several threads.
"""

from __future__ import annotations

import linecache
import threading
from types import ModuleType
from typing import Any

from triton.runtime.interpreter import InterpretedFunction

INTERPRETER_LOCK = threading.Lock()


def _keep_source_lines(module: ModuleType, filename: str) -> None:
    """The interpreter reads a kernel's source through ``inspect`` (``linecache``) at its first launch. A
    module executed from a verified string (``maskir.runtime.verified_import``) has a virtual ``<...>``
    file name that ``linecache`` never reads from disk; if its lines were dropped (``linecache.clearcache``),
    register them again from the module's own loader, never from a file."""
    if filename.startswith("<") and filename not in linecache.cache:
        source = module.__loader__.get_source(module.__name__)
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)


def run_kernel(module: ModuleType, name: str, grid: tuple[int, ...], args: dict[str, Any]) -> None:
    """Run kernel ``name`` of a generated module on ``grid`` with keyword ``args`` and its launch options."""
    kernel = getattr(module, name)
    if isinstance(kernel, InterpretedFunction):
        with INTERPRETER_LOCK:
            _keep_source_lines(module, kernel.fn.__code__.co_filename)
            kernel[grid](**args, **module.LAUNCH_OPTIONS[name])
    else:
        kernel[grid](**args, **module.LAUNCH_OPTIONS[name])
