"""One interface for maskir's kernel backends, and a registry of them by name.

A backend turns a plan into kernels for one target (a ``KernelSpec``) in two steps:

- ``generate(plan, spec, score_mod)`` -> ``Generated``: the kernel source text (None for a backend that
  generates none), the names of the run-time tensors its kernels take, in order, and what else the
  text depends on (the key of the runtime's cache);
- ``load(generated, plan, spec, loader)`` -> kernels with the runtime's interface (``forward`` with lse,
  ``backward``); the ``loader`` turns generated text into something runnable (a Python module for
  Triton, a built library for TVM) through the runtime's verified cache.

``can_run(spec)`` is None when the backend can run kernels for ``spec`` here, else the reason, one line
starting with the backend's name ("tvm: runs on CPU only (got a cuda target)").

The registry maps names to backends (``register``, ``get``, ``names``). Built-in backends are registered
by the runtime (``maskir.runtime.backends``): Triton's and TVM's loaders need the runtime's cache, the
reference and flex kernels live in the runtime. ``choose(name, spec, order)`` resolves "auto": the first
backend of ``order`` whose ``can_run`` is None; when none can, ``NoBackendError`` (a ``RuntimeError``)
lists every registered backend with its reason, as NATTEN's backend chooser does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch

from maskir.planner import Plan
from maskir.sim.target import KernelSpec

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""``KernelSpec.dtype`` names -> torch dtypes."""


@dataclass(frozen=True)
class Generated:
    """What ``Backend.generate`` returns.

    ``source``: the kernel text (None: the backend runs without generated text). ``tensor_names``: the
    run-time tensors the kernels take after q, k, v, in order (segment ids, routing, a score_mod's
    tensors). ``static_tensors``: the tensors a traced score_mod read when it was generated, by name.
    ``key``: what the text depends on beyond the plan and spec (the score_mod's traced text, the target),
    added to the cache key. ``detail``: the backend's own record, handed back to its ``load``.
    """

    source: str | None
    tensor_names: tuple[str, ...] = ()
    static_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)
    detail: Any = None


class Loader(Protocol):
    """How generated text becomes runnable; the runtime's cache implements it (verified text and bytes)."""

    def module(self, source: str) -> ModuleType:
        """The Python module of ``source`` (executed from a file: Triton's ``@jit`` reads its source)."""

    def library(self, source: str, target: dict[str, str], build: Callable[[], bytes]) -> bytes:
        """The shared library built from ``source`` for ``target`` (``build()`` on a miss)."""


@runtime_checkable
class Backend(Protocol):
    """A kernel backend (see the module docstring)."""

    name: str

    def can_run(self, spec: KernelSpec) -> str | None:
        """None when kernels for ``spec`` run here, else the reason (one line, starting with ``name``)."""

    def generate(self, plan: Plan, spec: KernelSpec, score_mod: Callable | None = None) -> Generated:
        """The kernels' source for ``plan`` on ``spec`` (head dim, dtype, kv heads from the spec)."""

    def load(self, generated: Generated, plan: Plan, spec: KernelSpec, loader: Loader) -> Any:
        """Kernels (``forward``/``backward``, see ``maskir.runtime.ops.Kernels``) of ``generate``'s result."""


class NoBackendError(RuntimeError):
    """No backend can run a target: the message lists each backend with its reason."""


_REGISTRY: dict[str, Backend] = {}
_LOCK = threading.Lock()
AUTO = "auto"
"""The name that asks ``choose`` for the first backend of a preference order that can run."""


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` under ``backend.name`` (ValueError if the name is taken and not ``replace``)."""
    if not isinstance(backend, Backend):
        raise TypeError(
            f"backend must have name, can_run, generate and load (maskir.codegen.backend.Backend), got "
            f"{type(backend).__name__}."
        )
    name = backend.name
    if not isinstance(name, str) or not name.isidentifier() or name == AUTO:
        raise ValueError(f"A backend's name must be an identifier other than {AUTO!r}, got {name!r}.")
    with _LOCK:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not backend:
            raise ValueError(f"A backend named {name!r} is registered already; pass replace=True to replace it.")
        _REGISTRY[name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove the backend registered as ``name`` (KeyError naming the registered ones if there is none)."""
    with _LOCK:
        if name not in _REGISTRY:
            raise KeyError(f"No backend named {name!r}; registered: {', '.join(_REGISTRY)}.")
        del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered backends' names, in registration order."""
    with _LOCK:
        return tuple(_REGISTRY)


def get(name: str) -> Backend:
    """The backend registered as ``name``; ValueError listing the registered names otherwise."""
    with _LOCK:
        backend = _REGISTRY.get(name) if isinstance(name, str) else None
        known = tuple(_REGISTRY)
    if backend is None:
        raise ValueError(f"backend must be one of {', '.join(map(repr, (AUTO, *known)))}, got {name!r}.")
    return backend


def reasons(spec: KernelSpec) -> dict[str, str | None]:
    """Every registered backend's ``can_run(spec)``, by name."""
    return {name: get(name).can_run(spec) for name in names()}


def choose(name: str, spec: KernelSpec, order: Sequence[str]) -> Backend:
    """The backend ``name`` names; for "auto" the first of ``order`` (registered names) that can run ``spec``.

    An explicit name is returned whatever its ``can_run`` says (its own build gives the precise error).
    "auto" raises ``NoBackendError`` when none of ``order`` can run; the message lists every registered
    backend with its reason ("can run, not in the auto order" for one that could).
    """
    if name != AUTO:
        return get(name)
    for candidate in order:
        backend = get(candidate)
        if backend.can_run(spec) is None:
            return backend
    lines = [f"  {_reason_line(backend, reason)}" for backend, reason in reasons(spec).items()]
    raise NoBackendError(
        f"backend='auto' found no backend that can run {spec.arch} head_dim={spec.head_dim} {spec.dtype} "
        f"(tried {', '.join(order)} in that order):\n" + "\n".join(lines)
    )


def _reason_line(name: str, reason: str | None) -> str:
    """ "name: reason" (a reason names its backend already by contract; one that does not is prefixed)."""
    if reason is None:
        return f"{name}: can run here, but is not in the auto order"
    return reason if reason.startswith(f"{name}:") else f"{name}: {reason}"
