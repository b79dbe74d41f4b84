"""The registered backends and how the runtime picks one: ``resolve`` (a name or "auto").

Registered here (``maskir.codegen.backend.register``): "triton" and "tvm" (``maskir.codegen.triton.backend``,
``maskir.codegen.tvm.backend``), and the two whose kernels live in the runtime: "flex"
(``runtime/flex_backend.py``) and "reference" (``runtime/reference_backend.py``).

"auto" takes the first backend of ``AUTO_ORDER[device]`` whose ``can_run(spec)`` is None:

- CUDA: triton (the compiled fast path), flex, reference;
- CPU: tvm (TensorIR built for this CPU: 100-300x faster than Triton's interpreter) when apache-tvm is
  installed, else triton (its interpreter: pass backend="triton" to test the kernels a GPU runs), reference.

When none can run, ``maskir.codegen.backend.NoBackendError`` (a RuntimeError) lists every backend with its
reason. ``CacheLoader`` is the ``Loader`` the Triton and TVM backends load generated text through.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from types import ModuleType

from maskir.codegen import backend as registry
from maskir.codegen.backend import Backend, Generated
from maskir.codegen.triton.backend import TritonBackend
from maskir.codegen.tvm.backend import TvmBackend
from maskir.ir import Segments
from maskir.planner import Plan
from maskir.runtime.cache import CacheEntry, KernelCache, source_digest
from maskir.runtime.routing import routing_node
from maskir.sim.target import KernelSpec

AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "flex", "reference"),
    "cpu": ("tvm", "triton", "reference"),
}
"""The backends "auto" tries, in order, per device type."""


def _run_time_names(plan: Plan, names: tuple[str, ...], routing: str) -> tuple[str, ...]:
    """The names among ``names`` the pattern reads at run time: segment ids with a Segments() node, the
    ``routing`` tensor with a Routing node."""
    segments = any(isinstance(node, Segments) for node in plan.pattern.walk())
    routed = routing_node(plan.pattern) is not None
    return tuple(name for name in names if (name.startswith("segments") and segments) or (name == routing and routed))


class ReferenceBackend:
    """The float64 dense reference (``maskir.reference``): exact and slow, runs anywhere."""

    name = "reference"
    calls_score_mod = True
    recomputes_forward = True
    one_layout = False

    def can_run(self, spec: KernelSpec) -> str | None:
        return None

    def generate(self, plan: Plan, spec: KernelSpec, score_mod: Callable | None = None) -> Generated:
        from maskir.runtime.reference_backend import TENSOR_NAMES, traceable

        names = _run_time_names(plan, TENSOR_NAMES, "routing_indices")
        traced = traceable(score_mod)
        captured = traced[1] if traced else {}
        score_expr = traced[0] if captured else None
        return Generated(None, names + tuple(captured), captured, {}, (score_mod, score_expr))

    def load(self, generated: Generated, plan: Plan, spec: KernelSpec, loader) -> object:
        from maskir.runtime.reference_backend import ReferenceKernels

        score_mod, score_expr = generated.detail
        pattern, canvases = plan.pattern, (plan.canvas, plan.kv_canvas)
        names, captured = generated.tensor_names, generated.static_tensors
        return ReferenceKernels(pattern, *canvases, score_mod, names, score_expr, captured)


class FlexBackend:
    """torch's flex_attention over the plan's BlockMask: compiled on CUDA, eager (forward only) on a CPU."""

    name = "flex"
    calls_score_mod = True
    recomputes_forward = True
    one_layout = True
    """A BlockMask has one token order: a union split into parts of several layouts is planned unsplit."""

    def can_run(self, spec: KernelSpec) -> str | None:
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return "flex: needs torch.nn.attention.flex_attention (torch >= 2.5)"
        return None

    def generate(self, plan: Plan, spec: KernelSpec, score_mod: Callable | None = None) -> Generated:
        from maskir.runtime.flex_backend import TENSOR_NAMES

        return Generated(None, _run_time_names(plan, TENSOR_NAMES, "routing_map"), {}, {}, score_mod)

    def load(self, generated: Generated, plan: Plan, spec: KernelSpec, loader) -> object:
        from maskir.runtime.flex_backend import FlexKernels

        return FlexKernels(plan, generated.detail, generated.tensor_names, spec.kv_heads)


for _backend in (TritonBackend(), TvmBackend(), FlexBackend(), ReferenceBackend()):
    registry.register(_backend, replace=True)


def resolve(name: str, spec: KernelSpec) -> Backend:
    """The backend ``name`` names ("auto": the first of ``AUTO_ORDER[spec.device]`` that can run ``spec``).

    Unknown names: ValueError listing the registered ones. An explicit backend that cannot run ``spec``:
    ValueError with its reason. "auto" with none: ``NoBackendError`` listing every backend's reason."""
    backend = registry.choose(name, spec, AUTO_ORDER[spec.device])
    if name != registry.AUTO:
        reason = backend.can_run(spec)
        if reason is not None:
            raise ValueError(f"backend={name!r} cannot run here: {reason}.")
    return backend


def calls_score_mod(backend: Backend) -> bool:
    """Whether ``backend`` calls a score_mod itself (it need not be traceable, and its function is the key)."""
    return bool(getattr(backend, "calls_score_mod", False))


def recomputes_forward(backend: Backend) -> bool:
    """Whether ``backend``'s backward recomputes its forward instead of reading the given out and lse (so a
    union of parts cannot hand it the merged ones: ``maskir.runtime.union``)."""
    return bool(getattr(backend, "recomputes_forward", False))


class CacheLoader:
    """``Loader`` over a ``KernelCache``: generated text under the key ``fields`` + the source's digest
    (another maskir build's text for the same key gets its own entry), verified before it runs."""

    def __init__(self, cache: KernelCache, fields: dict, describe: Callable[[], str]):
        self.cache, self.fields, self.describe = cache, fields, describe

    def entry(self, source: str) -> CacheEntry:
        fields = {**self.fields, "source_sha256": source_digest(source)}
        return self.cache.get_or_build(fields, lambda: (source, {"plan": self.describe()}), expected_source=source)

    def module(self, source: str) -> ModuleType:
        return self.cache.load_module(self.entry(source))

    def library(self, source: str, target: dict[str, str], build: Callable[[], bytes]) -> bytes:
        self.entry(source)
        fields = {**self.fields, "source_sha256": source_digest(source), "target": target}
        return self.cache.get_or_build_library(fields, build)
