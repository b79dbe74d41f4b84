"""The simulator against measured H100 times (benchmarks/anchors) and the fit that sets its constants."""

import shutil
from dataclasses import replace

import pytest

from benchmarks.fit_sim import FITTED, HARDWARE_PY, fit, load_rows, main, write_constants
from benchmarks.measurements import ANCHORS
from maskir.sim.hardware import FLEX

TOLERANCE = 0.25
"""DESIGN.md: predictions within +-25% of measured."""


@pytest.fixture(scope="module")
def anchor_rows():
    rows, skipped = load_rows([ANCHORS], "flex")
    return rows, skipped


def test_anchor_rows_are_the_flex_measurements(anchor_rows):
    rows, skipped = anchor_rows
    assert [(r.name, r.metric) for r in rows] == [
        ("dense", "fwd_ms"),
        ("causal", "fwd_ms"),
        ("causal", "fwdbwd_ms"),
        ("swa_causal_w1024", "fwd_ms"),
        ("swa_causal_w1024", "fwdbwd_ms"),
        ("na2d_128x128_k17", "fwd_ms"),
        ("na2d_128x128_k17", "fwdbwd_ms"),
        ("swin_128x128_w8", "fwd_ms"),
    ]
    assert len(skipped) == 3 and all("sdpa_flash" in note for note in skipped)


def test_flex_predictions_are_within_25_percent_of_every_anchor(anchor_rows):
    rows, _ = anchor_rows
    errors = {f"{r.name} {r.metric}": r.predict(FLEX) / r.measured.ms - 1 for r in rows}
    assert all(abs(e) <= TOLERANCE for e in errors.values()), errors


def test_hardware_py_holds_the_fitted_constants(anchor_rows):
    rows, _ = anchor_rows
    start = replace(FLEX, fwd_efficiency=0.3, bwd_efficiency=0.3, mask_ops_per_pair=100.0)
    fitted = fit(rows, start)
    for name in FITTED:
        assert getattr(fitted, name) == pytest.approx(getattr(FLEX, name), rel=0.02), name


def test_write_constants_rewrites_only_the_flex_block(tmp_path):
    copy = tmp_path / "hardware.py"
    shutil.copy(HARDWARE_PY, copy)
    write_constants(replace(FLEX, fwd_efficiency=0.123, bwd_efficiency=0.456, mask_ops_per_pair=7.0), copy)
    before, after = HARDWARE_PY.read_text().splitlines(), copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert [b.strip() for _, b in changed] == ["fwd_efficiency=0.123,", "bwd_efficiency=0.456,", "mask_ops_per_pair=7,"]


def test_fit_without_rows_says_so(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["--fit", str(empty), "--validate"]) == 1
    assert "No flex rows to fit" in capsys.readouterr().out


def test_data_dependent_rows_are_skipped_not_fitted(tmp_path):
    rows = tmp_path / "documents.jsonl"
    rows.write_text('{"pattern": "documents16", "impl": "flex", "N": 16384, "fwd_ms": 0.4}\n')
    fitted, skipped = load_rows([rows], "flex")
    assert fitted == [] and "data-dependent" in skipped[0]


def test_records_of_other_benchmarks_are_not_read_as_timings(tmp_path):
    """cpu_backends.jsonl rows name a CPU backend, not an impl; they must not pass for H100 times."""
    rows = tmp_path / "mixed.jsonl"
    rows.write_text(
        '{"pattern": "causal", "backend": "tvm", "fwd_ms": 20.0}\n'
        '{"pattern": "causal", "impl": "flex", "N": 16384, "fwd_ms": 2.7}\n'
    )
    fitted, skipped = load_rows([rows], "flex")
    assert [row.measured.ms for row in fitted] == [2.7] and skipped == []


def test_the_fit_runs_on_the_repository_s_own_results(capsys):
    assert main([]) == 0
    assert "## Fit of flex" in capsys.readouterr().out
