"""The public entry points: ``maskir.attention`` (drop-in, like SDPA/flex) and ``maskir.compile``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

from maskir.canvas import Canvas
from maskir.codegen.backend import AUTO
from maskir.codegen.backend import get as get_backend
from maskir.ir import Pattern, node_from_tree, node_tree
from maskir.planner import Plan
from maskir.runtime.backends import calls_score_mod, resolve
from maskir.runtime.checks import check_qkv, resolve_canvas
from maskir.runtime.compiled import CompiledAttention
from maskir.runtime.target import device_spec

MEMO_SIZE = 64
"""How many configurations ``maskir.attention`` keeps compiled (least recently used ones go first)."""
_COMPILED: OrderedDict[tuple, CompiledAttention] = OrderedDict()
_MEMO_LOCK = threading.Lock()
"""Guards ``_COMPILED`` and ``_BUILDING`` (maskir.attention may be called from several threads)."""
_BUILDING: dict[tuple, threading.Lock] = {}
"""One lock per configuration being built: a configuration asked for by two threads is built once."""
_TRACED: dict[str, tuple[CompiledAttention, dict[str, torch.Tensor] | None]] = {}
"""Builds made while torch.compile traced ``maskir.attention`` and the tensors their score_mod read then,
by op handle: the compiled graphs call them (never evicted: a graph keeps only the handle)."""


def _pattern(pattern: Pattern | str) -> Pattern:
    """A Pattern, parsing spec text (``maskir.parse``: a small grammar, never ``eval``)."""
    if isinstance(pattern, str):
        from maskir.spec import parse

        return parse(pattern)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a maskir Pattern or spec text, got {type(pattern).__name__}.")
    return pattern


def _traced_score_mod(score_mod: Callable | None, backend: str) -> tuple[tuple | None, dict[str, torch.Tensor]]:
    """(structure, captures) of what a score_mod computes now, for the generated kernels.

    structure: the traced text with the name, shape and kind of every tensor it reads, so a changed
    Python number or tensor shape compiles anew; captures: those tensors, passed on this call, so a
    rebound name (``bias = new_bias``) or a tensor built inside the function is read fresh without a new
    compile. The reference backend keys on the function too (it calls a score_mod it cannot trace as is:
    no structure, no captures).
    """
    if score_mod is None:
        return None, {}
    from maskir.codegen.common.score_mod import trace_score_mod

    try:
        traced = trace_score_mod(score_mod)
    except Exception:  # any failure of user code under tracing: the reference and flex backends call it as is
        if calls_score_mod(get_backend(backend)):
            return None, {}
        raise
    refs = traced.tensors()
    structure = str(traced), tuple((ref.name, ref.shape, ref.dtype) for ref in refs)
    return structure, {ref.name: ref.data for ref in refs if ref.data is not None}


def compile(  # noqa: A001 (the public name, like torch.compile)
    pattern: Pattern | str,
    canvas: Canvas | int | tuple[int, ...],
    *,
    heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    kv_heads: int | None = None,
    score_mod: Callable | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
    layout: str = "auto",
    backend: str = "auto",
    quiet: bool = False,
    plan: Plan | None = None,
) -> CompiledAttention:
    """Plan ``pattern`` and build its kernels once; call the result in a training loop.

    ``kv_heads`` (default ``heads``) below ``heads`` is GQA/MQA. ``backend`` is a registered backend's name
    (``maskir.codegen.backend.names()``): "triton" (compiled on CUDA, interpreted on CPU), "tvm" (TensorIR
    built for llvm: CPU tensors only), "flex" (torch's flex_attention over the plan's BlockMask: compiled
    on CUDA, forward only on CPU) or "reference" (float64 dense, for checking); or "auto": the first backend
    of ``maskir.runtime.backends.AUTO_ORDER[device type]`` whose ``can_run`` accepts this target (README,
    "Backends"). When none can, "auto" raises ``maskir.codegen.backend.NoBackendError`` (a RuntimeError)
    listing each backend's reason; an explicit backend that cannot run is a ValueError with its reason; an unknown
    name is a ValueError listing the registered ones. ``device`` defaults to CUDA when there is one (CPU for
    backend "tvm"). ``pattern`` may be spec text (``maskir.parse``). Tensors a ``score_mod`` reads are
    captured now: in-place updates (an optimizer step) are seen by later calls, a rebound name needs a new
    compile. Floating ones that require grad get gradients (``maskir.score_mods`` has bias tables, ALiBi
    slopes, T5 buckets); then the score_mod is traced again on each call, so a tensor it derives from a
    trained one (``log_slopes.exp()``) is rebuilt each step (not inside ``torch.compile``, whose graph reads
    the tensors captured here: let the score_mod read the parameter itself there).
    ``plan``: a prebuilt plan of ``pattern`` on these canvases and heads to run instead of planning (e.g. a
    context-parallel rank's sub-plan from ``maskir.distributed``); block_q, block_kv and layout are then unused.
    """
    pattern = _pattern(pattern)
    if device is None:
        device = "cuda" if torch.cuda.is_available() and backend != "tvm" else "cpu"
    canvas = canvas if isinstance(canvas, Canvas) else Canvas(canvas)
    kv_canvas = canvas if kv_canvas is None else kv_canvas if isinstance(kv_canvas, Canvas) else Canvas(kv_canvas)
    kv_heads = heads if kv_heads is None else kv_heads
    for name, value in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")
    if heads % kv_heads:
        raise ValueError(f"Key/value heads must evenly divide query heads, got heads_q={heads}, heads_kv={kv_heads}.")
    return CompiledAttention(
        pattern,
        canvas,
        kv_canvas,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        device=torch.device(device),
        score_mod=score_mod,
        block_q=block_q,
        block_kv=block_kv,
        layout=layout,
        backend=backend,
        quiet=quiet,
        plan=plan,
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    canvas: Canvas | int | tuple[int, ...] | None = None,
    *,
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    score_mod: Callable | None = None,
    scale: float | None = None,
    enable_gqa: bool = False,
    segments=None,
    routing=None,
    backend: str = "auto",
    return_lse: bool = False,
):
    """Sparse attention of q [B, H, Nq, D] over k, v [B, H_kv, Nkv, D] restricted to ``pattern``.

    ``canvas`` is the token grid of q (default: 1-D of Nq tokens); ``kv_canvas`` that of k/v (default: the
    same canvas when Nkv == Nq, else 1-D). Compiled objects are memoised per configuration; use
    ``maskir.compile`` to hold one explicitly. Fully masked rows give 0 (lse -inf). ``backend``: as in
    ``maskir.compile`` ("auto", "triton", "tvm" on CPU, "flex", "reference"). A ``score_mod`` is traced on every
    call (well under a millisecond) so that what it reads now is used (a rebound name, a tensor it
    builds); hold a ``maskir.compile`` object to skip that. Under ``torch.compile(fullgraph=True)`` the
    kernels are planned and built while tracing (no eager call needed first; spec text and patterns
    built inside the compiled function work) and the graph calls them through the ``maskir::`` ops; a
    score_mod there may read module-level tensors and numbers, not close over a tensor made inside the
    compiled function (hold a ``maskir.compile`` object for that).
    """
    shapes = check_qkv(q, k, v, enable_gqa=enable_gqa)
    canvas = resolve_canvas(canvas, shapes.n_q, "canvas")
    if kv_canvas is None and shapes.n_kv == shapes.n_q:
        kv_canvas = canvas
    kv_canvas = resolve_canvas(kv_canvas, shapes.n_kv, "kv_canvas")
    config = (canvas.shape, kv_canvas.shape, shapes.heads, shapes.kv_heads, shapes.head_dim, shapes.dtype)
    if torch.compiler.is_compiling():  # build while tracing; the graph calls the kernels by handle
        form = pattern if isinstance(pattern, str) else node_tree(_pattern(pattern))
        compiled, captures = _TRACED[_build_while_tracing(form, *config, shapes.device, score_mod, backend)]
    else:
        compiled, captures = _memoised(_pattern(pattern), *config, shapes.device, score_mod, backend)
    return compiled._run(
        q, k, v, scale=scale, segments=segments, routing=routing, return_lse=return_lse, captures=captures
    )


def _memoised(
    pattern: Pattern,
    canvas: tuple[int, ...],
    kv_canvas: tuple[int, ...],
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    score_mod: Callable | None,
    backend: str,
) -> tuple[CompiledAttention, dict[str, torch.Tensor] | None]:
    """The compiled attention of this configuration (built on first use, kept in an LRU memo) and the
    tensors its score_mod reads now.

    Generated kernels depend on what the score_mod computes, not on the function object: a lambda made
    anew on every call (in a module's forward) finds the kernels its first one built. The reference
    backend calls the score_mod itself, so there the function is the key."""
    if backend == AUTO:  # the memo keys on the backend that runs ("auto" may change with the environment)
        spec = device_spec(device, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, score_mod=score_mod is not None)
        backend = resolve(backend, spec).name
    structure, captures = _traced_score_mod(score_mod, backend)
    function = score_mod if calls_score_mod(get_backend(backend)) else None
    key = (pattern, canvas, kv_canvas, heads, kv_heads, head_dim, dtype, device.type, function, backend, structure)
    with _MEMO_LOCK:
        compiled = _COMPILED.get(key)
        building = _BUILDING.setdefault(key, threading.Lock()) if compiled is None else None
    if building is not None:
        with building:  # threads asking for one configuration at once: the first builds, the others wait
            with _MEMO_LOCK:
                compiled = _COMPILED.get(key)
            try:
                if compiled is None:
                    compiled = compile(
                        pattern,
                        canvas,
                        heads=heads,
                        head_dim=head_dim,
                        dtype=dtype,
                        device=device,
                        kv_canvas=kv_canvas,
                        kv_heads=kv_heads,
                        score_mod=score_mod,
                        backend=backend,
                    )
                with _MEMO_LOCK:
                    _COMPILED[key] = compiled
            finally:
                with _MEMO_LOCK:
                    _BUILDING.pop(key, None)
    with _MEMO_LOCK:
        _COMPILED[key] = compiled
        _COMPILED.move_to_end(key)
        while len(_COMPILED) > MEMO_SIZE:
            _COMPILED.popitem(last=False)
    return compiled, captures


def _build_while_tracing(form: str | tuple, *config) -> str:
    """Run by torch.compile while it traces ``maskir.attention`` (it does not trace this body): plan and
    build the kernels (or find them built) and return their op handle, a constant of the graph.

    ``form`` is spec text or ``node_tree(pattern)``: torch.compile cannot hand over a pattern object that
    was built inside the compiled region. ``config`` as ``_memoised`` takes it after the pattern."""
    pattern = _pattern(form) if isinstance(form, str) else node_from_tree(form)
    compiled, captures = _memoised(pattern, *config)
    _TRACED[compiled.handle] = compiled, captures
    return compiled.handle


_build_while_tracing._dynamo_marked_constant = True
"""What ``torch.compiler.assume_constant_result`` sets (tests/test_runtime.py checks that it still is),
set here because that function imports torch._dynamo, which imports triton: a CPU process must set
TRITON_INTERPRET before triton is imported."""
