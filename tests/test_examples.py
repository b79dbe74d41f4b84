"""Each pattern-family example in examples/ runs: its main() checks maskir against the float64 reference
(SystemExit on a mismatch) and writes the plan's block map as a PNG."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "neighborhood_layers": ["neighborhood_2d.png", "neighborhood_3d.png"],
    "swin_trainable_bias": ["swin_shifted_windows.png"],
    "sliding_window_sinks": ["sliding_window_sinks.png"],
    "packed_documents": ["packed_documents.png"],
    "block_routing": ["block_routing.png"],
    "radial_video": ["radial_video.png"],
    "per_head": ["per_head_moa.png", "per_head_s2.png"],
    "score_mod_catalogue": ["score_mod_neighborhood.png"],
}


SLOW = {"score_mod_catalogue", "neighborhood_layers"}
"""The two longest examples (each builds a kernel per score_mod or per layer): run with ``-m slow``."""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXAMPLES])
def test_example_runs_checks_and_draws_its_block_map(name, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # as `python examples/NAME.py` sees its folder
    module = importlib.import_module(name)
    try:
        module.main(str(tmp_path))
    finally:
        sys.modules.pop(name, None)
    for picture in EXAMPLES[name]:
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
