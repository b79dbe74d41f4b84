"""benchmarks/suite.py on CPU: its conventions, device naming, the markdown report and the dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import suite
from benchmarks.catalogue import case, cases
from maskir.bench import measure, predict
from maskir.bench.case import Case
from maskir.sim.target import hardware_for_device_name

ANCHORS = [
    # Rows of shared/anchors/h100_flex_sdpa.jsonl (N = 16384, H = 16, D = 128) and their allowed pairs.
    ({"pattern": "causal", "impl": "flex", "fwd_ms": 2.68937611579895, "useful_tflops": 408.86015540200526}, 0.5),
    ({"pattern": "causal", "impl": "flex", "fwdbwd_ms": 9.33516788482666, "useful_tflops": 412.26099259504224}, 0.5),
    ({"pattern": "dense", "impl": "sdpa_flash", "fwdbwd_ms": 23.5360164642334, "tflops": 327.0129168259268}, 1.0),
]


@pytest.mark.parametrize("row, causal_share", ANCHORS, ids=["causal_fwd", "causal_fwdbwd", "dense_sdpa_fwdbwd"])
def test_useful_tflops_follows_the_anchors_convention(row, causal_share):
    n, heads, head_dim = 16384, 16, 128
    allowed = heads * (n * (n + 1) // 2 if causal_share == 0.5 else n * n)
    backward = "fwdbwd_ms" in row
    ms = row["fwdbwd_ms" if backward else "fwd_ms"]
    expected = row.get("useful_tflops", row.get("tflops"))
    assert measure.useful_tflops(allowed, head_dim, ms, backward) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "device, hardware, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie", "h100-pcie"),
        ("NVIDIA H200", "h200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100", "a100"),
        ("NVIDIA GeForce RTX 3090", None, "geforce_rtx_3090"),
    ],
)
def test_device_names_map_to_the_simulator_hardware_and_a_file_name(device, hardware, slug):
    assert hardware_for_device_name(device) == hardware
    assert suite.device_slug(device) == slug


def _row(impl: str, key: str, ms: float, **extra) -> dict:
    return {"pattern": "swin_128x128_w8", "N": 16384, "density": 0.00390625, "impl": impl, key: ms, **extra}


def test_markdown_puts_maskir_flex_and_sdpa_of_a_pass_on_one_line_with_the_ratio():
    rows = [
        _row("maskir", "fwd_ms", 0.1, useful_tflops=140.0, sim_ms=0.09, efficiency=1.0, max_abs_err_out_vs_flex=0.002),
        _row("flex", "fwd_ms", 0.6, useful_tflops=14.0, create_block_mask_ms=36.9),
        _row("maskir", "fwdbwd_ms", 0.4, useful_tflops=123.0),
        _row("flex", "fwdbwd_ms", 2.0, useful_tflops=24.0),
        {"pattern": "swin_128x128_w8", "N": 16384, "density": 0.00390625, "impl": "sdpa", "skipped": "too big"},
    ]
    text = suite.markdown(rows, "test run")
    fwd = next(line for line in text.splitlines() if "| fwd |" in line)
    assert "| 0.100 | 0.600 | 6.00 | — | 140 | 14 | 0.090 | 1.000 | 0.0020 | — / 36.9 |" in fwd
    fwdbwd = next(line for line in text.splitlines() if "| fwd+bwd |" in line)
    assert "| 0.400 | 2.000 | 5.00 |" in fwdbwd
    assert "- swin_128x128_w8, sdpa: skipped (too big)" in text


def test_write_results_appends_measurements_and_rewrites_the_table(tmp_path):
    rows = [_row("maskir", "fwd_ms", 0.1), {"pattern": "x", "N": 1, "density": 1.0, "impl": "sdpa", "skipped": "why"}]
    suite.write_results(rows, tmp_path, "h100", "first")
    jsonl, md = suite.write_results(rows, tmp_path, "h100", "second")
    assert [json.loads(line)["impl"] for line in Path(jsonl).read_text().splitlines()] == ["maskir", "maskir"]
    assert Path(md).read_text().startswith("# second")
    assert (jsonl.name, md.name) == ("h100_suite.jsonl", "h100_suite.md")


def test_the_table_covers_the_run_so_far_while_the_jsonl_gets_only_new_rows(tmp_path):
    first, second = _row("maskir", "fwd_ms", 0.1), _row("flex", "fwd_ms", 0.6)
    suite.write_results([first], tmp_path, "h100", "run", table_rows=[first])
    jsonl, md = suite.write_results([second], tmp_path, "h100", "run", table_rows=[first, second])
    assert [json.loads(line)["impl"] for line in Path(jsonl).read_text().splitlines()] == ["maskir", "flex"]
    assert "| 0.100 | 0.600 | 6.00 |" in Path(md).read_text()


def test_results_and_budget_options(tmp_path):
    assert suite.parse_args(["--results", str(tmp_path)]).results == tmp_path
    assert suite.parse_args([]).results == suite.RESULTS
    assert suite.parse_args([]).budget_s is None and suite.parse_args(["--budget-s", "480"]).budget_s == 480.0


def test_dry_run_prints_plan_and_predictions_for_each_selected_entry(capsys):
    assert suite.main(["--dry-run", "--size", "small", "--only", "swin_128x128_w8", "documents16"]) == 0
    out = capsys.readouterr().out
    assert "swin_128x128_w8[small]: Blocks(8) on Canvas((32, 32))" in out
    assert "documents16[small]" in out and "16 equal documents" in out and "efficiency data-dependent" in out
    assert out.count("  plan: ") == 2 and out.count("maskir fwd ") == 2
    assert out.count("the tiles this data leaves open") == 1


def test_predictions_of_documents_price_only_the_tiles_their_data_leaves():
    documents = next(c for c in cases("small") if c.documents)
    causal = predict.predict(Case("causal", "small", documents.pattern.right, documents.canvas), "h100")
    gated = predict.predict(documents, "h100")
    assert gated.plan.tile_counts.computed_pairs < causal.plan.tile_counts.computed_pairs / 2
    assert gated.maskir_fwd_ms < causal.maskir_fwd_ms and gated.flex_fwd_ms < causal.flex_fwd_ms


def test_without_cuda_and_without_dry_run_the_suite_says_what_to_do(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the suite for real")
    assert suite.main(["--only", "causal"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("name", [pytest.param("swa_causal_w1024", marks=pytest.mark.slow), "documents16"])
def test_an_entry_runs_through_maskir_and_compiled_flex_on_a_cpu(monkeypatch, name):
    """The measuring flow of a GPU session (inputs with their run-time data, maskir's kernels, compiled
    flex over to_mask_mod), on a CPU at the small size, forward only and untimed: both agree."""
    monkeypatch.setattr(measure, "cuda_median_ms", lambda fn, warmup, iters: (fn(), 0.0)[1])  # run once, untimed
    monkeypatch.setattr(measure, "DTYPE", torch.float32)
    monkeypatch.setattr(measure, "HEADS", 2)
    monkeypatch.setattr(measure, "HEAD_DIM", 32)
    entry = case(name, "small")
    inputs = measure.make_inputs(entry, torch.device("cpu"))
    for tensor in (inputs.q, inputs.k, inputs.v):
        tensor.requires_grad_(False)  # flex has no backward on a CPU
    impls = [measure.build_maskir(entry, inputs, iters=1), measure.build_flex(entry, inputs, iters=1)]
    (ours,), (flex,) = (measure.results_of(impl, inputs, fwd_only=True) for impl in impls)
    torch.testing.assert_close(ours, flex, atol=1e-5, rtol=0)
    assert 0 < impls[1].extra["block_density"] < 1
    assert ("per_call_ms" in impls[0].extra) == bool(entry.documents)  # only a data-dependent plan works per call
