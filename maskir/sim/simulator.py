"""``simulate``: plan a pattern for a kernel, price the plan, and compare it with flex and dense."""

from __future__ import annotations

from maskir.canvas import Canvas
from maskir.ir import Pattern, is_dynamic
from maskir.planner import plan as make_plan
from maskir.planner.decode import UNSUPPORTED, decodable, prefers_decode
from maskir.sim.cost import dense_workload, simulate_plan, time_workload
from maskir.sim.decode import DecodeReport, simulate_decode
from maskir.sim.hardware import get_hardware, get_kernel
from maskir.sim.report import PairCounts, SimReport
from maskir.sim.target import KernelSpec

UNSUPPORTED_NAMES = tuple(node.__name__ for node in UNSUPPORTED)
FLEX_BLOCK = 128
"""FlexAttention's block mask granularity (``create_block_mask``'s default BLOCK_SIZE)."""


def kernel_plan(
    kernel: str,
    pattern: Pattern,
    canvas: Canvas,
    kv_canvas: Canvas | None = None,
    *,
    heads: int = 1,
    spec: KernelSpec | None = None,
):
    """The plan ``kernel`` runs: flex's is the identity layout with 128 x 128 tiles, maskir's the planner's
    (priced for ``spec``, None: the planner's default)."""
    if get_kernel(kernel).name == "flex":
        return make_plan(
            pattern, canvas, kv_canvas, heads=heads, block_q=FLEX_BLOCK, block_kv=FLEX_BLOCK, layout="identity"
        )
    return make_plan(pattern, canvas, kv_canvas, heads=heads, spec=spec)


def pair_counts(plan) -> PairCounts:
    """Dense, computed (``plan.tile_counts``: no evaluation) and allowed token pairs of a plan, over heads.

    Allowed pairs come from ``plan.stats``, which evaluates each PARTIAL tile once per head group; a
    data-dependent pattern has none (None).
    """
    dense = plan.heads * plan.canvas.size * plan.kv_canvas.size
    allowed = None if is_dynamic(plan.pattern) else plan.stats.allowed_pairs
    return PairCounts(dense, plan.tile_counts.computed_pairs, allowed)


def _canvas(value, name: str) -> Canvas:
    if isinstance(value, Canvas):
        return value
    try:
        return Canvas(value)
    except ValueError as err:
        raise ValueError(f"simulate argument {name}: {err}") from None


def simulate(
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...],
    *,
    hardware: str = "h100",
    kernel: str = "maskir",
    batch: int = 1,
    heads: int = 16,
    head_dim: int = 128,
    dtype: str = "bf16",
    backward: bool = False,
    plan=None,
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    kv_heads: int | None = None,
    q_offset: int = 0,
    decode: bool | None = None,
    spec: KernelSpec | None = None,
) -> SimReport | DecodeReport:
    """Predict ``pattern`` on ``canvas`` with ``kernel`` ("maskir" or "flex") on ``hardware``.

    ``plan`` replaces the planner's plan for the kernel (it must be of this pattern, canvases and heads).
    The report also prices flex's plan and the dense problem, for the predicted speedups.

    Decode shapes (``maskir.planner.decode.prefers_decode``: few queries against a long 1-D kv canvas) are
    priced as the runtime runs their forward, with the decode kernels (``maskir.sim.decode``), and return a
    ``DecodeReport``: ``kv_heads`` (GQA: query heads packed per kv head), ``q_offset`` (absolute position of
    the first query; 0 as in ``maskir.attention``, ``maskir.decode`` defaults to kv length - queries).
    ``decode``: force (True) or refuse (False) the decode kernels; None chooses by shape.
    ``spec``: the target maskir's plan is priced for (``maskir.sim.target.KernelSpec``; None: the
    planner's default, an H100 at head dim 128, bf16); ``maskir simulate --arch/--hw`` passes it.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"simulate needs a Pattern (maskir.parse turns text into one), got {type(pattern).__name__}.")
    canvas = _canvas(canvas, "canvas")
    kv_canvas = canvas if kv_canvas is None else _canvas(kv_canvas, "kv_canvas")
    hw, model = get_hardware(hardware), get_kernel(kernel)
    if decode is None:
        decode = (
            model.name == "maskir"
            and not backward
            and plan is None
            and prefers_decode(pattern, canvas, kv_canvas, batch=batch, heads=heads, sms=hw.sms)
        )
    if decode:
        if not decodable(pattern, canvas, kv_canvas) or backward:
            raise ValueError(
                f"decode=True needs 1-D canvases, a forward pass and a pattern without {', '.join(UNSUPPORTED_NAMES)}; "
                f"got {pattern} on {canvas} x {kv_canvas}, backward={backward}."
            )
        return simulate_decode(
            pattern,
            canvas.size,
            kv_canvas.size,
            q_offset=q_offset,
            hardware=hw,
            kernel=model,
            batch=batch,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=dtype,
        )
    if plan is None:
        plan = kernel_plan(model.name, pattern, canvas, kv_canvas, heads=heads, spec=spec)
    elif (plan.pattern, plan.canvas, plan.kv_canvas, plan.heads) != (pattern, canvas, kv_canvas, heads):
        raise ValueError(
            f"simulate argument plan is of {plan.pattern} on {plan.canvas} x {plan.kv_canvas}, {plan.heads} heads; "
            f"expected {pattern} on {canvas} x {kv_canvas}, {heads} heads."
        )
    shape = {"batch": batch, "head_dim": head_dim, "dtype": dtype}
    timing = simulate_plan(plan, hw, kernel=model, backward=backward, **shape)
    flex = (
        timing
        if model.name == "flex"
        else simulate_plan(
            kernel_plan("flex", pattern, canvas, kv_canvas, heads=heads), hw, kernel="flex", backward=backward, **shape
        )
    )
    dense = time_workload(
        dense_workload(canvas.size, kv_canvas.size, FLEX_BLOCK, FLEX_BLOCK, heads), hw, kernel=model, **shape
    )
    return SimReport(
        pattern=str(pattern),
        canvas=str(canvas) if kv_canvas == canvas else f"{canvas} x kv {kv_canvas}",
        hardware=hw.name,
        kernel=model.name,
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        dtype=dtype,
        layouts=tuple(part.layout.name for part in plan.parts),
        block_q=plan.block_q,
        block_kv=plan.block_kv,
        fwd_ms=timing.fwd_ms,
        bwd_ms=timing.bwd_ms,
        dense_fwd_ms=dense.fwd_ms,
        flex_fwd_ms=flex.fwd_ms,
        flex_bwd_ms=flex.bwd_ms,
        computed_tflop=timing.computed_flops / 1e12,
        pairs=pair_counts(plan),
        launches=timing.launches,
    )
