"""A case's plan and the simulator's forward / forward+backward times for maskir and flex (no GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import maskir
from maskir.bench.case import BATCH, DTYPE, HEAD_DIM, HEADS, Case
from maskir.ir import Routing
from maskir.planner import Plan
from maskir.runtime.gating import gated_plan


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
