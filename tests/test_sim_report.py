"""benchmarks/report.py: measured and simulated times side by side, and what is missing, from JSON lines."""

import json

import pytest

from benchmarks.catalogue import HEADS, case
from benchmarks.measurements import ANCHORS, load
from benchmarks.report import latest, main
from maskir.sim import simulate


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the anchors plus a results file with two maskir causal rows (the later one wins)."""
    out = tmp_path_factory.mktemp("report")
    rows = out / "maskir.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(
                {"pattern": "causal", "impl": "maskir", "N": 16384, "fwd_ms": ms, "device": "NVIDIA H100 80GB HBM3"}
            )
            for ms in (9.0, 2.0)
        )
    )
    assert main(["--out", str(out / "report"), str(ANCHORS), str(rows)]) == 0
    return (out / "report.md").read_text(), out


def _row(markdown: str, section: str, pattern: str) -> list[str]:
    table = markdown.split(section, 1)[1]
    line = next(line for line in table.splitlines() if line.startswith(f"| {pattern} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_measured_times_fill_their_columns_and_the_last_row_wins(report):
    markdown, _ = report
    cells = _row(markdown, "H100, forward (ms)", "causal")
    assert cells[1:5] == ["2.689", "2.000", "3.388", "1.34x"]  # flex, maskir, SDPA, speedup
    causal = case("causal")
    predicted = simulate(causal.pattern, causal.canvas, heads=HEADS).fwd_ms
    assert cells[6] == f"{predicted:.3f} ({predicted / 2.0 - 1:+.0%})"  # the simulated maskir time, error vs 2.000


def test_unmeasured_times_are_dashes_never_numbers(report):
    markdown, _ = report
    cells = _row(markdown, "H100, forward (ms)", "dilated_w256_d4")
    assert cells[1:5] == ["—", "—", "—", "—"]
    assert "(—)" in cells[5] and "(—)" in cells[6]  # predicted, with no error to show


def test_missing_section_lists_what_a_gpu_run_must_measure(report):
    markdown, _ = report
    forward = next(line for line in markdown.splitlines() if line.startswith("- maskir forward:"))
    assert "causal," not in forward and "dense" in forward and "swin_128x128_w8" in forward
    assert "- flex forward + backward: dense" in markdown


def test_chart_is_written_next_to_the_markdown(report):
    markdown, out = report
    png = out / "report_h100.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![H100](report_h100.png)" in markdown


def test_latest_keeps_catalogue_sizes_only(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"pattern": "causal", "impl": "flex", "N": 4096, "fwd_ms": 1.0}) + "\n")
    assert latest(load([rows])) == {}
