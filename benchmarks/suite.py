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
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.catalogue import NAMES, SIZES, cases
from maskir.bench.measure import FWDBWD_WORK, environment, measure_case
from maskir.bench.predict import dry_run
from maskir.sim.target import hardware_for_device_name

RESULTS = Path(__file__).resolve().parent / "results"


def device_slug(device_name: str) -> str:
    """A file-name part for a device: its hardware entry when known, else its name in lower-case words."""
    known = hardware_for_device_name(device_name)
    return known or "_".join(device_name.lower().replace("nvidia", "").split())


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
