"""Measured times as JSON lines (``benchmarks/anchors``, ``benchmarks/results``), read into one shape.

A line is one JSON object as in ``benchmarks/anchors/h100_flex_sdpa.jsonl``: ``pattern`` (a name from
``benchmarks/catalogue.py``), ``impl`` ("maskir", "flex", "sdpa_flash", ...), ``fwd_ms`` and/or
``fwdbwd_ms``, and optionally ``N``, ``H``, ``D``, ``B``, ``dtype``, ``device``. Missing shape fields take
the anchors' values (N=16384, H=16, D=128, B=1, bf16, an H100 SXM). Each time in a line is one
``Measurement``. Lines without ``impl`` are other benchmarks' records (``cpu_backends.jsonl`` names a
``backend`` on the CPU) and are not read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / "benchmarks" / "anchors" / "h100_flex_sdpa.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("fwd_ms", "fwdbwd_ms")
DEFAULTS = {"N": 16384, "H": 16, "D": 128, "B": 1, "dtype": "bf16", "device": "H100"}
DEVICES = {"H100": "h100", "H100 PCIe": "h100-pcie", "H200": "h200", "A100": "a100", "B200": "b200", "L40S": "l40s"}
"""GPU name (``Measurement.gpu``) -> ``maskir.sim`` hardware name."""
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
"""torch's dtype names (as ``benchmarks/suite.py`` writes them) -> the simulator's."""


@dataclass(frozen=True)
class Measurement:
    """One measured time of one implementation on one benchmark case."""

    pattern: str
    impl: str
    metric: str  # "fwd_ms" or "fwdbwd_ms"
    ms: float
    tokens: int
    heads: int
    head_dim: int
    batch: int
    dtype: str
    device: str
    source: str  # file:line

    @property
    def gpu(self) -> str:
        """The device without vendor, memory and form-factor words: "NVIDIA H100 80GB HBM3" -> "H100"."""
        words = re.split(r"[\s-]+", self.device.removeprefix("NVIDIA ").strip())
        return " ".join(w for w in words if not re.fullmatch(r"\d+GB|HBM\w*|SXM\d?", w, flags=re.IGNORECASE))

    @property
    def hardware(self) -> str | None:
        """The simulator's name for the device, or None when it has no model of it."""
        return DEVICES.get(self.gpu)


def default_paths() -> list[Path]:
    """The anchors, then every ``benchmarks/results/*.jsonl``."""
    return [ANCHORS, *sorted(RESULTS.glob("*.jsonl"))]


def load(paths: list[Path]) -> list[Measurement]:
    """Every time in ``paths``, in file order."""
    found = []
    for path in paths:
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            raw = {**DEFAULTS, **json.loads(line)}
            if "impl" not in raw:
                continue
            for metric in METRICS:
                if metric in raw:
                    found.append(
                        Measurement(
                            raw["pattern"],
                            raw["impl"],
                            metric,
                            float(raw[metric]),
                            int(raw["N"]),
                            int(raw["H"]),
                            int(raw["D"]),
                            int(raw["B"]),
                            DTYPES.get(raw["dtype"], raw["dtype"]),
                            str(raw["device"]),
                            f"{path.name}:{line_no}",
                        )
                    )
    return found
