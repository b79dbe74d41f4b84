"""The public entry points: ``maskir.attention`` (drop-in, like SDPA/flex) and ``maskir.compile``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from maskir.canvas import Canvas
from maskir.ir import Pattern
from maskir.runtime.checks import check_qkv, resolve_canvas
from maskir.runtime.compiled import CompiledAttention

MEMO_SIZE = 64
"""How many configurations ``maskir.attention`` keeps compiled (least recently used ones go first)."""
_COMPILED: OrderedDict[tuple, CompiledAttention] = OrderedDict()
_LATEST: dict[tuple, CompiledAttention] = {}
"""Per configuration (without the score_mod's traced form) the last build: what torch.compile traces use."""


def _pattern(pattern: Pattern | str) -> Pattern:
    """A Pattern, parsing spec text (``maskir.parse``: a small grammar, never ``eval``)."""
    if not isinstance(pattern, str):
        return pattern
    if torch.compiler.is_compiling():
        raise RuntimeError(
            f"maskir.attention got spec text {pattern!r} inside torch.compile, which cannot trace the parser: "
            "parse it outside the compiled region (pattern = maskir.parse(text)) and pass the Pattern."
        )
    from maskir.spec import parse

    return parse(pattern)


def _traced_score_mod(score_mod: Callable | None, backend: str) -> tuple[tuple | None, dict[str, torch.Tensor]]:
    """(structure, captures) of what a score_mod computes now, for the generated kernels.

    structure: the traced text with the name, shape and kind of every tensor it reads, so a changed
    Python number or tensor shape compiles anew; captures: those tensors, passed on this call, so a
    rebound name (``bias = new_bias``) or a tensor built inside the function is read fresh without a new
    compile. The reference backend calls the score_mod itself and needs neither.
    """
    if score_mod is None or backend == "reference":
        return None, {}
    from maskir.codegen.common.score_mod import trace_score_mod

    traced = trace_score_mod(score_mod)
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
) -> CompiledAttention:
    """Plan ``pattern`` and build its kernels once; call the result in a training loop.

    ``kv_heads`` (default ``heads``) below ``heads`` is GQA/MQA. ``backend`` is "auto" (Triton: compiled
    on CUDA, interpreted on CPU), "triton", "tvm" (TensorIR built for llvm: CPU tensors only) or
    "reference" (float64 dense, for checking). ``device`` defaults to CUDA when there is one (CPU for
    backend "tvm"). ``pattern`` may be spec text (``maskir.parse``). Tensors a ``score_mod`` reads are
    captured now: in-place updates are seen by later calls, a rebound name needs a new compile.
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
    ``maskir.compile`` ("auto", "triton", "tvm" on CPU, "reference"). A ``score_mod`` is traced on every
    call (well under a millisecond) so that what it reads now is used (a rebound name, a tensor it
    builds); hold a ``maskir.compile`` object to skip that. Every configuration built since the process
    started stays available to torch.compile traces (``_LATEST``).
    """
    pattern = _pattern(pattern)
    shapes = check_qkv(q, k, v, enable_gqa=enable_gqa)
    canvas = resolve_canvas(canvas, shapes.n_q, "canvas")
    if kv_canvas is None and shapes.n_kv == shapes.n_q:
        kv_canvas = canvas
    kv_canvas = resolve_canvas(kv_canvas, shapes.n_kv, "kv_canvas")
    key = (
        pattern,
        canvas,
        kv_canvas,
        shapes.heads,
        shapes.kv_heads,
        shapes.head_dim,
        shapes.dtype,
        shapes.device.type,
        score_mod,
        backend,
    )
    captures = None
    if torch.compiler.is_compiling():  # the trace cannot re-trace a score_mod: use the last one built eagerly
        compiled = _LATEST.get(key)
        if compiled is None:
            raise RuntimeError(
                f"maskir.attention({pattern}) is being traced by torch.compile before its kernels were built. "
                "Build them outside the compiled region: call maskir.attention once eagerly with the same shapes, "
                "or hold compiled = maskir.compile(...) (e.g. in the module's __init__) and call compiled(q, k, v)."
            )
    else:
        structure, captures = _traced_score_mod(score_mod, backend)
        exact = (*key, structure)
        compiled = _COMPILED.get(exact)
        if compiled is None:
            compiled = compile(
                pattern,
                canvas,
                heads=shapes.heads,
                head_dim=shapes.head_dim,
                dtype=shapes.dtype,
                device=shapes.device,
                kv_canvas=kv_canvas,
                kv_heads=shapes.kv_heads,
                score_mod=score_mod,
                backend=backend,
            )
        _COMPILED[exact] = compiled
        _COMPILED.move_to_end(exact)
        while len(_COMPILED) > MEMO_SIZE:
            _COMPILED.popitem(last=False)
        _LATEST[key] = compiled
    return compiled._run(
        q, k, v, scale=scale, segments=segments, routing=routing, return_lse=return_lse, captures=captures
    )
