"""Fit the simulator's kernel constants to measured times; print each row's error and leave-one-out error.

    python benchmarks/fit_sim.py                   # flex: fit on the H100 anchors, validate on benchmarks/results
    python benchmarks/fit_sim.py --kernel maskir   # maskir: fit on the maskir rows of benchmarks/results
    python benchmarks/fit_sim.py --write           # also write the fitted flex constants into maskir/sim/hardware.py

The model is ``maskir/sim/cost.py``. Three constants of ``KernelModel`` are fitted: fwd_efficiency,
bwd_efficiency and mask_ops_per_pair, by least squares on log(predicted / measured)
(a 10% miss weighs the same on a 0.4 ms row and a 9 ms row), Levenberg-Marquardt with a finite-difference
Jacobian. A constant no fitting row depends on keeps its value. The leave-one-out column refits without
the row and predicts it: the error to expect on a pattern the fit has not seen.

Rows: ``benchmarks/measurements.py`` reads them. Rows of another impl, of a pattern or size the catalogue
lacks, of a device the simulator does not model, or of a data-dependent pattern (Segments, Routing: planned
without its data, as a static superset) are skipped with a note.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)] if str(ROOT) not in sys.path else []

from benchmarks.catalogue import CATALOGUE  # noqa: E402
from benchmarks.measurements import ANCHORS, RESULTS, Measurement, load  # noqa: E402
from maskir.ir import is_dynamic  # noqa: E402
from maskir.sim.cost import Workload, time_workload, workload  # noqa: E402
from maskir.sim.hardware import KernelModel, get_kernel  # noqa: E402
from maskir.sim.simulator import kernel_plan  # noqa: E402

HARDWARE_PY = ROOT / "maskir" / "sim" / "hardware.py"
FITTED = ("fwd_efficiency", "bwd_efficiency", "mask_ops_per_pair")
BOUNDS = {
    "fwd_efficiency": (0.05, 1.0),
    "bwd_efficiency": (0.05, 1.0),
    "mask_ops_per_pair": (0.0, 1e4),
}
SCALE = {"fwd_efficiency": 1.0, "bwd_efficiency": 1.0, "mask_ops_per_pair": 100.0}
"""Typical magnitudes: the solver works on constant / scale, so every step has a comparable size."""


@dataclass(frozen=True)
class Row:
    """One measurement and the kernel's workload for it."""

    measured: Measurement
    work: Workload

    @property
    def name(self) -> str:
        return self.measured.pattern

    @property
    def metric(self) -> str:
        return self.measured.metric

    def predict(self, model: KernelModel) -> float:
        m, backward = self.measured, self.measured.metric == "fwdbwd_ms"
        timing = time_workload(
            self.work, m.hardware, kernel=model, batch=m.batch, head_dim=m.head_dim, dtype=m.dtype, backward=backward
        )
        return timing.fwd_ms + (timing.bwd_ms if backward else 0.0)


def load_rows(paths: list[Path], kernel: str) -> tuple[list[Row], list[str]]:
    """The measurements of ``kernel`` in ``paths`` (each pattern planned once), and a note per skipped one."""
    rows, skipped, works = [], [], {}
    for m in load(paths):
        case = CATALOGUE.get(m.pattern, {}).get("full")
        why = (
            f"not a {kernel} time"
            if m.impl != kernel
            else f"N={m.tokens} is not in benchmarks/catalogue.py"
            if case is None or case.tokens != m.tokens
            else f"no hardware model for {m.device!r}"
            if m.hardware is None
            else "data-dependent pattern: the simulator would price its static superset, not the measured data"
            if is_dynamic(case.pattern)
            else None
        )
        if why:
            skipped.append(f"{m.source} {m.pattern} {m.impl}: {why}")
            continue
        if (m.pattern, m.heads) not in works:
            works[m.pattern, m.heads] = workload(kernel_plan(kernel, case.pattern, case.canvas, heads=m.heads))
        rows.append(Row(m, works[m.pattern, m.heads]))
    return rows, skipped


def _log_errors(rows: list[Row], model: KernelModel) -> np.ndarray:
    return np.array([math.log(row.predict(model) / row.measured.ms) for row in rows])


def _with(model: KernelModel, x: np.ndarray) -> KernelModel:
    values = {}
    for name, value in zip(FITTED, x):
        lo, hi = BOUNDS[name]
        values[name] = float(np.clip(value * SCALE[name], lo, hi))
    return replace(model, **values)


def fit(rows: list[Row], model: KernelModel, iterations: int = 60) -> KernelModel:
    """Levenberg-Marquardt on log errors over the constants in ``FITTED`` (clipped to ``BOUNDS``)."""
    x = np.array([getattr(model, name) / SCALE[name] for name in FITTED])
    r = _log_errors(rows, _with(model, x))
    damping = 1e-2
    for _ in range(iterations):
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            step = 1e-4 * max(abs(x[j]), 1e-2)
            shifted = x.copy()
            shifted[j] += step
            jac[:, j] = (_log_errors(rows, _with(model, shifted)) - r) / step
        normal = jac.T @ jac
        candidate = x - np.linalg.solve(
            normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(x.size)), jac.T @ r
        )
        candidate = np.array([np.clip(v * SCALE[n], *BOUNDS[n]) / SCALE[n] for n, v in zip(FITTED, candidate)])
        r_candidate = _log_errors(rows, _with(model, candidate))
        if r_candidate @ r_candidate < r @ r:
            improvement = r @ r - r_candidate @ r_candidate
            x, r, damping = candidate, r_candidate, damping / 3
            if improvement < 1e-12:
                break
        else:
            damping *= 4
    return _with(model, x)


def table(rows: list[Row], model: KernelModel, loo: list[float] | None = None) -> str:
    """A markdown table: measured vs predicted ms and the relative error per row."""
    lines = [
        "| pattern | metric | measured ms | predicted ms | error |" + (" leave-one-out error |" if loo else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if loo else ""),
    ]
    for i, row in enumerate(rows):
        predicted = row.predict(model)
        measured = row.measured.ms
        line = f"| {row.name} | {row.metric} | {measured:.3f} | {predicted:.3f} | {predicted / measured - 1:+.1%} |"
        lines.append(line + (f" {loo[i]:+.1%} |" if loo else ""))
    return "\n".join(lines)


def leave_one_out(rows: list[Row], model: KernelModel) -> list[float]:
    """Relative error on each row of a fit made without it."""
    return [rows[i].predict(fit(rows[:i] + rows[i + 1 :], model)) / rows[i].measured.ms - 1 for i in range(len(rows))]


def write_constants(model: KernelModel, path: Path = HARDWARE_PY) -> None:
    """Rewrite the fitted fields inside ``FLEX = KernelModel(...)`` of hardware.py."""
    text = path.read_text()
    start = text.index("FLEX = KernelModel(")
    end = text.index("\n)\n", start)
    block = text[start:end]
    for name in FITTED:
        block, n = re.subn(rf"(\n    {name}=)[-+0-9.e]+", rf"\g<1>{getattr(model, name):.3g}", block)
        assert n == 1, f"{name} not found once in the FLEX block of {path}"
    path.write_text(text[:start] + block + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="flex", choices=("flex", "maskir"))
    parser.add_argument(
        "--fit", nargs="*", type=Path, help="rows to fit (default: anchors for flex, results for maskir)"
    )
    parser.add_argument("--validate", nargs="*", type=Path, help="rows to check only (default: benchmarks/results)")
    parser.add_argument("--write", action="store_true", help="write the fitted flex constants into hardware.py")
    args = parser.parse_args(argv)
    results = sorted(RESULTS.glob("*.jsonl"))
    fit_paths = args.fit if args.fit is not None else [ANCHORS] if args.kernel == "flex" else results
    validate_paths = args.validate if args.validate is not None else results if args.kernel == "flex" else []

    rows, skipped = load_rows(fit_paths, args.kernel)
    base = get_kernel(args.kernel)
    if not rows:
        print(f"No {args.kernel} rows to fit in {', '.join(map(str, fit_paths)) or 'nothing'}; constants unchanged.")
        return 1
    fitted = fit(rows, base)
    print(f"## Fit of {args.kernel} on {len(rows)} rows ({', '.join(p.name for p in fit_paths)})\n")
    print(table(rows, fitted, leave_one_out(rows, fitted)))
    print("\nconstants (" + ", ".join(f"{name}={getattr(fitted, name):.3g}" for name in FITTED) + ")")
    print("fixed: " + ", ".join(f"{n}={getattr(fitted, n)}" for n in ("tile_cycles", "launch_us", "fused_backward")))
    held_out, more_skipped = load_rows(validate_paths, args.kernel) if validate_paths else ([], [])
    if held_out:
        print(f"\n## Held-out {args.kernel} rows ({len(held_out)}), not fitted\n")
        print(table(held_out, fitted))
    else:
        print(f"\nNo held-out {args.kernel} rows in benchmarks/results yet.")
    for note in skipped + more_skipped:
        print(f"skipped {note}")
    if args.write:
        if args.kernel != "flex":
            print("--write only rewrites the FLEX constants; paste maskir's into MASKIR in hardware.py by hand.")
            return 1
        write_constants(fitted)
        print(f"wrote {', '.join(FITTED)} into {HARDWARE_PY.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
