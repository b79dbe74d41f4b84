"""maskir's TVM backend on a CPU next to compiled flex_attention, SDPA and NATTEN: one process, same tensors.

The DESIGN.md suite (``benchmarks/catalogue.py``) at its 4,096-token size (``medium``: the same pattern
families), B=1, ``--heads`` 4, ``--head-dim`` 64, fp32. Per entry:

- maskir: ``maskir.compile(..., backend="tvm")`` (tile kernels built for this CPU); ``build_s`` is plan +
  generate + build in a fresh cache; forward and forward + backward;
- flex: ``torch.compile(flex_attention, dynamic=False)`` with a BlockMask from ``create_block_mask`` over
  ``maskir.codegen.flex.to_mask_mod`` (the same pattern), compiled afresh per entry (``torch._dynamo.reset``):
  each entry gets kernels specialised to its shapes, flex's best form. (Compiled once for the whole run,
  dynamo recompiles with dynamic shapes after the first entries, and Inductor's C++ flex kernel for
  ``dilated_w256_d4`` then fails to compile.) Forward only: flex has no backward on a CPU;
- SDPA: no mask for ``Full()``, ``is_causal`` for ``Causal()``, else an explicit boolean mask; forward and
  forward + backward;
- NATTEN: ``natten.functional.neighborhood_attention_generic`` (its CPU path) on the neighborhood entries,
  forward only.

A peer whose first call fails is tried once more (its first error stays in the row as ``<name>_error``
when the retry fails, ``<name>_retried`` when it succeeds). Timing: each repeat runs every implementation once, in turn (interleaved, so machine load hits all
alike), and the medians over ``--repeats`` are reported with the 1-minute load average before and after.
Ratios are peer time / maskir time (> 1: maskir is faster). Each entry is appended as one JSON object to
``benchmarks/results/cpu_backends.jsonl``, the run's table is written to ``cpu_backends.md`` there, and
``--readme`` puts it into README.md between the ``cpu-backends`` markers.

    python benchmarks/cpu_backends.py                      # the whole suite (~15 min on 2 cores)
    python benchmarks/cpu_backends.py --only swin_128x128_w8 causal --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="maskir-cpu-bench-inductor-"))
import torch  # noqa: E402 (after the private Inductor cache folder: other processes' entries stay out)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskir  # noqa: E402
from benchmarks.catalogue import CATALOGUE, Case  # noqa: E402
from maskir.ir import Causal, Full, Neighborhood  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE = "medium"
"""The catalogue size timed: 4,096 tokens for every entry."""
README_MARKERS = ("<!-- cpu-backends:begin -->", "<!-- cpu-backends:end -->")


@dataclass
class Inputs:
    """q, k, v, dO [B, H, N, D] and the entry's run-time data (maskir's and flex's forms)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    data: dict = field(default_factory=dict)
    flex_tensors: dict = field(default_factory=dict)


def make_inputs(case: Case, heads: int, head_dim: int, seed: int = 0) -> Inputs:
    from maskir.runtime.routing import routing_map, routing_node

    generator = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(1, heads, case.tokens, head_dim, generator=generator) for _ in range(4))
    segments, routing = case.segment_ids(1), case.routing_indices(q, k)
    data, tensors = {}, {}
    if segments is not None:
        data["segments"] = tensors["segments_q"] = tensors["segments_kv"] = segments
    if routing is not None:
        data["routing"] = routing
        tensors["routing_map"] = routing_map(q, k, routing_node(case.pattern), routing)
    return Inputs(q, k, v, dout, data, tensors)


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in (inputs.q, inputs.k, inputs.v)]


def build_maskir(case: Case, inputs: Inputs) -> tuple[dict[str, Callable], dict]:
    heads, head_dim = inputs.q.shape[1], inputs.q.shape[3]
    started = time.perf_counter()
    compiled = maskir.compile(
        case.pattern, case.canvas, heads=heads, head_dim=head_dim, dtype=torch.float32, device="cpu",
        backend="tvm", quiet=True,
    )  # fmt: skip
    build_s = time.perf_counter() - started
    leaves = _leaves(inputs)

    def forward():
        with torch.no_grad():
            return compiled(inputs.q, inputs.k, inputs.v, **inputs.data)

    def forward_backward():
        compiled(*leaves, **inputs.data).backward(inputs.dout)

    extra = {"build_s": round(build_s, 2), "blocks": [compiled.plan.block_q, compiled.plan.block_kv]}
    return {"fwd": forward, "fwdbwd": forward_backward}, extra


def build_flex(case: Case, inputs: Inputs) -> tuple[dict[str, Callable], dict]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from maskir.codegen.flex import to_mask_mod

    mask_mod = to_mask_mod(case.pattern, case.canvas, tensors=inputs.flex_tensors)
    block_mask = create_block_mask(mask_mod, 1, inputs.q.shape[1], case.tokens, case.tokens, device="cpu")
    torch._dynamo.reset()  # each entry compiles afresh: no recompile limit, no shapes turned dynamic
    attend = torch.compile(flex_attention, dynamic=False)

    def forward():
        with torch.no_grad():
            return attend(inputs.q, inputs.k, inputs.v, block_mask=block_mask)

    return {"fwd": forward}, {"block_density": round(1.0 - block_mask.sparsity() / 100.0, 4)}


def dense_mask(case: Case, inputs: Inputs) -> torch.Tensor:
    """The allowed pairs [1, H, N, N] as bool, from the flex mask_mod (the same lowering)."""
    from maskir.codegen.flex import to_mask_mod

    mask_mod = to_mask_mod(case.pattern, case.canvas, tensors=inputs.flex_tensors)
    n, heads = case.tokens, inputs.q.shape[1]
    index = torch.arange(n)
    b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(heads).view(1, -1, 1, 1)
    return torch.broadcast_to(mask_mod(b, h, index.view(1, 1, -1, 1), index.view(1, 1, 1, -1)), (1, heads, n, n))


def build_sdpa(case: Case, inputs: Inputs) -> tuple[dict[str, Callable], dict]:
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    options: dict = {}
    if case.pattern == Causal():
        options["is_causal"] = True
    elif case.pattern != Full():
        options["attn_mask"] = dense_mask(case, inputs).contiguous()
    leaves = _leaves(inputs)

    def forward():
        with torch.no_grad():
            return sdpa(inputs.q, inputs.k, inputs.v, **options)

    def forward_backward():
        sdpa(*leaves, **options).backward(inputs.dout)

    return {"fwd": forward, "fwdbwd": forward_backward}, {"mask": "explicit" if "attn_mask" in options else "none"}


def build_natten(case: Case, inputs: Inputs) -> tuple[dict[str, Callable], dict] | None:
    """NATTEN's CPU forward on a plain ``Neighborhood`` entry, None elsewhere (or without natten)."""
    node = case.pattern
    if not isinstance(node, Neighborhood):
        return None
    try:
        import natten
    except ImportError:
        return None
    from maskir.ir import expand

    ndim, shape = len(case.canvas.shape), case.canvas.shape
    args = {name: expand(getattr(node, name), ndim, "Neighborhood", name) for name in ("kernel", "dilation", "stride")}
    causal = expand(node.causal, ndim, "Neighborhood", "causal")
    heads, head_dim = inputs.q.shape[1], inputs.q.shape[3]
    layout = [
        t.transpose(1, 2).reshape(1, *shape, heads, head_dim).contiguous() for t in (inputs.q, inputs.k, inputs.v)
    ]

    def forward():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return natten.functional.neighborhood_attention_generic(
                *layout, kernel_size=args["kernel"], stride=args["stride"], dilation=args["dilation"],
                is_causal=causal, backend="flex-fna",
            )  # fmt: skip

    return {"fwd": forward}, {"natten": natten.__version__}


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 2)


def _warm_up(name: str, forward: Callable, row: dict) -> torch.Tensor | None:
    """The first forward call (flex and NATTEN compile here), tried twice for a peer: Inductor's C++
    compile has failed once on a loaded machine (a CppCompileError on an entry it builds when rerun). A
    peer failing twice gets ``<name>_error`` in ``row`` and None; maskir's errors propagate."""
    for attempt in (1, 2):
        try:
            return forward()
        except Exception as error:
            if name == "maskir":
                raise
            row[f"{name}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if attempt == 2:
                return None
            row[f"{name}_retried"] = True
    return None


def measure(case: Case, *, heads: int, head_dim: int, repeats: int, peers: tuple[str, ...]) -> dict:
    """One entry: every implementation built, then ``repeats`` interleaved rounds of each one's calls."""
    inputs = make_inputs(case, heads, head_dim)
    load_before = os.getloadavg()[0]
    impls = {"maskir": build_maskir(case, inputs)}
    builders = {"flex": build_flex, "sdpa": build_sdpa, "natten": build_natten}
    for peer in peers:
        built = builders[peer](case, inputs)
        if built is not None:
            impls[peer] = built
    ours = impls["maskir"][0]["fwd"]()
    row: dict = {"pattern": case.name, "spec": str(case.pattern), "canvas": list(case.canvas.shape)}
    for name, (calls, extra) in list(impls.items()):
        out = _warm_up(name, calls["fwd"], row)
        if out is None:  # a peer that fails to build twice is reported, not timed
            del impls[name]
            continue
        if name != "maskir":
            out = out if out.shape == ours.shape else out.reshape(1, case.tokens, heads, head_dim).transpose(1, 2)
            row[f"{name}_max_abs_diff"] = float((out - ours).abs().max())
        for step in calls.values():
            step()
        row.update({f"{name}_{key}": value for key, value in extra.items()})
    times = {(name, step): [] for name, (calls, _) in impls.items() for step in calls}
    for _ in range(repeats):
        for (name, step), series in times.items():
            call = impls[name][0][step]
            started = time.perf_counter()
            call()
            series.append(time.perf_counter() - started)
    row.update({f"{name}_{step}_ms": _median_ms(series) for (name, step), series in times.items()})
    mine_fwd, mine_both = row["maskir_fwd_ms"], row["maskir_fwdbwd_ms"]
    for peer in ("flex", "sdpa", "natten"):
        if f"{peer}_fwd_ms" in row:
            row[f"{peer}_fwd_ratio"] = round(row[f"{peer}_fwd_ms"] / mine_fwd, 2)
    row["sdpa_fwdbwd_ratio"] = round(row["sdpa_fwdbwd_ms"] / mine_both, 2) if "sdpa_fwdbwd_ms" in row else None
    row.update(
        {
            "heads": heads, "head_dim": head_dim, "tokens": case.tokens, "dtype": "float32", "repeats": repeats,
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
        }
    )  # fmt: skip
    return row


def _cell(row: dict, key: str, digits: int = 1) -> str:
    value = row.get(key)
    return "—" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    """Markdown: per entry the times (ms) and ratios peer / maskir (> 1: maskir is faster)."""
    lines = [
        "| pattern | maskir fwd | flex fwd | ×flex | SDPA fwd | ×SDPA | NATTEN fwd | maskir fwd+bwd | SDPA fwd+bwd "
        "| ×SDPA fwd+bwd | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['pattern']} | {_cell(row, 'maskir_fwd_ms')} | {_cell(row, 'flex_fwd_ms')} "
            f"| **{_cell(row, 'flex_fwd_ratio', 2)}** | {_cell(row, 'sdpa_fwd_ms')} | {_cell(row, 'sdpa_fwd_ratio', 2)} "
            f"| {_cell(row, 'natten_fwd_ms')} | {_cell(row, 'maskir_fwdbwd_ms')} | {_cell(row, 'sdpa_fwdbwd_ms')} "
            f"| {_cell(row, 'sdpa_fwdbwd_ratio', 2)} | {_cell(row, 'maskir_build_s')} |"
        )
    return "\n".join(lines)


def put_in_readme(readme: Path, text: str) -> None:
    """Replace what lies between the ``cpu-backends`` markers of ``readme`` with ``text``."""
    begin, end = README_MARKERS
    content = readme.read_text(encoding="utf-8")
    if begin not in content or end not in content:
        raise ValueError(f"{readme} has no {begin} ... {end} markers to put the table between.")
    head, rest = content.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/cpu_backends.py", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CATALOGUE), help="catalogue entries (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per entry (default 5)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--peers", nargs="*", default=["flex", "sdpa", "natten"], choices=["flex", "sdpa", "natten"])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for the results (default {RESULTS})")
    parser.add_argument("--readme", action="store_true", help="put the table into README.md")
    args = parser.parse_args(argv)
    os.environ["MASKIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="maskir-cpu-bench-")  # builds from scratch
    args.results.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or list(CATALOGUE):
        row = measure(
            CATALOGUE[name][SIZE], heads=args.heads, head_dim=args.head_dim, repeats=args.repeats,
            peers=tuple(args.peers),
        )  # fmt: skip
        rows.append(row)
        with (args.results / "cpu_backends.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    first, last = rows[0], rows[-1]
    note = (
        f"{first['cpu']}, {first['cores']} cores ({first['threads']} threads), torch {first['torch']}, "
        f"{first['tokens']} tokens, {args.heads} heads, head dim {args.head_dim}, fp32, medians of "
        f"{args.repeats} interleaved rounds; load average {first['load_1min_before']} at the start, "
        f"{last['load_1min_after']} at the end."
    )
    text = table(rows) + "\n\n" + note
    (args.results / "cpu_backends.md").write_text(text + "\n", encoding="utf-8")
    if args.readme:
        put_in_readme(ROOT / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
