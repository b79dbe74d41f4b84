"""The performance suite: maskir next to compiled flex_attention and SDPA, one process, the same tensors.

Run from the repository root:
    python -m benchmarks.suite                    # CUDA machine: measure every catalogue entry
    python -m benchmarks.suite --only causal swin_128x128_w8 --fwd-only
    python -m benchmarks.suite --dry-run          # no GPU: configurations, plan stats, simulator predictions

Per entry of ``benchmarks/catalogue.py`` (B=1, H=16, D=128, bf16 at the full size):
- maskir: ``maskir.compile(..., backend="triton")`` called with the entry's run-time data; for a
  data-dependent entry the per-call planning (its run-time tile gates) is also timed alone (``per_call_ms``);
- flex: ``torch.compile(flex_attention)`` with a block mask from ``torch.compile(create_block_mask)`` over
  ``maskir.codegen.flex.to_mask_mod`` (the same pattern, lowered by the same code); building the block
  mask is timed separately (``create_block_mask_ms``);
- SDPA: the flash backend for ``Full()`` and ``Causal()``; otherwise SDPA with an explicit boolean mask
  where the mask fits in a quarter of the free GPU memory, else skipped with the reason.

Conventions (those of ``shared/anchors/h100_flex_sdpa.jsonl``): times are medians of CUDA-event timings
after warm-up; useful TFLOP/s = 4 * D * allowed pairs * H * B / time for the forward, and
``FWDBWD_WORK`` = 3.5 times that work (forward 1 + backward 2.5) for forward + backward, which is what
the anchors' forward + backward rows give. The ratio column is flex time / maskir time (> 1: maskir is
faster). Each measurement is appended as one JSON object to ``benchmarks/results/<device>_suite.jsonl``
and the run's table is written to ``benchmarks/results/<device>_suite.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import maskir
from benchmarks.catalogue import BATCH, DTYPE, HEAD_DIM, HEADS, NAMES, SIZES, Case, cases
from maskir.codegen.common.gating import gated_plan
from maskir.ir import Causal, Full, Routing
from maskir.planner import Plan
from maskir.sim.target import hardware_for_device_name

RESULTS = Path(__file__).resolve().parent / "results"
FWDBWD_WORK = 3.5
"""Forward + backward work in units of the forward's 4 * D * pairs (backward 2.5x), as in the anchors."""
SDPA_MEMORY_SHARE = 0.25
"""SDPA's explicit mask (bool, plus the additive bias SDPA builds from it) may take this share of free memory."""


# -- conventions -------------------------------------------------------------------------------------


def useful_tflops(allowed_pairs: int, head_dim: int, ms: float, backward: bool = False) -> float:
    """4 * D * allowed pairs (summed over batch and heads) per second, in TFLOP/s; x3.5 with the backward."""
    work = 4.0 * head_dim * allowed_pairs * (FWDBWD_WORK if backward else 1.0)
    return work / (ms * 1e-3) / 1e12


def device_slug(device_name: str) -> str:
    """A file-name part for a device: its hardware entry when known, else its name in lower-case words."""
    known = hardware_for_device_name(device_name)
    return known or "_".join(device_name.lower().replace("nvidia", "").split())


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


# -- plan statistics and predictions (no GPU) --------------------------------------------------------


@dataclass
class Prediction:
    """maskir's plan of one case and the simulator's forward / forward+backward times for maskir and flex."""

    plan: Plan
    plan_ms: float
    efficiency: float | None
    flex_efficiency: float | None
    maskir_fwd_ms: float
    maskir_fwdbwd_ms: float
    flex_fwd_ms: float
    flex_fwdbwd_ms: float

    def summary(self) -> str:
        counts = self.plan.tile_counts
        layouts = " + ".join(part.layout.name for part in self.plan.parts)
        eff = "data-dependent" if self.efficiency is None else f"{self.efficiency:.3f}"
        flex_eff = "data-dependent" if self.flex_efficiency is None else f"{self.flex_efficiency:.3f}"
        return (
            f"  plan: {self.plan.block_q}x{self.plan.block_kv} tiles, layout {layouts}, {counts.full_tiles:,} full + "
            f"{counts.partial_tiles:,} partial tiles, efficiency {eff} (flex 128x128 identity: {flex_eff}), "
            f"planned in {self.plan_ms:.1f} ms\n"
            f"  simulated{' (the tiles this data leaves open)' if self.efficiency is None else ''}: maskir fwd {self.maskir_fwd_ms:.3f} ms, fwd+bwd {self.maskir_fwdbwd_ms:.3f} ms; "
            f"flex fwd {self.flex_fwd_ms:.3f} ms, fwd+bwd {self.flex_fwdbwd_ms:.3f} ms; predicted ratio "
            f"{self.flex_fwd_ms / self.maskir_fwd_ms:.2f}x fwd, {self.flex_fwdbwd_ms / self.maskir_fwdbwd_ms:.2f}x fwd+bwd"
        )


def run_time_data(case: Case, seed: int = 0) -> dict[str, torch.Tensor]:
    """The case's run-time tensors for the simulator: its document ids, or a random top-k routing choice
    (the measured runs route from pooled q.k; the simulator only needs how many blocks each q block gets)."""
    from maskir.runtime.routing import routing_map, routing_node

    data: dict[str, torch.Tensor] = {}
    segments = case.segment_ids(1)
    if segments is not None:
        data["segments_q"] = data["segments_kv"] = segments
    node = routing_node(case.pattern)
    if node is not None:
        blocks = -(-case.tokens // node.block)
        scores = torch.rand(1, HEADS, blocks, blocks, generator=torch.Generator().manual_seed(seed))
        q = torch.empty(1, HEADS, case.tokens, 1)
        data["routing_map"] = routing_map(q, q, node, scores.argsort(-1)[..., : node.topk])
    return data


def predict(case: Case, hardware: str) -> Prediction:
    """Plan ``case`` and simulate maskir's and flex's kernels on ``hardware``, forward and backward."""
    from maskir.sim import kernel_plan

    plan = maskir.plan(case.pattern, case.canvas, heads=HEADS)
    shape = {"hardware": hardware, "batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "backward": True}
    flex_plan = kernel_plan("flex", case.pattern, case.canvas, heads=HEADS)
    data = run_time_data(case)
    if data:  # price the tiles this data leaves (maskir's gates; flex's block mask is built from the data)
        plan, flex_plan = gated_plan(plan, data), gated_plan(flex_plan, data)
    ours = maskir.simulate(case.pattern, case.canvas, kernel="maskir", plan=plan, **shape)
    flex = maskir.simulate(case.pattern, case.canvas, kernel="flex", plan=flex_plan, **shape)
    return Prediction(
        plan=plan,
        plan_ms=plan.plan_seconds * 1e3,
        efficiency=ours.tile_efficiency,
        flex_efficiency=flex.tile_efficiency,
        maskir_fwd_ms=ours.fwd_ms,
        maskir_fwdbwd_ms=ours.fwd_ms + ours.bwd_ms,
        flex_fwd_ms=flex.fwd_ms,
        flex_fwdbwd_ms=flex.fwd_ms + flex.bwd_ms,
    )


def dry_run(selected: list[Case], hardware: str) -> None:
    """Print each configuration, its plan statistics and the simulator's predictions."""
    print(f"dry run on {hardware} (simulated), B={BATCH} H={HEADS} D={HEAD_DIM} {DTYPE}")
    for case in selected:
        print(f"{case}: {case.pattern} on {case.canvas}, N={case.tokens}" + _data_note(case), flush=True)
        print(predict(case, hardware).summary(), flush=True)


def _data_note(case: Case) -> str:
    if case.documents:
        return f", {case.documents} equal documents"
    if any(isinstance(node, Routing) for node in case.pattern.walk()):
        return ", top-k blocks chosen at run time from pooled q.k"
    return ""


# -- inputs and timing (CUDA) ------------------------------------------------------------------------


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


# -- reports -----------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], title: str) -> str:
    """The run as a table: per case and direction, each implementation's time and the ratio flex / maskir."""
    lines = [
        f"# {title}",
        "",
        "Times are medians of CUDA-event timings (ms). Useful TFLOP/s = 4·D·allowed pairs·H·B / time "
        f"(×{FWDBWD_WORK} for fwd+bwd). ratio = flex time / maskir time (> 1: maskir faster). "
        "sim = the simulator's prediction for maskir. per-call plan = maskir's run-time tile gates of a "
        "data-dependent pattern (—: a static plan, nothing per call) / flex's create_block_mask.",
        "",
        "| pattern | N | density | pass | maskir ms | flex ms | ratio | SDPA ms | maskir TFLOP/s | flex TFLOP/s "
        "| sim ms | efficiency | max err of out vs flex | per-call plan ms, maskir / flex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["pattern"], []).append(row)
    notes = []
    for name, group in by_case.items():
        for key, label in (("fwd_ms", "fwd"), ("fwdbwd_ms", "fwd+bwd")):
            found = {row["impl"]: row for row in group if key in row}
            if not found:
                continue
            ours, flex = found.get("maskir", {}), found.get("flex", {})
            sdpa = found.get("sdpa_flash") or found.get("sdpa_mask") or {}
            ratio = flex[key] / ours[key] if ours and flex else None
            first = group[0]
            lines.append(
                f"| {name} | {first['N']} | {_fmt(first['density'], 4)} | {label} | {_fmt(ours.get(key))} "
                f"| {_fmt(flex.get(key))} | {_fmt(ratio, 2)} | {_fmt(sdpa.get(key))} "
                f"| {_fmt(ours.get('useful_tflops'), 0)} | {_fmt(flex.get('useful_tflops'), 0)} "
                f"| {_fmt(ours.get('sim_ms'))} | {_fmt(ours.get('efficiency'))} "
                f"| {_fmt(ours.get('max_abs_err_out_vs_flex'), 4)} | {_fmt(ours.get('per_call_ms'), 2)} / {_fmt(flex.get('create_block_mask_ms'), 1)} |"
            )
        notes += [f"- {name}, {row['impl']}: skipped ({row['skipped']})" for row in group if "skipped" in row]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_results(
    rows: list[dict], directory: Path, slug: str, title: str, *, table_rows: list[dict] | None = None
) -> tuple[Path, Path]:
    """Append measurements to ``directory/<slug>_suite.jsonl`` and write ``<slug>_suite.md`` from
    ``table_rows`` (default ``rows``): the run so far, so a run cut off after any case keeps its results."""
    directory.mkdir(parents=True, exist_ok=True)
    jsonl, md = directory / f"{slug}_suite.jsonl", directory / f"{slug}_suite.md"
    with jsonl.open("a", encoding="utf-8") as out:
        for row in rows:
            if "skipped" not in row:
                out.write(json.dumps(row) + "\n")
    md.write_text(markdown(rows if table_rows is None else table_rows, title), encoding="utf-8")
    return jsonl, md


# -- command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"entries to run: {', '.join(NAMES)}")
    parser.add_argument("--size", choices=SIZES, default="full", help="catalogue size (default: full, N=16384)")
    parser.add_argument("--fwd-only", action="store_true", help="time the forward only")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: print plans and simulator predictions")
    parser.add_argument("--hardware", help="simulator hardware (default: detected on CUDA, h100 in a dry run)")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where the .jsonl and .md go (default {RESULTS})"
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    parser.add_argument("--iters", type=int, default=30, help="timed calls per measurement (default 30)")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="start no new entry after this many seconds (results are written after every entry)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = cases(args.size, args.only)
    if args.dry_run:
        dry_run(selected, args.hardware or "h100")
        return 0
    if not torch.cuda.is_available():
        print("benchmarks.suite needs a CUDA GPU; use --dry-run for plans and predictions.", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name()
    hardware = args.hardware or hardware_for_device_name(device_name)
    env = environment(device_name)
    title = f"maskir suite on {device_name} (torch {env['torch']}, triton {env['triton']}, commit {env['commit'][:12]})"
    started = time.perf_counter()
    rows: list[dict] = []
    for index, case in enumerate(selected):
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            left = " ".join(c.name for c in selected[index:])
            print(f"budget of {args.budget_s:.0f} s spent; not run: {left}", flush=True)
            break
        print(f"{case}: {case.pattern} on {case.canvas}", flush=True)
        case_rows = measure_case(case, args, env, hardware)
        for row in case_rows:
            timing = {key: round(row[key], 3) for key in ("fwd_ms", "fwdbwd_ms") if key in row}
            print(f"  {row['impl']:<10} {timing or row.get('skipped')}", flush=True)
        rows += case_rows
        jsonl, md = write_results(case_rows, args.results, device_slug(device_name), title, table_rows=rows)
        print(f"  appended to {jsonl}; table {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
