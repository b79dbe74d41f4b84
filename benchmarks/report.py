"""Benchmark report: measured maskir vs flex vs SDPA, the simulator's predictions and the speedup bounds.

    python benchmarks/report.py                      # writes benchmarks/results/report.md and report.png
    python benchmarks/report.py --out /tmp/report    # writes /tmp/report.md and /tmp/report.png

Reads every measurement (``benchmarks/measurements.py``: the H100 anchors, then
``benchmarks/results/*.jsonl``), predicts each catalogue pattern at its full size on each measured device
with ``maskir.simulate`` (maskir's plan and flex's, forward and backward), and writes one markdown table
per device and direction and a PNG chart. Nothing is invented: a time nobody measured is "—", and the
"Missing" section lists what a GPU run still has to measure. When a pattern was measured more than once,
the last line read wins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)] if str(ROOT) not in sys.path else []

from benchmarks.catalogue import NAMES, case  # noqa: E402
from benchmarks.measurements import DEFAULTS, RESULTS, Measurement, default_paths, load  # noqa: E402
from maskir.ir import is_dynamic  # noqa: E402
from maskir.sim import SimReport, simulate  # noqa: E402

IMPLS = ("flex", "maskir", "sdpa")
"""Measured columns; any impl starting with "sdpa" (sdpa_flash, sdpa_cudnn, ...) fills the SDPA one."""
DIRECTIONS = {"fwd_ms": "forward", "fwdbwd_ms": "forward + backward"}
DASH = "—"


def _column(impl: str) -> str | None:
    return "sdpa" if impl.startswith("sdpa") else impl if impl in IMPLS else None


def latest(measurements: list[Measurement]) -> dict[tuple[str, str, str, str], Measurement]:
    """(GPU, pattern, column, metric) -> the last measurement read; sizes other than the catalogue's
    full size are left out (the predictions are made at that size)."""
    table = {}
    for m in measurements:
        column = _column(m.impl)
        if column and m.pattern in NAMES and case(m.pattern).tokens == m.tokens:
            table[m.gpu, m.pattern, column, m.metric] = m
    return table


def predict(hardware: str, heads: int, head_dim: int, batch: int, dtype: str) -> dict[str, SimReport]:
    """maskir.simulate of every catalogue pattern at full size, forward and backward."""
    shape = {"heads": heads, "head_dim": head_dim, "batch": batch, "dtype": dtype}
    return {
        name: simulate(case(name).pattern, case(name).canvas, hardware=hardware, backward=True, **shape)
        for name in NAMES
    }


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def _error(predicted: float, measured: Measurement | None) -> str:
    return DASH if measured is None else f"{predicted / measured.ms - 1:+.0%}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return DASH if numerator is None or denominator is None else f"{numerator / denominator:.2f}x"


def _predicted(report: SimReport, metric: str, kernel: str) -> float:
    fwd, bwd = (report.fwd_ms, report.bwd_ms) if kernel == "maskir" else (report.flex_fwd_ms, report.flex_bwd_ms)
    return fwd if metric == "fwd_ms" else fwd + bwd


def markdown_table(device: str, metric: str, measured: dict, reports: dict[str, SimReport]) -> str:
    """One device and direction: measured times, maskir / flex, predictions with their errors, bounds."""
    lines = [
        f"### {device}, {DIRECTIONS[metric]} (ms)",
        "",
        "| pattern | flex | maskir | SDPA | maskir speedup vs flex | sim flex (error) | sim maskir (error) | sim speedup "
        "| tile bound | pair bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, report in reports.items():
        got = {column: measured.get((device, name, column, metric)) for column in IMPLS}
        ms = {column: None if m is None else m.ms for column, m in got.items()}
        sim = {kernel: _predicted(report, metric, kernel) for kernel in ("flex", "maskir")}
        pair = DASH if report.pair_bound is None else f"{report.pair_bound:.1f}x"
        star = "*" if is_dynamic(case(name).pattern) else ""
        lines.append(
            f"| {name}{star} | {_ms(ms['flex'])} | {_ms(ms['maskir'])} | {_ms(ms['sdpa'])} "
            f"| {_ratio(ms['flex'], ms['maskir'])} | {sim['flex']:.3f} ({_error(sim['flex'], got['flex'])}) "
            f"| {sim['maskir']:.3f} ({_error(sim['maskir'], got['maskir'])}) | {_ratio(sim['flex'], sim['maskir'])} "
            f"| {report.tile_bound:.1f}x | {pair} |"
        )
    return "\n".join(lines)


def missing(device: str, measured: dict) -> list[str]:
    """What a GPU run still has to measure on ``device``, one line per implementation and direction."""
    notes = []
    for column in IMPLS:
        for metric in DIRECTIONS:
            absent = [name for name in NAMES if (device, name, column, metric) not in measured]
            if absent and column != "sdpa":
                notes.append(f"- {column} {DIRECTIONS[metric]}: {', '.join(absent)}")
    return notes


def chart(path: Path, device: str, measured: dict, reports: dict[str, SimReport]) -> None:
    """Bars per pattern: measured flex / maskir / SDPA, predicted flex / maskir (hatched); log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(reports)
    x = np.arange(len(names))
    series = [
        ("flex measured", "tab:blue", "", lambda n, m: _value(measured.get((device, n, "flex", m)))),
        ("maskir measured", "tab:orange", "", lambda n, m: _value(measured.get((device, n, "maskir", m)))),
        ("SDPA measured", "tab:gray", "", lambda n, m: _value(measured.get((device, n, "sdpa", m)))),
        ("flex predicted", "tab:blue", "//", lambda n, m: _predicted(reports[n], m, "flex")),
        ("maskir predicted", "tab:orange", "//", lambda n, m: _predicted(reports[n], m, "maskir")),
    ]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, len(names)), 8), sharex=True)
    width = 0.8 / len(series)
    for ax, metric in zip(axes, DIRECTIONS):
        for i, (label, color, hatch, value) in enumerate(series):
            heights = [value(name, metric) or 0.0 for name in names]
            ax.bar(
                x + (i - 2) * width, heights, width, label=label, color=color, hatch=hatch, alpha=0.5 if hatch else 1
            )
        ax.set_yscale("log")
        ax.set_ylabel(f"{DIRECTIONS[metric]} ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"{device}: measured (solid) and simulated (hatched); missing bars were not measured")
    axes[0].legend(ncol=5, fontsize=8)
    axes[1].set_xticks(x, names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _value(m: Measurement | None) -> float | None:
    return None if m is None else m.ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "report", help="path prefix of the .md and .png")
    parser.add_argument("rows", nargs="*", type=Path, help="JSON lines to read (default: anchors + results)")
    args = parser.parse_args(argv)
    measured_list = load(args.rows or default_paths())
    measured = latest(measured_list)
    devices = sorted({key[0] for key in measured}) or [DEFAULTS["device"]]
    sections = [
        "# maskir benchmark report",
        "",
        f"{len(measured_list)} measured times read. Predictions: ``maskir.simulate`` (constants fitted by "
        "benchmarks/fit_sim.py on the flex anchors); bounds: tile = dense / computed pairs, pair = 1 / density.",
        "* data-dependent pattern: planned as its static superset, so its predictions and tile bound are not "
        "those of a run with real data.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for device in devices:
        sample = next((m for key, m in measured.items() if key[0] == device), None)
        shape = (
            (sample.heads, sample.head_dim, sample.batch, sample.dtype)
            if sample
            else (DEFAULTS["H"], DEFAULTS["D"], DEFAULTS["B"], DEFAULTS["dtype"])
        )
        hardware = sample.hardware if sample else "h100"
        if hardware is None:
            sections += ["", f"## {device}", "", "No hardware model for this device: measurements only in the files."]
            continue
        reports = predict(hardware, *shape)
        sections += ["", f"## {device} (simulated as {hardware}; H={shape[0]}, D={shape[1]}, B={shape[2]}, {shape[3]})"]
        for metric in DIRECTIONS:
            sections += ["", markdown_table(device, metric, measured, reports)]
        sections += ["", "Missing measurements:", *(missing(device, measured) or ["- none"])]
        png = args.out.with_name(f"{args.out.name}_{hardware}.png")
        chart(png, device, measured, reports)
        sections += ["", f"![{device}]({png.name})"]
    md = args.out.with_suffix(".md")
    md.write_text("\n".join(sections) + "\n")
    print("\n".join(sections))
    print(f"\nwrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
