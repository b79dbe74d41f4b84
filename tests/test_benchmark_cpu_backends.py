"""benchmarks/cpu_backends.py: one row per (pattern, backend) with build time, timings and the error."""

import json

import pytest

from benchmarks import cpu_backends


def test_a_row_times_a_backend_and_checks_it_against_the_reference():
    pytest.importorskip("tvm")
    row = cpu_backends.measure("swa", "Window(7, 0)", (64,), "tvm", repeats=1)
    assert row["backend"] == "tvm" and row["canvas"] == [64]
    assert row["build_s"] > 0 and row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
    assert row["max_abs_err_vs_reference"] < 2e-3
    json.dumps(row)  # one JSONL line


def test_every_case_holds_1024_tokens_of_valid_spec_text():
    import maskir

    for _, spec, shape in cpu_backends.CASES:
        maskir.parse(spec)
        assert maskir.Canvas(shape).size == 1024
