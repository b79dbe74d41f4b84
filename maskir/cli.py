"""The ``maskir`` command line: each subcommand is one function that calls one library function and prints.

A subcommand is added with ``@command(name, *arguments)`` on a function ``(args) -> None | exit status``; the first
line of its docstring is its help. Library modules are imported inside the commands, so ``maskir
--help`` stays fast. Errors a user can fix (bad spec text, a canvas that does not fit, a missing file)
print one line to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskir import __version__
from maskir.canvas import Canvas
from maskir.ir import Pattern
from maskir.sim.target import ARCHES, hardware_for_device_name

DENSE_PAIR_LIMIT = 4096 * 4096
"""Largest Nq * Nkv for which ``maskir parse`` builds the dense mask (16 MiB of bools)."""

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError)
"""Exceptions that report bad input (``SpecError`` is a ``ValueError``); anything else keeps its traceback."""

Argument = tuple[tuple[str, ...], dict]
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int | None], tuple[Argument, ...]]] = {}


def argument(*flags: str, **options) -> Argument:
    """The arguments of one ``ArgumentParser.add_argument`` call, kept for ``build_parser``."""
    return flags, options


def command(name: str, *arguments: Argument):
    """Register the decorated function as subcommand ``name`` taking ``arguments``."""

    def register(fn: Callable[[argparse.Namespace], int | None]):
        COMMANDS[name] = (fn, arguments)
        return fn

    return register


def _canvas(text: str) -> Canvas:
    try:
        return Canvas.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


SPEC = argument("spec", help="pattern text such as 'Neighborhood(7) | Sink(4)', or a path to a .toml spec file")
CANVAS = argument("--canvas", type=_canvas, help="query canvas: 16384, 128x128 or 16x32x32 (overrides a spec file's)")
KV_CANVAS = argument("--kv-canvas", type=_canvas, help="key/value canvas when it differs from the query canvas")


def load_pattern(spec: str, canvas: Canvas | None, kv_canvas: Canvas | None) -> tuple[Pattern, Canvas, Canvas]:
    """The pattern and its q/kv canvases from SPEC text (``maskir.parse``) or a .toml file (``maskir.load_spec``).

    Canvases given on the command line override the file's; the kv canvas defaults to the q canvas.
    """
    from maskir.ir import check_canvas

    if spec.endswith(".toml"):
        from maskir.spec import load_spec

        loaded = load_spec(spec)
        pattern = loaded.pattern
        canvas = canvas or loaded.canvas
        kv_canvas = kv_canvas or loaded.kv_canvas
    else:
        from maskir.spec import parse

        pattern = parse(spec)
    if canvas is None:
        raise ValueError("pattern text needs --canvas (for example --canvas 128x128 or --canvas 16384).")
    kv_canvas = kv_canvas or canvas
    check_canvas(pattern, canvas, kv_canvas)
    return pattern, canvas, kv_canvas


def _dense_mask(pattern: Pattern, canvas: Canvas, kv_canvas: Canvas, head: int) -> np.ndarray | str:
    """The reference mask, or the reason it is not built."""
    from maskir.ir import is_dynamic
    from maskir.reference import reference_mask

    if is_dynamic(pattern):
        return "data dependent: Segments and Routing are decided by run-time data"
    if canvas.size * kv_canvas.size > DENSE_PAIR_LIMIT:
        return (
            f"not built densely for {canvas.size} x {kv_canvas.size} pairs (limit 4096 x 4096): "
            "`maskir plan` counts allowed pairs from tiles"
        )
    return reference_mask(pattern, canvas, kv_canvas, head=head)


@command(
    "parse",
    SPEC,
    CANVAS,
    KV_CANVAS,
    argument("--head", type=int, default=0, help="head whose mask is shown, for PerHead patterns (default 0)"),
    argument("--png", type=Path, metavar="OUT.png", help="also write the mask as a picture (matplotlib)"),
)
def cmd_parse(args: argparse.Namespace) -> None:
    """Print a pattern's canonical text, canvas, density and an ASCII preview of its mask."""
    from maskir.viz import ascii_mask, save_mask_png

    pattern, canvas, kv_canvas = load_pattern(args.spec, args.canvas, args.kv_canvas)
    print(f"pattern: {pattern}")
    print(f"canvas:  {canvas}" + (f", kv {kv_canvas}" if kv_canvas != canvas else ""))
    mask = _dense_mask(pattern, canvas, kv_canvas, args.head)
    if isinstance(mask, str):
        print(f"density: {mask}")
        if args.png:
            raise ValueError(f"--png needs the dense mask, which is {mask}.")
        return
    allowed = int(mask.sum())
    print(f"density: {allowed / mask.size:.6f} ({allowed} of {canvas.size} x {kv_canvas.size} pairs, head {args.head})")
    print("preview: q down, kv across; ' ' none, '.' some, '#' all pairs of a cell allowed")
    print(ascii_mask(mask))
    if args.png:
        print(f"wrote {save_mask_png(mask, args.png, title=f'{pattern} on {canvas}')}")


def _block(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a block size is an int such as 64, got {text!r}") from None


PLAN_OPTIONS = (
    argument("--heads", type=int, default=1, help="number of query heads (PerHead patterns differ per head)"),
    argument("--block-q", type=_block, help="q tile size (default: chosen by cost from 64/128)"),
    argument("--block-kv", type=_block, help="kv tile size (default: chosen by cost from 32/64/128)"),
    argument("--layout", default="auto", help="token layout: auto (default), identity, tiled, grouped, window-major"),
)


TARGET_OPTIONS = (
    argument("--arch", choices=tuple(ARCHES), default="sm_90", help="GPU architecture to build for (default sm_90)"),
    argument(
        "--hw",
        help="datasheet entry plans are priced with (default: the arch's: "
        + ", ".join(f"{arch.name} {arch.hardware}" for arch in ARCHES.values())
        + "; also h100-pcie, h200, rtx4090)",
    ),
)


def _target(args: argparse.Namespace):
    """The ``KernelSpec`` of ``--arch``/``--hw`` with the command's head dim, dtype and kv heads."""
    from maskir.sim.target import KernelSpec

    sizes = {"head_dim": getattr(args, "head_dim", 128), "dtype": getattr(args, "dtype", "bf16")}
    kv_heads = getattr(args, "kv_heads", None) or args.heads
    return KernelSpec.for_arch(args.arch, hw=args.hw, kv_heads=kv_heads, **sizes)


def _plan(args: argparse.Namespace):
    from maskir.planner import plan

    pattern, canvas, kv_canvas = load_pattern(args.spec, args.canvas, args.kv_canvas)
    options = {"block_q": args.block_q, "block_kv": args.block_kv, "layout": args.layout}
    return plan(pattern, canvas, kv_canvas, heads=args.heads, spec=_target(args), **options)


@command("plan", SPEC, CANVAS, KV_CANVAS, *PLAN_OPTIONS, *TARGET_OPTIONS)
def cmd_plan(args: argparse.Namespace) -> None:
    """Plan a pattern into block-sparse tiles and print blocks, layout, tiles, density, efficiency and time."""
    print(_plan(args).describe())


@command(
    "show",
    SPEC,
    CANVAS,
    KV_CANVAS,
    *PLAN_OPTIONS,
    *TARGET_OPTIONS,
    argument("-o", "--output", type=Path, required=True, metavar="MAP.png", help="where to write the picture"),
    argument("--tokens", action="store_true", help="also draw the per-token mask (small canvases only)"),
    argument("--head", type=int, default=0, help="head to draw, for PerHead patterns (default 0)"),
)
def cmd_show(args: argparse.Namespace) -> None:
    """Draw a plan's block map (FULL/PARTIAL tiles per part, layout) as a PNG."""
    from maskir.planner.picture import draw_plan

    plan = _plan(args)
    print(f"wrote {draw_plan(plan, args.output, show_tokens=args.tokens, head=args.head)}")
    print(plan.describe())


@command(
    "simulate",
    SPEC,
    CANVAS,
    KV_CANVAS,
    *TARGET_OPTIONS,
    argument("--heads", type=int, default=16, help="query heads (default 16)"),
    argument("--kv-heads", type=int, default=None, help="kv heads (GQA; default: --heads)"),
    argument("--q-offset", type=int, default=0, help="absolute position of the first query (decode; default 0)"),
    argument(
        "--kernels",
        choices=("auto", "decode", "training"),
        default="auto",
        help="decode or training kernels (auto: decode for few queries against a long 1-D kv canvas)",
    ),
    argument("--head-dim", type=int, default=128, help="head dim (default 128)"),
    argument("--batch", type=int, default=1, help="batch size (default 1)"),
    argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="element type (default bf16)"),
    argument("--backward", action="store_true", help="also predict the backward pass"),
    argument("--compare", choices=("flex",), help="also print the simulation of FlexAttention's plan"),
)
def cmd_simulate(args: argparse.Namespace) -> None:
    """Predict time and speedup bounds from the plan and a hardware model, before running anything."""
    from maskir.sim import simulate

    pattern, canvas, kv_canvas = load_pattern(args.spec, args.canvas, args.kv_canvas)
    target = _target(args)
    options = {
        "hardware": target.hardware,
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "dtype": args.dtype,
        "backward": args.backward,
        "kv_canvas": kv_canvas,
    }
    decode = {
        "kv_heads": args.kv_heads,
        "q_offset": args.q_offset,
        "decode": {"auto": None, "decode": True}.get(args.kernels, False),
    }
    print(simulate(pattern, canvas, **options, **decode, spec=target))
    if args.compare == "flex":
        print()
        print(simulate(pattern, canvas, kernel="flex", **options))


@command(
    "bench",
    SPEC,
    CANVAS,
    argument("--documents", type=int, default=0, help="for Segments(): split the tokens into this many documents"),
    argument("--fwd-only", action="store_true", help="time the forward only"),
    argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)"),
    argument("--iters", type=int, default=30, help="timed calls per measurement (default 30)"),
)
def cmd_bench(args: argparse.Namespace) -> None:
    """Time maskir vs compiled flex_attention vs SDPA on a GPU (B=1, H=16, D=128, bf16); no GPU: predict."""
    import torch

    from maskir.bench.case import Case
    from maskir.bench.measure import environment, measure_case
    from maskir.bench.predict import dry_run

    pattern, canvas, _ = load_pattern(args.spec, args.canvas, None)
    case = Case("cli", "full", pattern, canvas, documents=args.documents)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: printing the plan and the simulator's prediction instead of timings")
        dry_run([case], "h100")
        return
    device_name = torch.cuda.get_device_name()
    options = argparse.Namespace(fwd_only=args.fwd_only, warmup=args.warmup, iters=args.iters)
    for row in measure_case(case, options, environment(device_name), hardware_for_device_name(device_name)):
        timing = {key: round(row[key], 3) for key in ("fwd_ms", "fwdbwd_ms", "useful_tflops") if key in row}
        print(f"{row['impl']:<8} {timing or row.get('skipped')}")


TVM_CUDA = "tvm-cuda"
"""``maskir source --backend tvm-cuda``: TVM's CUDA flavour, printed, never run (not a registered backend)."""


def _generated_text(args: argparse.Namespace, plan) -> str:
    """The kernel text the registered backend ``args.backend`` generates for ``plan`` on ``--arch``."""
    from maskir.codegen import backend as backends
    from maskir.runtime import backends as _registered  # noqa: F401 (registers the built-in backends)

    try:
        backend = backends.get(args.backend)
    except ValueError:
        known = ", ".join((*backends.names(), TVM_CUDA))
        raise ValueError(f"--backend must be one of {known}, got {args.backend!r}.") from None
    text = backend.generate(plan, _target(args)).source
    if text is None:
        raise ValueError(f"--backend {args.backend} generates no kernel text (it runs without generated kernels).")
    return text


@command(
    "source",
    SPEC,
    CANVAS,
    KV_CANVAS,
    *PLAN_OPTIONS,
    *TARGET_OPTIONS,
    argument(
        "--backend",
        default="triton",
        help="a registered backend that generates text (maskir.codegen.backend.names(): triton, the module "
        "configured for --arch (default); tvm, the TVMScript module for this CPU's llvm), or tvm-cuda: the CUDA C++ "
        "TVM generates for sm_90 (no GPU needed)",
    ),
    argument("--head-dim", type=int, default=128, help="head dim (default 128)"),
    argument("--kv-heads", type=int, help="key/value heads for GQA (default: --heads)"),
    argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="element type (default bf16)"),
)
def cmd_source(args: argparse.Namespace) -> None:
    """Print the kernel source maskir generates for a pattern (Triton, TVMScript, or TVM's CUDA C++)."""
    import torch

    plan = _plan(args)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    options = {"head_dim": args.head_dim, "dtype": dtype, "kv_heads": args.kv_heads or args.heads}
    if args.backend != TVM_CUDA:
        print(_generated_text(args, plan), end="")
        return
    from maskir.codegen.tvm.emit import generate_tvm_source

    generated = generate_tvm_source(plan, **options, target="cuda")
    from maskir.codegen.tvm.launch import cuda_source

    try:
        print(cuda_source(generated), end="")
    except ImportError as err:
        raise ValueError(str(err)) from None


@command(
    "check",
    SPEC,
    CANVAS,
    KV_CANVAS,
    *PLAN_OPTIONS,
    *TARGET_OPTIONS,
    argument("--head-dim", type=int, default=128, help="head dim (default 128)"),
    argument("--kv-heads", type=int, help="key/value heads for GQA (default: --heads)"),
    argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="element type (default bf16)"),
)
def cmd_check(args: argparse.Namespace) -> int:
    """Compile a pattern's Triton kernels for --arch (no GPU) and print shared memory, registers, spills and
    MMA kind per kernel; exit status 1 when a kernel spills or exceeds the per-block shared memory."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("maskir check compiles for a GPU target: run it without TRITON_INTERPRET=1.")
    import torch

    from maskir.codegen.triton.compile_check import check_plan, format_table, meta_tensors

    plan, target = _plan(args), _target(args)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    reports = check_plan(
        args.arch,
        plan,
        head_dim=args.head_dim,
        dtype=dtype,
        kv_heads=target.kv_heads,
        capability=target.capability,
        tensors=lambda names: meta_tensors(names, plan),
    )
    print(f"{plan.pattern} on {plan.canvas}: {target}")
    print(format_table(reports))
    return 0 if all(report.ok for report in reports) else 1


@command(
    "cp",
    SPEC,
    CANVAS,
    argument("--ranks", type=int, nargs="+", default=[8, 64], help="context-parallel world sizes (default 8 64)"),
    argument("--hw", default="h100", help="hardware and links: h100, h200, a100, b200 (NVLink + InfiniBand)"),
    argument("--heads", type=int, default=16, help="heads (default 16)"),
    argument("--head-dim", type=int, default=128, help="head dim (default 128)"),
    argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="element type (default bf16)"),
    argument("--documents", type=int, default=0, help="for Segments(): pack this many equal documents"),
)
def cmd_cp(args: argparse.Namespace) -> None:
    """Context parallelism: maskir's sharding beside torch's HeadTail and PTRR balancers and a ring
    all-gather of K/V (imbalance, bytes per forward, the simulator's per-rank step time)."""
    from maskir.distributed.compare import CpComparison, compare

    pattern, canvas, kv_canvas = load_pattern(args.spec, args.canvas, None)
    segments = None
    if args.documents:
        import torch

        if args.documents < 1 or canvas.size % args.documents:
            raise ValueError(f"--documents must divide the {canvas.size} tokens, got {args.documents}.")
        segments = (torch.arange(canvas.size, dtype=torch.int32) // (canvas.size // args.documents))[None]
    print(CpComparison.HEADER)
    print(CpComparison.RULE)
    for ranks in args.ranks:
        row = compare(
            pattern, canvas, ranks, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, hardware=args.hw,
            segments=segments,
        )  # fmt: skip
        print(row.row())


@command("cache", argument("action", choices=("ls", "clear", "info"), help="list, delete or summarise entries"))
def cmd_cache(args: argparse.Namespace) -> None:
    """List, clear or summarise the kernel cache ($MASKIR_CACHE_DIR, default ~/.cache/maskir).

    Only maskir's files (maskir-<key>.py/.json, their temp files, its private fallback folders) are
    read or deleted; other files in the folder are left alone and named as not maskir's."""
    from maskir.runtime.cache import DEFAULT_CACHE
    from maskir.runtime.cache_folder import fallback_folders, folder_problem

    root = DEFAULT_CACHE.root
    if args.action == "clear":
        before = len(fallback_folders())
        removed = DEFAULT_CACHE.clear()
        folders = before - len(fallback_folders())
        print(f"removed {removed} files from {root}" + (f" and {folders} fallback folders" if folders > 0 else ""))
    listing = DEFAULT_CACHE.scan()
    if args.action == "info":
        size = sum(_size(entry["path"]) for entry in listing.entries)
        print(f"cache {root}: {len(listing.entries)} valid entries, {size / 1024:.1f} KiB of kernel source")
        if listing.stale:
            print(f"{len(listing.stale)} stale or corrupt maskir files (maskir cache clear removes them)")
        problem = folder_problem(root)
        if problem:
            print(f"not used: {problem}; kernels go to a private temporary folder instead")
    if args.action == "ls":
        for entry in listing.entries:
            fields = entry.get("fields") if isinstance(entry.get("fields"), dict) else {}
            shown = [_printable(fields.get(name, "?")) for name in ("backend", "dtype", "pattern")]
            print(f"{entry['key']}  {shown[0]:<9} {shown[1]:<5} {shown[2]}")
    if listing.foreign:
        names = ", ".join(_printable(name) for name in listing.foreign)
        print(f"not maskir's (left alone): {names}")


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _printable(value) -> str:
    """Text from a cache file or folder, with control characters escaped (no terminal escapes)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(value))


def build_parser() -> argparse.ArgumentParser:
    """The ``maskir`` parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(prog="maskir", description="maskir: a compiler for sparse attention.")
    parser.add_argument("--version", action="version", version=f"maskir {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, arguments) in COMMANDS.items():
        summary = fn.__doc__.splitlines()[0]
        sub = subcommands.add_parser(name, help=summary, description=summary)
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(run=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``maskir ARGV``; returns the exit status (0 ok, 2 bad input, or the status a command returns)."""
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"maskir {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (maskir ... | head): stop quietly, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
