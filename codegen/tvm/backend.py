"""The TVM backend behind the ``maskir.codegen.backend.Backend`` interface.

TensorIR tile kernels built for this CPU (``llvm``, its vector width): the fast CPU backend. It runs on
CPU tensors only (its CUDA flavour, ``launch.cuda_source``, is printed and compiled by nvcc, never run)
and needs apache-tvm.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from maskir.codegen.backend import TORCH_DTYPES, Generated, Loader
from maskir.codegen.tvm.emit import MAX_HEAD_DIM, MIN_HEAD_DIM
from maskir.planner import Plan
from maskir.sim.target import KernelSpec


def tvm_installed() -> bool:
    """Whether apache-tvm can be imported here (without importing it)."""
    return importlib.util.find_spec("tvm") is not None


class TvmBackend:
    """TVM TensorIR kernels on a CPU (forward, dQ, dK/dV; score_mods and their table gradients)."""

    name = "tvm"

    def can_run(self, spec: KernelSpec) -> str | None:
        if spec.device != "cpu":
            return f"tvm: runs on CPU tensors only (built for llvm), got a {spec.device} target"
        if not MIN_HEAD_DIM <= spec.head_dim <= MAX_HEAD_DIM:
            return f"tvm: head_dim must lie in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {spec.head_dim}"
        if not tvm_installed():
            return "tvm: apache-tvm is not installed (pip install 'maskir[tvm]')"
        return None

    def generate(self, plan: Plan, spec: KernelSpec, score_mod: Callable | None = None) -> Generated:
        from maskir.codegen.tvm import launch
        from maskir.codegen.tvm.emit import generate_tvm_source

        generated = generate_tvm_source(
            plan,
            head_dim=spec.head_dim,
            dtype=TORCH_DTYPES[spec.dtype],
            kv_heads=spec.kv_heads,
            score_mod=score_mod,
            vector_lanes=launch.host_vector_lanes(),
            vector_registers=launch.host_vector_registers(),
        )
        key = {"score_mod": generated.score_mod_text, "target": generated.target}
        return Generated(generated.source, tuple(generated.tensor_names), generated.static_tensors, key, generated)

    def load(self, generated: Generated, plan: Plan, spec: KernelSpec, loader: Loader):
        from maskir.codegen.tvm import launch

        library = loader.library(generated.source, launch.host_target(), lambda: launch.library_bytes(generated.source))
        return launch.TvmAttention(plan, generated.detail, library)
