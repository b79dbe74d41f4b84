"""Plan build time and memory: maskir's planner vs torch's ``create_block_mask`` on CPU, causal SWA 1024.

Side by side on the same pattern and size (kv <= q and q - kv < 1024, 128 x 128 blocks): at 16K and 64K
tokens, as a ratio to create_block_mask eager and ``torch.compile``d (its first, compiling call reported
apart); maskir alone at 1M and 4M tokens, with 128 x 128 blocks and with its own block choice
("maskir-auto", the acceptance row: ``maskir.plan(Window(1023, 0), 1 << 20)``). Per row, ``plan_ms`` is
``maskir.plan(...)`` itself (its tables stay as runs; the kernels' CSR arrays are built on first use) and
``tables_ms`` adds building the CSR arrays of both directions (forward and dK/dV), what the first kernel
launch pays; create_block_mask's time includes both directions too. Times are medians of ``--repeats``
runs; maskir's memory is the peak traced by ``tracemalloc`` (numpy allocations) of one run with tables,
create_block_mask's the peak RSS growth of a fresh process (torch allocates outside tracemalloc's view).
Each row records the 1-minute load average, since other work on the machine slows the timings.

Data-dependent patterns plan per call: for the suite's ``documents16`` and ``routing_top8`` (16K tokens,
16 heads, the suite's documents and routing choice), "maskir-per-call" times what a maskir call computes
before its launches (run-time tensors and tile gates of both directions, ``CompiledAttention.tile_gates``;
the static plan is built once) against create_block_mask over the same mask (``to_mask_mod``), which a
flex user rebuilds for each new batch of documents or routing choice. Eager create_block_mask is skipped
for the per-head routing mask (16 x N x N pairs at once).

mask_mods (``Predicate``): "swa_causal_lambda" is the causal SWA above written as a flex-style lambda,
``maskir.plan(Predicate(lambda b, h, q, kv: (q - kv < 1024) & (kv <= q)))``, which the planner rewrites to
``Window(1023, 0)`` (16K and 1M tokens; its ratio to the Window row is reported); "causal_documents_product"
is a mask no rule covers, ``(kv <= q) & (doc[q] == doc[kv]) & ((q * kv) % 7 != 0)`` with 1000-token
documents: the causal superset is affine, interval bounds prove the tiles across documents EMPTY, and the
chunks of the rest are evaluated (16K tokens); "product_mod7", ``(q * kv) % 7 != 0``, is one where neither
helps (every tile PARTIAL), but witnesses do: a sample of 16 to 80 pairs per tile holds an allowed and a
masked pair, which proves the tile PARTIAL, so almost no pair is counted; "sparse_product",
``(q * kv) % 65537 == 1``, is one where nothing helps: its samples are all masked, so every pair is counted,
as create_block_mask does (16K tokens); "dilated_product", ``((q - kv) % 4 == 0) & ((q * kv) % 7 != 0)``, and
"strided_where", ``torch.where(q > kv, (q - kv) % 997 == 3, (kv * 7 + q) % 1009 == 0)``, have an affine part
with a stride (``Strided(4)``; ``Strided(997, offset=3)`` below the diagonal), so the planner also prices
layouts that group tokens by residue, whose tiles are not token ranges: there the rest of the mask_mod is
classified on the listed tokens of each tile (``planner.listed``), and for the second a union of a dense
half and a strided half is priced part by part (16K tokens). For each, maskir's
``plan_ms`` is the median of repeated plans of the same Predicate after a first call (``first_call_ms``,
which compiles the counting chunks for the second); ``torch.compile(create_block_mask)`` on the same mask_mod
runs in the same process, alternating with maskir round by round (``--mask-mod-repeats`` rounds, the first
apart), so load from other work hits both alike; ``paired_ratio_vs_compiled`` is the median of the per-round
ratios. Eager create_block_mask runs in a fresh process as above.

Appends one JSON object per row to ``benchmarks/results/plan_speed_cpu.jsonl`` and prints a table.

    python benchmarks/plan_speed.py                    # all rows; create_block_mask at 64K takes minutes
    python benchmarks/plan_speed.py --skip-flex-64k    # the quick version
    python benchmarks/plan_speed.py --skip-per-call    # causal SWA only
    python benchmarks/plan_speed.py --only-mask-mods   # the mask_mod rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskir.ir import Window  # noqa: E402
from maskir.planner import plan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "plan_speed_cpu.jsonl"
PATTERN = "swa_causal_w1024"
WINDOW = 1024
PER_CALL = ("documents16", "routing_top8")
"""Data-dependent suite entries whose per-call planning is timed (16K tokens, B=1, H=16, D=128)."""

FLEX_SCRIPT = """
import os, resource, statistics, sys, time, torch
from torch.nn.attention.flex_attention import create_block_mask
sys.path.insert(0, os.getcwd())
from benchmarks.plan_speed import flex_mask
pattern, n, repeats, compiled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "compiled"
mask_mod, batch, heads = flex_mask(pattern)
create = torch.compile(create_block_mask) if compiled else create_block_mask
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats + compiled):  # the compiled version's first call compiles: timed apart
    start = time.perf_counter()
    mask = create(mask_mod, batch, heads, n, n, device="cpu")
    times.append(time.perf_counter() - start)
    del mask
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
steady = times[compiled:]
print(statistics.median(steady) * 1e3, (peak - before) / 1024, times[0] * 1e3)
"""


MASK_MODS = (
    "swa_causal_lambda",
    "causal_documents_product",
    "product_mod7",
    "sparse_product",
    "dilated_product",
    "strided_where",
)
DOCUMENTS = None


def mask_mod(name: str) -> Callable:
    """The flex-style mask_mod of a ``MASK_MODS`` row (documents of 1000 tokens, up to 4M tokens)."""
    global DOCUMENTS
    if name == "swa_causal_lambda":
        return lambda b, h, q, kv: (q - kv < WINDOW) & (kv <= q)
    if name == "product_mod7":
        return lambda b, h, q, kv: (q * kv) % 7 != 0
    if name == "sparse_product":
        return lambda b, h, q, kv: (q * kv) % 65537 == 1
    if name == "dilated_product":
        return lambda b, h, q, kv: ((q - kv) % 4 == 0) & ((q * kv) % 7 != 0)
    if name == "strided_where":
        import torch

        return lambda b, h, q, kv: torch.where(q > kv, (q - kv) % 997 == 3, (kv * 7 + q) % 1009 == 0)
    import torch

    if DOCUMENTS is None:
        DOCUMENTS = torch.arange(1 << 22) // 1000
    documents = DOCUMENTS
    return lambda b, h, q, kv: (kv <= q) & (documents[q] == documents[kv]) & ((q * kv) % 7 != 0)


def flex_mask(pattern: str) -> tuple[Callable, int | None, int | None]:
    """(mask_mod, B, H) of create_block_mask for ``pattern``: causal SWA (``PATTERN``) written out by hand,
    else a ``PER_CALL`` catalogue entry through ``to_mask_mod`` with the suite's run-time data (B / H only
    where the mask reads them)."""
    if pattern == PATTERN:
        return (lambda b, h, q, kv: (kv <= q) & (q - kv < WINDOW)), None, None
    if pattern in MASK_MODS:
        return mask_mod(pattern), None, None
    import torch

    from benchmarks import catalogue
    from maskir.bench import measure
    from maskir.codegen.flex import to_mask_mod

    entry = catalogue.case(pattern)
    inputs = measure.make_inputs(entry, torch.device("cpu"))
    by_batch, by_head = measure.mask_depends_on(entry)
    suite_mask_mod = to_mask_mod(entry.pattern, entry.canvas, tensors=inputs.flex_tensors)
    return suite_mask_mod, catalogue.BATCH if by_batch else None, catalogue.HEADS if by_head else None


def _environment() -> dict:
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "commit": commit,
    }


def time_maskir(n: int, repeats: int, block: int | None) -> dict:
    """Median times of ``plan`` alone and with the CSR tables of both directions built, and the peak traced
    memory of one run with tables."""

    def planned():
        return plan(Window(WINDOW - 1, 0), n, block_q=block, block_kv=block)

    def with_tables():
        result = planned()
        for table in result.parts[0].tables:
            table.kv_index, table.q_index  # noqa: B018 (materialise the forward and dK/dV tables)
        return result

    def median_ms(run) -> float:
        run()  # warm-up (imports, caches)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    plan_ms, tables_ms = median_ms(planned), median_ms(with_tables)
    tracemalloc.start()
    result = with_tables()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    table = result.parts[0].tables[0]
    return {
        "plan_ms": plan_ms,
        "tables_ms": tables_ms,
        "peak_mib": peak / 2**20,
        "blocks": f"{result.block_q}x{result.block_kv}",
        "layout": result.layout.name,
        "tiles": table.nnz,
        "load_average_1m": os.getloadavg()[0],
    }


def time_mask_mod(name: str, n: int, repeats: int, flex: bool = True) -> tuple[dict, dict | None]:
    """maskir.plan of the Predicate of ``name`` (128 x 128 blocks) and ``torch.compile(create_block_mask)`` on
    the same mask_mod, alternating in this process (the machine's load drifts: both sides see the same), each
    side's first call apart; returns (maskir's fields, the compiled create_block_mask row's fields) with
    medians, and the median of the per-round ratios (create_block_mask / maskir); then maskir alone again
    (``alone_plan_ms``: a sub-millisecond plan slows several-fold right after an N^2 pass has flushed the
    caches, so the ratio to ``Window`` uses this one). ``flex`` False: maskir only
    (create_block_mask would evaluate N^2 pairs), and no create_block_mask row."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from maskir.ir import Predicate

    predicate, flex_mod = Predicate(mask_mod(name)), mask_mod(name)
    create = torch.compile(create_block_mask)
    ours, theirs, alone = [], [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = plan(predicate, n, block_q=128, block_kv=128)
        ours.append(time.perf_counter() - start)
        if flex:
            start = time.perf_counter()
            create(flex_mod, None, None, n, n, device="cpu")
            theirs.append(time.perf_counter() - start)
    for _ in range(repeats if flex else 0):  # maskir alone: caches not flushed by create_block_mask's N^2 pass
        start = time.perf_counter()
        plan(predicate, n, block_q=128, block_kv=128)
        alone.append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    maskir_row = {
        "plan_ms": statistics.median(ours[1:]) * 1e3,
        "first_call_ms": ours[0] * 1e3,
        "planned_as": str(result.pattern),
        "blocks": f"{result.block_q}x{result.block_kv}",
        "layout": result.layout.name,
        "tiles": result.tile_counts.tiles,
        "times_ms": [t * 1e3 for t in ours[1:]],
        "load_average_1m": load,
    }
    if not flex:
        return maskir_row, None
    maskir_row["paired_ratio_vs_compiled"] = statistics.median(b / a for a, b in zip(ours[1:], theirs[1:]))
    maskir_row["alone_plan_ms"] = statistics.median(alone) * 1e3
    flex_row = {
        "blocks": "128x128",
        "layout": "identity",
        "plan_ms": statistics.median(theirs[1:]) * 1e3,
        "first_call_ms": theirs[0] * 1e3,
        "times_ms": [t * 1e3 for t in theirs[1:]],
        "in_process": True,
        "load_average_1m": load,
    }
    return maskir_row, flex_row


def time_per_call(name: str, repeats: int) -> dict:
    """Median time of maskir's per-call planning of suite entry ``name`` on CPU: the run-time tensors and
    tile gates of both directions (``CompiledAttention.tile_gates``), what every call does before its
    launches; the kernels are built (for the interpreter) but never run."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from benchmarks import catalogue
    from maskir.bench import measure

    entry = catalogue.case(name)
    inputs = measure.make_inputs(entry, torch.device("cpu"))
    compiled = measure.compile_maskir(entry, torch.device("cpu"))
    data = {"segments": inputs.segments, "routing": inputs.routing}
    refine = partial(compiled.tile_gates, inputs.q, inputs.k, backward=True, **data)
    times = []
    for _ in range(repeats + 1):  # the first call builds the tables and gates: timed apart
        start = time.perf_counter()
        lists = refine()
        times.append(time.perf_counter() - start)
    forward = [part[0].open_tiles for part in lists if part is not None]
    return {
        "plan_ms": statistics.median(times[1:]) * 1e3,
        "first_call_ms": times[0] * 1e3,
        "blocks": f"{compiled.plan.block_q}x{compiled.plan.block_kv}",
        "layout": "+".join(part.layout.name for part in compiled.plan.parts),
        "tiles": compiled.plan.tile_counts.tiles,
        "open_tiles": int(sum(int(t.sum()) * (catalogue.HEADS // t.shape[1]) for t in forward)),
        "load_average_1m": os.getloadavg()[0],
    }


def time_create_block_mask(pattern: str, n: int, repeats: int, compiled: bool) -> dict:
    """Median create_block_mask time on CPU (eager, or ``torch.compile``d after a first compiling call)
    and peak RSS growth, in a fresh process, for ``pattern`` (``flex_mask``).

    Eager create_block_mask evaluates the mask on all B x H x N x N pairs at once: past the machine's
    memory it fails, and the row records the error instead of a time.
    """
    mode = "compiled" if compiled else "eager"
    done = subprocess.run(
        [sys.executable, "-c", FLEX_SCRIPT, pattern, str(n), str(repeats), mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    row = {"blocks": "128x128", "layout": "identity", "load_average_1m": os.getloadavg()[0]}
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {**row, "error": last[:200]}
    ms, mib, first = map(float, done.stdout.split())
    return {**row, "plan_ms": ms, "peak_mib": mib, **({"first_call_ms": first} if compiled else {})}


def mask_mod_rows(rows: list, args, against_flex: Callable) -> None:
    """The MASK_MODS rows: the lambda SWA against Window(1023, 0) (16K, 1M) and create_block_mask (16K);
    the others (documents x product, the products, the strided ones) against create_block_mask (16K).
    Compiled create_block_mask runs in this process, alternating with maskir (``time_mask_mod``); the eager one
    in a fresh process."""
    repeats = min(args.repeats, args.mask_mod_repeats)
    for n in (16384, 1 << 20):
        window = time_maskir(n, args.repeats, 128)
        timed, flex_row = time_mask_mod("swa_causal_lambda", n, repeats, flex=n == 16384)
        row = {"pattern": "swa_causal_lambda", "impl": "maskir-mask_mod", "N": n, **timed}
        row["window_plan_ms"] = window["plan_ms"]
        row["ratio_to_window"] = row.get("alone_plan_ms", row["plan_ms"]) / window["plan_ms"]
        if n == 16384:
            against_flex(row, row["plan_ms"], compiled_row=flex_row)
        else:  # create_block_mask at 1M: 2^40 pairs, not run
            rows.append(row)
    for name in MASK_MODS[1:]:
        timed, flex_row = time_mask_mod(name, 16384, repeats)
        row = {"pattern": name, "impl": "maskir-mask_mod", "N": 16384, **timed}
        against_flex(row, row["plan_ms"], compiled_row=flex_row)


def _ratio(value: float | None) -> str:
    """A speedup for the table: two decimals below 10x, none above; blank when not measured."""
    return "" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="maskir runs per size (median)")
    parser.add_argument("--flex-repeats", type=int, default=3, help="create_block_mask runs per size (median)")
    parser.add_argument("--skip-flex-64k", action="store_true", help="skip create_block_mask at 64K (minutes, or OOM)")
    parser.add_argument(
        "--skip-per-call", action="store_true", help=f"skip the per-call planning rows ({', '.join(PER_CALL)})"
    )
    parser.add_argument(
        "--only-mask-mods", action="store_true", help=f"only the mask_mod rows ({', '.join(MASK_MODS)})"
    )
    parser.add_argument(
        "--mask-mod-repeats", type=int, default=9, help="rounds of maskir and compiled create_block_mask per mask_mod"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON lines file to append to")
    args = parser.parse_args(argv)

    env = _environment()
    rows = []

    def against_flex(maskir_row: dict, maskir_ms: float, eager: bool = True, compiled_row: dict | None = None):
        """Append ``maskir_row`` and create_block_mask's rows of the same pattern and size, with ratios (the
        compiled one timed already in this process when ``compiled_row`` is given)."""
        rows.append(maskir_row)
        pattern, n = maskir_row["pattern"], maskir_row["N"]
        for impl, compiled in (("create_block_mask", False), ("create_block_mask_compiled", True)):
            if not compiled and not eager:
                continue
            flex_row = {"pattern": pattern, "impl": impl, "N": n}
            if compiled and compiled_row is not None:
                flex_row |= compiled_row
            else:
                flex_row |= time_create_block_mask(pattern, n, args.flex_repeats, compiled)
            if "plan_ms" in flex_row:
                maskir_row[f"speedup_vs_{impl}"] = flex_row["plan_ms"] / maskir_ms
            rows.append(flex_row)

    mask_mod_rows(rows, args, against_flex)
    for n in () if args.only_mask_mods else (16384, 65536):
        maskir_row = {"pattern": PATTERN, "impl": "maskir", "N": n, **time_maskir(n, args.repeats, 128)}
        if n == 65536 and args.skip_flex_64k:
            rows.append(maskir_row)
        else:
            against_flex(maskir_row, maskir_row["tables_ms"])
    for n in () if args.only_mask_mods else (1 << 20, 1 << 22):
        rows.append({"pattern": PATTERN, "impl": "maskir", "N": n, **time_maskir(n, args.repeats, 128)})
        rows.append({"pattern": PATTERN, "impl": "maskir-auto", "N": n, **time_maskir(n, args.repeats, None)})
    if not (args.skip_per_call or args.only_mask_mods):
        from benchmarks import catalogue
        from maskir.bench.measure import mask_depends_on

        for name in PER_CALL:
            entry = catalogue.case(name)
            maskir_row = {"pattern": name, "impl": "maskir-per-call", "N": entry.tokens}
            maskir_row |= time_per_call(name, args.repeats)
            # a per-head mask (routing) evaluated eagerly needs H x the N x N pairs at once: past this machine
            against_flex(maskir_row, maskir_row["plan_ms"], eager=not mask_depends_on(entry)[1])

    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as out:
        for row in rows:
            out.write(json.dumps({**row, **env}) + "\n")
    print(
        f"{'impl':<27} {'N':>9} {'blocks':>8} {'plan ms':>9} {'+tables':>9} {'peak MiB':>9}  {'vs eager':>9} "
        f"{'vs compiled':>11} {'load':>5}  layout"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['impl']:<27} {row['N']:>9} {row['blocks']:>8}  failed: {row['error']}")
            continue
        eager, compiled = (row.get(f"speedup_vs_create_block_mask{s}") for s in ("", "_compiled"))
        tables = f"{row['tables_ms']:.3f}" if "tables_ms" in row else ""
        peak = f"{row['peak_mib']:.2f}" if "peak_mib" in row else ""
        print(
            f"{row['impl']:<27} {row['N']:>9} {row['blocks']:>8} {row['plan_ms']:>9.3f} {tables:>9} "
            f"{peak:>9}  {_ratio(eager):>9} {_ratio(compiled):>11}"
            f" {row['load_average_1m']:>5.2f}  {row['layout']}"
        )
    for row in rows:
        if "paired_ratio_vs_compiled" in row:
            print(
                f"{row['pattern']} N={row['N']}: median per-round ratio compiled create_block_mask / maskir "
                f"{row['paired_ratio_vs_compiled']:.2f}x"
            )
    print(f"appended {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    main()
