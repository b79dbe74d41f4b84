"""The Triton backend behind the ``maskir.codegen.backend.Backend`` interface.

Kernels are compiled on CUDA and run in Triton's interpreter on a CPU (``TRITON_INTERPRET=1``, 100-300x
slower than TVM's CPU kernels: for tests and an explicit ``backend="triton"``). This module imports
triton only inside ``load`` (after ``use_interpreter``), because triton reads ``TRITON_INTERPRET`` when
it is first imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

from maskir.codegen.backend import TORCH_DTYPES, Generated, Loader
from maskir.codegen.triton.emit import MAX_HEAD_DIM, MIN_HEAD_DIM
from maskir.planner import Plan
from maskir.sim.target import KernelSpec


def interpreter_reason() -> str | None:
    """None when this process can run Triton kernels in the interpreter, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton: triton is not installed (pip install triton)"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            "triton: no CUDA device, and triton was imported before TRITON_INTERPRET=1 was set (set it in the "
            "environment before importing triton or torch.compile to run the interpreter)"
        )
    return None


def use_interpreter() -> None:
    """Make Triton run kernels in its interpreter in this process (CPU tensors, no GPU).

    Triton reads TRITON_INTERPRET when ``triton`` is first imported, so it is set here before the backend
    imports it; a process that imported triton without it cannot interpret maskir's kernels (RuntimeError).
    """
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "maskir runs Triton kernels on CPU in Triton's interpreter, but triton was imported before "
            "TRITON_INTERPRET=1 was set. Set TRITON_INTERPRET=1 in the environment before importing triton "
            "(or torch.compile), or pass backend='tvm' or backend='reference'."
        )


class TritonBackend:
    """FlashAttention-2-style Triton kernels: compiled on CUDA, interpreted on a CPU."""

    name = "triton"

    def can_run(self, spec: KernelSpec) -> str | None:
        if not MIN_HEAD_DIM <= spec.head_dim <= MAX_HEAD_DIM:
            return f"triton: head_dim must lie in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {spec.head_dim}"
        if spec.device == "cuda":
            return (
                None if importlib.util.find_spec("triton") else "triton: triton is not installed (pip install triton)"
            )
        return interpreter_reason()

    def generate(self, plan: Plan, spec: KernelSpec, score_mod: Callable | None = None) -> Generated:
        from maskir.codegen.triton.emit import generate_source

        interpret = spec.device != "cuda"
        generated = generate_source(
            plan,
            head_dim=spec.head_dim,
            dtype=TORCH_DTYPES[spec.dtype],
            kv_heads=spec.kv_heads,
            score_mod=score_mod,
            interpret=interpret,
            capability=spec.capability or (9, 0),
            shared_memory_per_block=spec.shared_memory_per_block or None,
        )
        return Generated(
            generated.source,
            tuple(generated.tensor_names),
            generated.static_tensors,
            {"score_mod": generated.score_mod_text, "interpret": interpret},
            generated,
        )

    def load(self, generated: Generated, plan: Plan, spec: KernelSpec, loader: Loader):
        if spec.device != "cuda":
            use_interpreter()
        from maskir.codegen.triton.launch import TritonAttention

        return TritonAttention(loader.module(generated.source), plan, generated.detail)
