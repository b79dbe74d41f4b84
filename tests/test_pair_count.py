"""Plan.stats / describe count allowed pairs in closed form per run of tiles (maskir.planner.pair_count):
exact against the brute-force mask on any box, and O(tiles) on a 2**31-token causal window."""

import threading

import numpy as np
import pytest
import torch

import maskir
from maskir import Canvas, Causal, Dilated, Distance, Full, Prefix, Sink, SlidingWindow, Window
from maskir.ir import INT_LIMIT, Global
from maskir.planner import plan
from maskir.planner.pair_count import count_pairs
from maskir.reference import reference_mask

FAMILY = [
    Full(),
    Causal(),
    Causal(-3),
    Causal(INT_LIMIT),
    Causal(-INT_LIMIT),
    Window(3, 2),
    Window(6, 0) & Causal(),
    Sink(4) | Window(7, 0),
    (Window(6, 0) | Sink(2)) & Causal(),
    Distance(0, 2, 5),
    Distance(0, 0, 3),
    Distance(0, 1, INT_LIMIT),
    ~Causal(),
    Causal() - Window(3, 0),
    Global((1, 2, 3, 9)) | Causal(-5),
    Prefix(5) | Causal(),
]


@pytest.mark.parametrize("pattern", FAMILY, ids=str)
def test_closed_form_counts_equal_the_mask_on_random_boxes(pattern):
    n_q, n_kv = 37, 29
    canvas, kv_canvas = Canvas(n_q), Canvas(n_kv)
    mask = reference_mask(pattern, canvas, kv_canvas)
    rng = np.random.default_rng(0)
    q0, q1 = np.sort(rng.integers(0, n_q + 1, (2, 64)), axis=0)
    k0, k1 = np.sort(rng.integers(0, n_kv + 1, (2, 64)), axis=0)
    expected = sum(int(mask[a:b, c:d].sum()) for a, b, c, d in zip(q0, q1, k0, k1))
    assert count_pairs(pattern, canvas, kv_canvas, q0, q1, k0, k1) == expected


@pytest.mark.parametrize("pattern", [Dilated(2, 2), Causal(dim=1), Window(1, 1) & Dilated(1, 3)], ids=str)
def test_patterns_outside_the_family_fall_back_to_evaluation(pattern):
    canvas = Canvas((6, 8))
    assert count_pairs(pattern, canvas, canvas, [0], [48], [0], [48]) is None
    assert plan(pattern, canvas, block_q=16, block_kv=16).stats.allowed_pairs == int(
        reference_mask(pattern, canvas).sum()
    )


def run_with_deadline(fn, seconds):
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"took longer than {seconds} s"
    return result["value"]


def test_describe_of_a_causal_window_on_two_to_the_31_tokens_is_cheap():
    n, window = 2**31, 1024
    compiled = maskir.compile(
        SlidingWindow(window) & Causal(),
        n,
        heads=2,
        head_dim=16,
        dtype=torch.float32,
        device="cpu",
        backend="reference",
        block_q=2**16,
        block_kv=2**16,
    )
    text = run_with_deadline(compiled.describe, 30)
    allowed = 2 * (n * window - window * (window - 1) // 2)  # 2 heads; the first rows see fewer keys
    assert f"allowed {allowed:,}" in text
    assert compiled.plan.stats.allowed_pairs == allowed
