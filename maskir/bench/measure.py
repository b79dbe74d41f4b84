"""maskir, compiled flex_attention and SDPA on one case, on the same tensors, timed with CUDA events.

Conventions (those of ``shared/anchors/h100_flex_sdpa.jsonl``): times are medians of CUDA-event timings
after warm-up; useful TFLOP/s = 4 * D * allowed pairs * H * B / time for the forward, and ``FWDBWD_WORK``
= 3.5 times that work (forward 1 + backward 2.5) for forward + backward.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import maskir
from maskir.bench.case import BATCH, DTYPE, HEAD_DIM, HEADS, Case
from maskir.bench.predict import Prediction, predict
from maskir.ir import Causal, Full

FWDBWD_WORK = 3.5
"""Forward + backward work in units of the forward's 4 * D * pairs (backward 2.5x), as in the anchors."""
SDPA_MEMORY_SHARE = 0.25
"""SDPA's explicit mask (bool, plus the additive bias SDPA builds from it) may take this share of free memory."""


def useful_tflops(allowed_pairs: int, head_dim: int, ms: float, backward: bool = False) -> float:
    """4 * D * allowed pairs (summed over batch and heads) per second, in TFLOP/s; x3.5 with the backward."""
    work = 4.0 * head_dim * allowed_pairs * (FWDBWD_WORK if backward else 1.0)
    return work / (ms * 1e-3) / 1e12


def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def environment(device_name: str) -> dict:
    """Fields every result row carries: device, versions, commit."""
    import triton

    return {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
    }


@dataclass
class Inputs:
    """The tensors every implementation gets, and the case's run-time data in maskir's and flex's forms."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    segments: torch.Tensor | None
    routing: torch.Tensor | None
    flex_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> Inputs:
    """Random q, k, v, dO [B, H, N, D] (q, k, v require grad) and the case's segment ids / routing choice."""
    from maskir.runtime.routing import routing_map, routing_node

    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (BATCH, HEADS, case.tokens, HEAD_DIM)
    q, k, v, dout = (torch.randn(shape, generator=generator, device=device, dtype=DTYPE) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    segments = case.segment_ids(BATCH, device)
    routing = case.routing_indices(q, k)
    tensors = {}
    if segments is not None:
        tensors["segments_q"] = tensors["segments_kv"] = segments
    if routing is not None:
        tensors["routing_map"] = routing_map(q, k, routing_node(case.pattern), routing)
    return Inputs(q, k, v, dout, segments, routing, tensors)


def cuda_median_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median of ``iters`` CUDA-event timings of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward_backward(attend: Callable, inputs: Inputs) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A call that runs ``attend`` forward and returns its output and the gradients of q, k, v against dO."""

    def step():
        out = attend()
        return (out, *torch.autograd.grad(out, (inputs.q, inputs.k, inputs.v), inputs.dout))

    return step


def _without_grad(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under ``torch.no_grad()``: forward timings build no autograd graph."""

    def call():
        with torch.no_grad():
            return fn()

    return call


def mask_depends_on(case: Case) -> tuple[bool, bool]:
    """(batch, head): whether the lowered predicate reads b / h, i.e. the allowed set may differ between them."""
    from maskir.codegen.common.expr import topo
    from maskir.codegen.common.lower import lower_predicate

    expr = lower_predicate(case.pattern, case.canvas, case.canvas)
    used = {node.value for node in topo(expr) if node.op == "var"}
    return "b" in used, "h" in used


# -- the three implementations ------------------------------------------------------------------------


@dataclass
class Impl:
    """One implementation of a case, ready to time: its forward call and extra fields for its rows."""

    name: str
    forward: Callable[[], torch.Tensor]
    extra: dict = field(default_factory=dict)


def compile_maskir(case: Case, device: torch.device) -> maskir.CompiledAttention:
    """``maskir.compile`` of ``case`` on the Triton backend at the suite's shape (HEADS, HEAD_DIM, DTYPE)."""
    return maskir.compile(
        case.pattern,
        case.canvas,
        heads=HEADS,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
        device=device,
        backend="triton",
        quiet=True,
    )


def build_maskir(case: Case, inputs: Inputs, iters: int) -> Impl:
    """maskir.compile on the Triton backend; the first call (kernel compilation) is part of ``build_ms``.
    A data-dependent case also records ``per_call_ms``: the median of ``iters`` runs of the per-call
    planning a call does before its launches (``CompiledAttention.tile_gates``, both directions), the
    counterpart of flex's ``create_block_mask_ms``."""
    started = time.perf_counter()
    compiled = compile_maskir(case, inputs.q.device)
    data = {"segments": inputs.segments, "routing": inputs.routing}

    def forward():
        return compiled(inputs.q, inputs.k, inputs.v, **data)

    forward()
    if inputs.q.is_cuda:
        torch.cuda.synchronize()
    layouts = "+".join(part.layout.name for part in compiled.plan.parts)
    extra = {
        "plan_ms": compiled.plan.plan_seconds * 1e3,
        "build_ms": (time.perf_counter() - started) * 1e3,
        "blocks": [int(compiled.plan.block_q), int(compiled.plan.block_kv)],
        "layout": layouts,
    }
    if compiled.dynamic:
        refine = functools.partial(compiled.tile_gates, inputs.q, inputs.k, backward=True, **data)
        extra["per_call_ms"] = cuda_median_ms(refine, 1, iters)
    return Impl("maskir", forward, extra)


def build_flex(case: Case, inputs: Inputs, iters: int) -> Impl:
    """Compiled flex_attention over a block mask from compiled create_block_mask (batch / head dims only
    where the pattern reads b / h); the block mask's build time is its median over ``iters`` calls."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from maskir.codegen.flex import to_mask_mod

    mask_mod = to_mask_mod(case.pattern, case.canvas, tensors=inputs.flex_tensors)
    by_batch, by_head = mask_depends_on(case)
    shape = (BATCH if by_batch else None, HEADS if by_head else None, case.tokens, case.tokens)
    make_block_mask = torch.compile(create_block_mask)
    block_mask = make_block_mask(mask_mod, *shape, device=inputs.q.device)
    block_mask_ms = cuda_median_ms(lambda: make_block_mask(mask_mod, *shape, device=inputs.q.device), 1, iters)
    attend = torch.compile(flex_attention)

    def forward():
        return attend(inputs.q, inputs.k, inputs.v, block_mask=block_mask)

    extra = {"block_density": 1.0 - block_mask.sparsity() / 100.0, "create_block_mask_ms": block_mask_ms}
    return Impl("flex", forward, extra)


def mask_chunks(case: Case, inputs: Inputs, heads: int, rows: int = 1024):
    """Yield (first row, allowed [B, heads, rows, N] bool on the GPU) over the query rows, ``rows`` at a time."""
    from maskir.codegen.flex import to_mask_mod

    mask_mod = to_mask_mod(case.pattern, case.canvas, tensors=inputs.flex_tensors)
    device, n = inputs.q.device, case.tokens
    b = torch.arange(BATCH, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    kv = torch.arange(n, device=device).view(1, 1, 1, -1)
    for start in range(0, n, rows):
        q = torch.arange(start, min(start + rows, n), device=device).view(1, 1, -1, 1)
        yield start, torch.broadcast_to(mask_mod(b, h, q, kv), (BATCH, heads, q.shape[2], n))


def count_allowed(case: Case, inputs: Inputs) -> int:
    """Allowed (q, kv) pairs summed over batch and heads, counted on the GPU with the inputs' data."""
    heads = HEADS if mask_depends_on(case)[1] else 1
    return sum(int(chunk.sum()) for _, chunk in mask_chunks(case, inputs, heads)) * (HEADS // heads)


def build_sdpa(case: Case, inputs: Inputs) -> Impl | str:
    """SDPA on the flash backend (Full, Causal) or with an explicit mask; a reason string when it cannot run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v = inputs.q, inputs.k, inputs.v
    if case.pattern in (Full(), Causal()):
        causal = case.pattern == Causal()

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa(q, k, v, is_causal=causal)

        return Impl("sdpa_flash", flash)
    _, by_head = mask_depends_on(case)
    heads = HEADS if by_head else 1
    need = BATCH * heads * case.tokens**2 * (1 + torch.finfo(DTYPE).bits // 8)
    free, _ = torch.cuda.mem_get_info()
    if need > SDPA_MEMORY_SHARE * free:
        return f"mask of {need / 2**30:.1f} GiB exceeds {SDPA_MEMORY_SHARE:.0%} of free memory {free / 2**30:.1f} GiB"
    mask = torch.empty(BATCH, heads, case.tokens, case.tokens, dtype=torch.bool, device=q.device)
    for start, chunk in mask_chunks(case, inputs, heads):
        mask[:, :, start : start + chunk.shape[2]] = chunk

    def masked():
        return sdpa(q, k, v, attn_mask=mask)

    return Impl("sdpa_mask", masked)


# -- one case, many rows -----------------------------------------------------------------------------


def measure_case(case: Case, args: argparse.Namespace, env: dict, hardware: str | None) -> list[dict]:
    """Time maskir, flex and SDPA on ``case``; one row per (implementation, direction)."""
    torch._dynamo.reset()  # every case compiles flex afresh: no recompile limit across the suite
    inputs = make_inputs(case, torch.device("cuda"))
    allowed = count_allowed(case, inputs)
    dense = BATCH * HEADS * case.tokens**2
    base = {"pattern": case.name, "N": case.tokens, "spec": str(case.pattern), "canvas": list(case.canvas.shape)}
    base |= {
        "B": BATCH,
        "H": HEADS,
        "D": HEAD_DIM,
        "dtype": str(DTYPE).removeprefix("torch."),
        "density": allowed / dense,
    }
    prediction = predict(case, hardware) if hardware else None
    outputs, rows = {}, []
    for name, build in (
        ("maskir", lambda: build_maskir(case, inputs, args.iters)),
        ("flex", lambda: build_flex(case, inputs, args.iters)),
        ("sdpa", lambda: build_sdpa(case, inputs)),
    ):
        try:
            impl = build()
            if isinstance(impl, str):
                rows.append({**base, "impl": name, "skipped": impl})
                continue
            outputs[impl.name] = results_of(impl, inputs, args.fwd_only)
            timings = time_impl(impl, inputs, args)
        except Exception as err:  # noqa: BLE001 (one implementation failing must not stop the suite)
            rows.append({**base, "impl": name, "skipped": f"{type(err).__name__}: {err}"})
            continue
        for key, ms in timings.items():
            row = {
                **base,
                "impl": impl.name,
                key: ms,
                "useful_tflops": useful_tflops(allowed, HEAD_DIM, ms, key != "fwd_ms"),
            }
            row |= _predicted(prediction, impl.name, key)
            rows.append(row | (impl.extra if key == "fwd_ms" else {}) | env)
    if "maskir" in outputs and "flex" in outputs:
        errors = {
            f"max_abs_err_{name}_vs_flex": float((ours - theirs).abs().max())
            for name, ours, theirs in zip(("out", "dq", "dk", "dv"), outputs["maskir"], outputs["flex"])
        }
        for row in rows:
            if row["impl"] == "maskir" and "skipped" not in row:
                row |= errors
    return rows


def results_of(impl: Impl, inputs: Inputs, fwd_only: bool) -> list[torch.Tensor]:
    """The output and, unless ``fwd_only``, dq, dk, dv against dO, in float32 (compared across impls)."""
    results = (_without_grad(impl.forward)(),) if fwd_only else forward_backward(impl.forward, inputs)()
    return [t.float() for t in results]


def time_impl(impl: Impl, inputs: Inputs, args: argparse.Namespace) -> dict[str, float]:
    """Median forward (no autograd graph) and, unless --fwd-only, forward + backward milliseconds."""
    timings = {"fwd_ms": cuda_median_ms(_without_grad(impl.forward), args.warmup, args.iters)}
    if not args.fwd_only:
        timings["fwdbwd_ms"] = cuda_median_ms(forward_backward(impl.forward, inputs), args.warmup, args.iters)
    return timings


def _predicted(prediction: Prediction | None, impl: str, key: str) -> dict:
    if prediction is None or impl not in ("maskir", "flex"):
        return {}
    direction = "fwd" if key == "fwd_ms" else "fwdbwd"
    fields = {"sim_ms": getattr(prediction, f"{impl}_{direction}_ms")}
    if impl == "maskir":
        fields["efficiency"] = prediction.efficiency
    return fields
