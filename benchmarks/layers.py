"""maskir.nn layers beside the modules they replace, forward and forward + backward, in one run.

- ``NeighborhoodAttention2D/3D``: maskir's layer against NATTEN 0.21's module with the same weights. On a
  CPU NATTEN runs its flex backend (forward only: flex has no CPU backward) and maskir its TVM kernels;
  on a GPU both run their default backends.
- ``WindowAttention`` (shifted, with its bias table): maskir's one call over the map against the
  partition / roll / mask implementation of ``benchmarks/swin_reference.py``.

Each entry is built and run once before timing (maskir's first call plans and builds its kernels:
``build_s``), then the median of ``--repeats`` calls is taken. Appends one JSON object per (entry, module)
to ``benchmarks/results/layers.jsonl`` and prints a table with the ratio peer time / maskir time.

    python benchmarks/layers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskir.nn as mnn  # noqa: E402
from benchmarks.swin_reference import swin_window_attention  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "layers.jsonl"
EMBED_DIM, HEADS = 128, 4
CASES = [
    ("na2d_32x32_k7", "NeighborhoodAttention2D", (32, 32), dict(kernel_size=7)),
    ("na3d_8x16x16_k3x7x7", "NeighborhoodAttention3D", (8, 16, 16), dict(kernel_size=(3, 7, 7))),
    ("swin_32x32_w8_shifted", "WindowAttention", (32, 32), dict(window_size=8, shift_size=4)),
]
"""(name, layer, map shape, layer arguments): 1,024 to 2,048 tokens, 4 heads of 32 channels."""


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _timings(module: torch.nn.Module, x: torch.Tensor, repeats: int, backward: bool) -> tuple[dict, torch.Tensor]:
    """(build (first call) s, forward and forward + backward medians in ms (None where not run)), and the
    first call's output."""
    started = time.perf_counter()
    with torch.no_grad():
        first = module(x)
    build_s = time.perf_counter() - started
    with torch.no_grad():
        fwd_ms = _median_ms(lambda: module(x), repeats)
    fwdbwd_ms = None
    if backward:
        leaf = x.clone().requires_grad_()
        fwdbwd_ms = _median_ms(lambda: module(leaf).sum().backward(), repeats)
    # unrounded: a peer's first call can take under half a millisecond (rounded to 3 decimals it read 0.0)
    timings = {"build_s": build_s, "fwd_ms": fwd_ms, "fwdbwd_ms": fwdbwd_ms}
    return timings, first


class SwinReference(torch.nn.Module):
    """The partition / roll Swin implementation as a module over a WindowAttention's weights."""

    def __init__(self, layer: mnn.WindowAttention):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swin_window_attention(self.layer, x)


def peers(layer_name: str, arguments: dict, device: str) -> list[tuple[str, torch.nn.Module, bool]]:
    """(module name, module, times backward) for maskir's layer and its peer, sharing weights."""
    backend = "tvm" if device == "cpu" else "auto"
    if layer_name == "WindowAttention":
        layer = mnn.WindowAttention(EMBED_DIM, num_heads=HEADS, backend=backend, **arguments)
        return [("maskir", layer, True), ("swin_reference", SwinReference(layer), True)]
    import natten

    layer = getattr(mnn, layer_name)(EMBED_DIM, HEADS, backend=backend, **arguments)
    peer = getattr(natten, layer_name)(EMBED_DIM, HEADS, **arguments)
    peer.load_state_dict(layer.state_dict())
    return [("maskir", layer, True), ("natten", peer, device != "cpu")]


def _commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or None


def measure(name: str, layer_name: str, shape: tuple[int, ...], arguments: dict, repeats: int, device: str) -> list:
    """The rows of one entry: maskir's layer and its peer on the same input, with the output difference."""
    torch.manual_seed(0)
    x = torch.randn(1, *shape, EMBED_DIM, device=device)
    rows, outputs = [], {}
    for module_name, module, backward in peers(layer_name, arguments, device):
        timings, outputs[module_name] = _timings(module.to(device), x, repeats, backward)
        rows.append({"entry": name, "module": module_name, **timings})
    maskir_out, peer_out = outputs.values()
    environment = {
        "layer": layer_name,
        "shape": list(shape),
        "embed_dim": EMBED_DIM,
        "heads": HEADS,
        "dtype": "fp32",
        "repeats": repeats,
        "max_abs_diff_vs_peer": float((maskir_out - peer_out).abs().max()),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "natten": _version("natten"),
        "commit": _commit(),
    }
    return [{**row, **environment} for row in rows]


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/layers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    parser.add_argument("--only", nargs="*", default=None, help="entry names to run (default all)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSONL to append to (default {RESULTS})")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["MASKIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="maskir-layers-bench-")  # builds from scratch
    args.results.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'entry':<24}{'module':<16}{'build s':>9}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peer/maskir fwd':>17}")
    with args.results.open("a", encoding="utf-8") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NATTEN's flex backend warns on a CPU that it runs unfused
        for name, layer_name, shape, arguments in CASES:
            if args.only is not None and name not in args.only:
                continue
            rows = measure(name, layer_name, shape, arguments, args.repeats, device)
            for row in rows:
                out.write(json.dumps(row) + "\n")
                out.flush()
                ratio = f"{rows[1]['fwd_ms'] / rows[0]['fwd_ms']:.2f}x" if row is rows[0] else ""
                print(
                    f"{name:<24}{row['module']:<16}{row['build_s']:>9.2f}{row['fwd_ms']:>10.1f}"
                    f"{_ms(row['fwdbwd_ms']):>12}{ratio:>17}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
