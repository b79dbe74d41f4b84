"""maskir: a compiler for sparse attention.

Declare a pattern in the mask IR (``maskir.ir``), plan it into block-sparse tiles (``maskir.plan``),
run it with generated kernels (``maskir.attention`` / ``maskir.compile``) and predict its speed
(``maskir.simulate``). Heavy modules load on first use: ``import maskir`` does no work.
"""

from importlib import import_module
from typing import Any

from maskir.canvas import Canvas
from maskir.ir import (
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    Pattern,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    SlidingWindow,
    Strided,
    Stripes,
    Window,
)

__version__ = "0.1.0"

_LAZY = {
    "parse": "maskir.spec",
    "load_spec": "maskir.spec",
    "Spec": "maskir.spec",
    "SpecError": "maskir.spec",
    "reference_mask": "maskir.reference",
    "reference_attention": "maskir.reference",
    "patterns": "maskir.patterns",
    "score_mods": "maskir.score_mods",
    "plan": "maskir.planner",
    "Plan": "maskir.planner",
    "simulate": "maskir.sim",
    "SimReport": "maskir.sim",
    "attention": "maskir.runtime",
    "compile": "maskir.runtime",
    "CompiledAttention": "maskir.runtime",
    "decode": "maskir.runtime",
    "compile_decode": "maskir.runtime",
    "DecodeAttention": "maskir.runtime",
    "reference": "maskir.reference",
    "spec": "maskir.spec",
    "planner": "maskir.planner",
    "sim": "maskir.sim",
    "runtime": "maskir.runtime",
    "codegen": "maskir.codegen",
}

__all__ = [
    "And",
    "Blocks",
    "Canvas",
    "Causal",
    "Columns",
    "Dilated",
    "Distance",
    "Full",
    "Global",
    "Grid",
    "Neighborhood",
    "Not",
    "Or",
    "Pattern",
    "PerHead",
    "Predicate",
    "Prefix",
    "Routing",
    "Segments",
    "Sink",
    "SlidingWindow",
    "Strided",
    "Stripes",
    "Window",
    "__version__",
]
"""``from maskir import *`` takes the IR only; ``maskir.plan``, ``maskir.attention`` etc. load on first use."""


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'maskir' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    value = module if _LAZY[name] == f"maskir.{name}" else getattr(module, name)
    globals()[name] = value
    return value
