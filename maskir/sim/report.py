"""SimReport: the simulator's prediction for one pattern, kernel and GPU, printable as it stands."""

from __future__ import annotations

from dataclasses import dataclass

from maskir.sim.cost import Launch


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / denominator if denominator > 0 else float("inf")


@dataclass(frozen=True)
class PairCounts:
    """(q, kv) token pairs summed over heads: the dense problem's, those inside the kernel's listed tiles
    (padding excluded), and the allowed ones (None for a data-dependent pattern: known at run time only)."""

    dense: int
    computed: int
    allowed: int | None

    @property
    def tile_bound(self) -> float:
        """dense / computed: the speedup over dense if every computed pair cost the same."""
        return self.dense / self.computed if self.computed else float("inf")

    @property
    def pair_bound(self) -> float | None:
        """dense / allowed = 1 / density: the speed of light."""
        if self.allowed is None:
            return None
        return self.dense / self.allowed if self.allowed else float("inf")

    @property
    def density(self) -> float | None:
        return None if self.allowed is None else self.allowed / self.dense


@dataclass(frozen=True)
class SimReport:
    """Predicted times (ms), work (TFLOP) and speedup bounds of one simulated attention call.

    ``tile_bound`` and ``pair_bound`` (see ``PairCounts``): 1 <= tile_bound <= pair_bound. ``dense_fwd_ms``
    is the same kernel on ``Full()`` with 128 x 128 tiles; ``flex_*`` is FlexAttention's plan (identity
    layout, 128 x 128 tiles) under flex's constants. ``__str__`` is the text ``maskir simulate`` prints.
    """

    pattern: str
    canvas: str
    hardware: str
    kernel: str
    batch: int
    heads: int
    head_dim: int
    dtype: str
    layouts: tuple[str, ...]
    block_q: int
    block_kv: int
    fwd_ms: float
    bwd_ms: float | None
    dense_fwd_ms: float
    flex_fwd_ms: float
    flex_bwd_ms: float | None
    computed_tflop: float
    pairs: PairCounts
    launches: tuple[Launch, ...]

    @property
    def tile_bound(self) -> float:
        return self.pairs.tile_bound

    @property
    def pair_bound(self) -> float | None:
        return self.pairs.pair_bound

    @property
    def density(self) -> float | None:
        return self.pairs.density

    @property
    def useful_tflop(self) -> float | None:
        """Forward FLOPs on allowed pairs: 4 * D * allowed pairs * batch (None if data-dependent)."""
        return None if self.pairs.allowed is None else 4.0 * self.head_dim * self.pairs.allowed * self.batch / 1e12

    @property
    def predicted_speedup_vs_dense(self) -> float:
        return _ratio(self.dense_fwd_ms, self.fwd_ms)

    @property
    def predicted_speedup_vs_flex(self) -> float:
        """Forward time of flex over this kernel's."""
        return _ratio(self.flex_fwd_ms, self.fwd_ms)

    @property
    def predicted_speedup_vs_flex_fwdbwd(self) -> float | None:
        """Forward + backward time of flex over this kernel's (None without ``backward=True``)."""
        if self.bwd_ms is None or self.flex_bwd_ms is None:
            return None
        return _ratio(self.flex_fwd_ms + self.flex_bwd_ms, self.fwd_ms + self.bwd_ms)

    @property
    def tile_efficiency(self) -> float | None:
        """Allowed pairs / computed pairs = tile_bound / pair_bound."""
        if self.pairs.allowed is None:
            return None
        return self.pairs.allowed / self.pairs.computed if self.pairs.computed else 1.0

    @property
    def useful_tflops(self) -> float | None:
        """Useful forward TFLOP/s: 4 * D * allowed pairs over the predicted forward time."""
        return None if self.useful_tflop is None else self.useful_tflop / (self.fwd_ms * 1e-3)

    @property
    def makespan_ms(self) -> float:
        """Busiest SM's time in the first forward launch."""
        return self.launches[0].schedule.makespan * 1e3

    @property
    def waves(self) -> int:
        """ceil(programs / SMs) of the first forward launch."""
        return self.launches[0].schedule.waves

    def __str__(self) -> str:
        speed = f"{self.predicted_speedup_vs_flex:.2f}x vs flex {self.flex_fwd_ms:.3f} ms"
        lines = [
            f"{self.kernel} on {self.hardware}: {self.pattern} on {self.canvas}, B={self.batch} H={self.heads} "
            f"D={self.head_dim} {self.dtype}",
            f"  plan: {self.block_q}x{self.block_kv} tiles, layout {' + '.join(self.layouts)}",
            f"  forward   {self.fwd_ms:9.3f} ms  ({speed}; "
            f"{self.predicted_speedup_vs_dense:.2f}x vs dense {self.dense_fwd_ms:.3f} ms)",
        ]
        if self.bwd_ms is not None:
            lines.append(
                f"  backward  {self.bwd_ms:9.3f} ms  (fwd+bwd {self.predicted_speedup_vs_flex_fwdbwd:.2f}x vs flex "
                f"{self.flex_fwd_ms + self.flex_bwd_ms:.3f} ms)"
            )
        if self.pairs.allowed is None:
            useful, pair = "useful n/a (allowed pairs depend on run-time data)", "n/a"
        else:
            useful = (
                f"useful {self.useful_tflop:.3f} TFLOP ({self.useful_tflops:.0f} useful TFLOP/s), density "
                f"{self.density:.4f}, tile efficiency {self.tile_efficiency:.3f}"
            )
            pair = f"{self.pair_bound:.2f}x"
        lines += [
            f"  work: computed {self.computed_tflop:.3f} TFLOP, {useful}",
            f"  bounds over dense: tile {self.tile_bound:.2f}x, pair {pair} (speed of light)",
            "  launches:",
        ]
        for launch in self.launches:
            line = f"    {launch.name:<20} {launch.ms:9.3f} ms  "
            if launch.schedule is None:
                line += "memory-bound,"
            else:
                s = launch.schedule
                line += (
                    f"{s.programs} programs, {s.waves} waves, makespan {s.makespan * 1e3:.3f} ms, "
                    f"SM utilization {s.utilization:.2f}, heaviest-first {launch.lpt_makespan_ms:.3f} ms,"
                )
            lines.append(line + f" HBM floor {launch.hbm_floor_ms:.3f} ms")
        return "\n".join(lines)
