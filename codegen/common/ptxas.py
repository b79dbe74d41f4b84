"""Resources from a ``ptxas -v`` log (Triton's bundled ptxas, or nvcc's): registers and spilled bytes."""

from __future__ import annotations

import re

_USAGE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


def parse_ptxas_log(log: str) -> tuple[int, int]:
    """(registers, spilled bytes stored + loaded) from a ``ptxas -v`` log; registers is -1 if absent."""
    registers = max(map(int, _USAGE.findall(log)), default=-1)
    spills = sum(int(stores) + int(loads) for stores, loads in _SPILLS.findall(log))
    return registers, spills


def parse_ptxas_functions(log: str) -> dict[str, tuple[int, int]]:
    """Per entry function of a ``ptxas -v`` log over several kernels: (registers, spilled bytes)."""
    pieces = _ENTRY.split(log)
    return {name: parse_ptxas_log(text) for name, text in zip(pieces[1::2], pieces[2::2])}
