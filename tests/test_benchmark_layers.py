"""benchmarks/layers.py: maskir's layers and their peers share weights, agree, and give one row each."""

import json

import pytest

from benchmarks import layers


@pytest.mark.parametrize(
    "layer_name, shape, arguments",
    [
        ("WindowAttention", (8, 8), dict(window_size=4, shift_size=2)),
        ("NeighborhoodAttention2D", (8, 8), dict(kernel_size=3)),
    ],
)
def test_an_entry_times_maskir_and_its_peer_on_the_same_weights(layer_name, shape, arguments, monkeypatch):
    pytest.importorskip("tvm")
    monkeypatch.setattr(layers, "EMBED_DIM", 32)
    rows = layers.measure("tiny", layer_name, shape, arguments, repeats=1, device="cpu")
    assert [row["module"] for row in rows] == ["maskir", "swin_reference" if "Window" in layer_name else "natten"]
    assert all(row["fwd_ms"] > 0 and row["build_s"] > 0 for row in rows)
    assert rows[0]["fwdbwd_ms"] > 0  # NATTEN has no backward on a CPU (flex): None there
    assert rows[0]["max_abs_diff_vs_peer"] < 1e-4
    json.dumps(rows)  # JSONL lines
