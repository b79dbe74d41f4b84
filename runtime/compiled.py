"""``CompiledAttention``: a plan plus the kernels of one backend, callable like SDPA and reusable."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable

import torch

from maskir.canvas import Canvas
from maskir.codegen.common.table_grad import TRAINABLE_PREFIX
from maskir.ir import Pattern, Segments, check_canvas, is_dynamic
from maskir.planner import Plan
from maskir.planner import plan as plan_pattern
from maskir.runtime import ops
from maskir.runtime.backends import CacheLoader, resolve
from maskir.runtime.cache import DEFAULT_CACHE, KernelCache, cache_key
from maskir.runtime.checks import DTYPES, check_qkv, check_segments
from maskir.runtime.decode import LocalDecode
from maskir.runtime.gating import CallGates, GatedKernels, GatedLists
from maskir.runtime.routing import check_routing_indices, routing_node, scatter_routing, score_routing
from maskir.runtime.target import device_spec

CAPTURE_PREFIX = TRAINABLE_PREFIX
"""How the score_mod tracer names the tensors it captures (``capture_0``, ``capture_1``, ... in the order
it reads them): the keys of ``captures`` that replace them per call (``maskir.nn`` passes its parameters)."""

_HANDLES = itertools.count()
"""Numbers that make each CompiledAttention's op handle unique for the process."""
PROGRESS_SECONDS = 1.0


def _progress(message: str, started: float, quiet: bool) -> None:
    if not quiet and time.perf_counter() - started > PROGRESS_SECONDS:
        print(f"maskir: {message} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)


class CompiledAttention:
    """Attention with a fixed pattern, canvas, head layout, head dim, dtype and device.

    ``compiled(q, k, v)`` returns the output (and lse with ``return_lse=True``); gradients flow to q, k, v.
    ``.plan`` is the block-sparse plan, ``.source()`` the generated kernel text, ``.describe()`` a summary.
    """

    def __init__(
        self,
        pattern: Pattern,
        canvas: Canvas,
        kv_canvas: Canvas,
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        score_mod: Callable | None = None,
        block_q: int | None = None,
        block_kv: int | None = None,
        layout: str = "auto",
        backend: str = "auto",
        cache: KernelCache = DEFAULT_CACHE,
        quiet: bool = False,
        plan: Plan | None = None,
    ):
        if not isinstance(pattern, Pattern):
            raise TypeError(
                f"pattern must be a maskir Pattern (or spec text for maskir.attention/compile), got "
                f"{type(pattern).__name__}."
            )
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype}.")
        check_canvas(pattern, canvas, kv_canvas)
        started = time.perf_counter()
        self.pattern, self.canvas, self.kv_canvas = pattern, canvas, kv_canvas
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.score_mod = score_mod
        self.spec = device_spec(
            self.device, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, score_mod=score_mod is not None
        )
        self._backend = resolve(backend, self.spec)
        self.backend = self._backend.name
        if plan is not None and (plan.pattern, plan.canvas, plan.kv_canvas, plan.heads) != (
            pattern,
            canvas,
            kv_canvas,
            heads,
        ):
            raise ValueError(
                f"plan was made for {plan.pattern} on {plan.canvas} x {plan.kv_canvas} with {plan.heads} heads, "
                f"not for {pattern} on {canvas} x {kv_canvas} with {heads} heads: pass a plan of this pattern."
            )
        self.plan: Plan = plan or plan_pattern(
            pattern, canvas, kv_canvas, heads=heads, block_q=block_q, block_kv=block_kv, layout=layout, spec=self.spec
        )
        one_layout = getattr(self._backend, "one_layout", False)
        if one_layout and plan is None and len({part.layout.name for part in self.plan.parts}) > 1:
            # a backend of one token order (flex's BlockMask): a union split into parts of several orders is
            # planned unsplit
            blocks = {"block_q": block_q, "block_kv": block_kv}
            self.plan = plan_pattern(
                pattern, canvas, kv_canvas, heads=heads, **blocks, layout="identity", spec=self.spec
            )
        self._routing = routing_node(pattern)
        fields = {
            "pattern": str(pattern),
            "canvas": canvas.shape,
            "kv_canvas": kv_canvas.shape,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "dtype": DTYPES[dtype],
            "blocks": (self.plan.block_q, self.plan.block_kv),
            "layouts": [part.layout.name for part in self.plan.parts],
            "backend": self.backend,
            "device": _device_capability(self.device),
            "score_mod": getattr(score_mod, "__qualname__", None),
        }
        self.handle = cache_key({**fields, "object": next(_HANDLES)})  # unique even after an id is reused
        generated = self._backend.generate(self.plan, self.spec, score_mod)
        loader = CacheLoader(cache, {**fields, **generated.key}, self.plan.describe)
        self.kernels = self._backend.load(generated, self.plan, self.spec, loader)
        self._source = generated.source
        self.tensor_names = generated.tensor_names
        self._captured: dict[str, torch.Tensor] = generated.static_tensors
        self._gates = CallGates(self.plan, self.tensor_names) if self.dynamic else None
        gated = self._gates is not None and getattr(self.kernels, "walks_gated_lists", False)
        self._registered = (
            GatedKernels(self.kernels, self._gates) if gated else self.kernels
        )  # held: ops keep it weakly
        ops.register(self.handle, self._registered)
        self._decode = LocalDecode(self)
        _progress(f"compiled {pattern} on {canvas} ({self.backend})", started, quiet)

    def _run_tensors(self, q, k, segments, routing, captures=None) -> list[torch.Tensor]:
        batch, n_q, n_kv = q.shape[0], q.shape[2], k.shape[2]
        named: dict[str, torch.Tensor] = {}
        if any(isinstance(node, Segments) for node in self.pattern.walk()):
            if segments is None:
                raise ValueError(f"The pattern {self.pattern} has a Segments() node: pass segments=<int ids [B, N]>.")
            named["segments_q"], named["segments_kv"] = check_segments(segments, batch, n_q, n_kv, q.device)
        elif segments is not None:
            raise ValueError("segments were given but the pattern has no Segments() node.")
        if self._routing is not None:
            if routing is None:  # the scorer's top-k: valid by construction, no synchronisation
                indices = score_routing(q, k, self._routing)
            else:
                check_routing_indices(routing, q, k, self._routing)
                indices = routing
            named["routing_map"] = scatter_routing(indices, q, k, self._routing)
            named["routing_indices"] = indices.to(q.device)
        elif routing is not None:
            raise ValueError("routing was given but the pattern has no Routing node.")
        if self._captured:
            named.update(self.kernels.static_tensors(q.device))
            named.update({name: t.to(q.device) for name, t in (captures or self._fresh_captures()).items()})
        missing = [name for name in self.tensor_names if name not in named]
        if missing:
            raise ValueError(f"{self.pattern} needs run-time data {missing} that was not given.")
        return [named[name] for name in self.tensor_names]

    def run_tensors(self, q: torch.Tensor, k: torch.Tensor, *, segments=None, routing=None) -> list[torch.Tensor]:
        """The run-time tensors a call with these arguments hands the ``maskir::attention_fwd`` / ``_bwd`` ops
        (segment ids, routing, what the score_mod reads), in the order of ``tensor_names``: for callers that
        run the ops themselves (``maskir.distributed`` overlapping an exchange between two of them)."""
        return self._run_tensors(q, k, segments, routing)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float | None = None,
        segments=None,
        routing=None,
        return_lse: bool = False,
    ):
        return self._run(q, k, v, scale=scale, segments=segments, routing=routing, return_lse=return_lse)

    def _fresh_captures(self) -> dict[str, torch.Tensor]:
        """What the score_mod reads now, when a tensor it read at compile time requires grad: a tensor it
        derives (``log_slopes.exp()``, ``table * 2``) is rebuilt from the trained one on every call, so each
        call differentiates its own graph. {} otherwise (then the compile-time tensors are read, in-place
        updates such as an optimizer step included), and under torch.compile (it reads those tensors)."""
        if not any(t.requires_grad for t in self._captured.values()) or torch.compiler.is_compiling():
            return {}
        from maskir.codegen.common.score_mod import trace_score_mod

        traced = trace_score_mod(self.score_mod)
        refs = {ref.name: ref for ref in traced.tensors() if ref.data is not None}
        captured = {name: t for name, t in self._captured.items() if name.startswith(CAPTURE_PREFIX)}
        if refs.keys() != captured.keys() or any(
            tuple(ref.data.shape) != tuple(captured[name].shape) for name, ref in refs.items()
        ):
            raise ValueError(
                f"score_mod now reads other tensors ({sorted(refs)}) than when it was compiled "
                f"({sorted(captured)}): compile another CompiledAttention, or use maskir.attention."
            )
        return {name: ref.data for name, ref in refs.items()}

    def _run(self, q, k, v, *, scale, segments, routing, return_lse, captures=None):
        """``__call__``; ``captures`` (by traced name) replace the tensors the score_mod read at compile
        time: ``maskir.attention`` passes what the score_mod reads now (same expression, same shapes).

        The tensors reach the autograd Function as inputs, so floating ones that require grad (a bias
        table, learnable slopes) get gradients from the same backward pass as q, k and v."""
        shapes = check_qkv(q, k, v, enable_gqa=self.kv_heads != self.heads)
        expected = (self.heads, self.kv_heads, self.canvas.size, self.kv_canvas.size, self.head_dim, self.dtype)
        got = (shapes.heads, shapes.kv_heads, shapes.n_q, shapes.n_kv, shapes.head_dim, shapes.dtype)
        if got != expected or shapes.device.type != self.device.type:
            raise ValueError(
                f"This CompiledAttention was built for (heads, kv_heads, N_q, N_kv, D, dtype) = {expected} on "
                f"{self.device.type}, got {got} on {shapes.device.type}: compile another one."
            )
        scale = self.head_dim**-0.5 if scale is None else float(scale)
        tensors = self._run_tensors(q, k, segments, routing, captures)
        if self._decode.applies(q, k, v, tensors):  # few queries, no gradient: the decode kernels (runtime/decode.py)
            out, lse = self._decode(q, k, v, scale, dict(zip(self.tensor_names, tensors)))
            return (out, lse) if return_lse else out
        out, lse = ops.AttentionFunction.apply(
            q.contiguous(), k.contiguous(), v.contiguous(), self.handle, scale, *tensors
        )
        return (out, lse) if return_lse else out

    @property
    def dynamic(self) -> bool:
        """True when the allowed set depends on per-call data (segments, routing)."""
        return is_dynamic(self.pattern)

    def tile_gates(
        self, q: torch.Tensor, k: torch.Tensor, *, segments=None, routing=None, backward: bool = False
    ) -> list[tuple[GatedLists, ...] | None]:
        """A call's per-call planning, without its kernels: per plan part, the lists of tiles this call's
        ``segments``/``routing`` leave open (``GatedLists``: forward/dQ lists, and with ``backward`` the
        dK/dV lists; ``.open_tiles`` [B, H or 1] counts them); None for a part without a gate.

        Every Triton- or TVM-backend call builds exactly these before it launches (O(N + entries) torch ops on
        q's device, no synchronisation), unless its run-time tensors are those of the call before (the
        backward of a forward, layers sharing this object and one batch): then it reuses them. Here they are
        always built anew. ``routing`` as in ``__call__`` (None: scored from q and k)."""
        if not getattr(self.kernels, "walks_gated_lists", False):
            raise ValueError(
                "tile_gates needs kernels that walk per-call lists (the Triton or TVM backend); "
                f"this CompiledAttention runs {self.backend!r}."
            )
        shapes = check_qkv(q, k, k, enable_gqa=self.kv_heads != self.heads)
        if shapes.device.type != self.device.type:
            raise ValueError(f"q is on {shapes.device.type}; this CompiledAttention was built for {self.device.type}.")
        tensors = self._run_tensors(q, k, segments, routing)
        parts = self.kernels.tables(q.device)
        if self._gates is None:
            return [None] * len(parts)
        return self._gates.lists(parts, tensors, backward=backward, fresh=True)

    def source(self) -> str:
        """The generated kernel source (as stored in the cache)."""
        if self._source is None:
            return f"# backend {self.backend!r} generates no kernel text: {self._backend.__doc__}\n"
        return self._source

    def describe(self) -> str:
        """The plan summary plus backend, dtype and head layout."""
        heads = f"{self.heads} heads" + (f" ({self.kv_heads} kv heads)" if self.kv_heads != self.heads else "")
        return (
            f"{self.plan.describe()}\n  backend {self.backend}, {DTYPES[self.dtype]}, head_dim {self.head_dim}, {heads}"
        )


def _device_capability(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda:sm_{major}{minor}"
    return device.type
