"""benchmarks/cpu_backends.py: per suite entry, maskir's TVM backend and its peers timed side by side."""

import json

import pytest
import torch

from benchmarks import cpu_backends
from benchmarks.catalogue import CATALOGUE


def test_the_timed_suite_is_the_design_suite_at_4096_tokens():
    assert {CATALOGUE[name][cpu_backends.SIZE].tokens for name in CATALOGUE} == {4096}


def test_a_row_times_maskir_and_sdpa_interleaved_with_ratios():
    pytest.importorskip("tvm")
    case = CATALOGUE["swin_128x128_w8"]["small"]
    row = cpu_backends.measure(case, heads=2, head_dim=16, repeats=2, peers=("sdpa",))
    assert row["pattern"] == "swin_128x128_w8" and row["tokens"] == 1024
    assert row["maskir_fwd_ms"] > 0 and row["maskir_fwdbwd_ms"] > 0 and row["maskir_build_s"] > 0
    assert row["sdpa_fwd_ratio"] == round(row["sdpa_fwd_ms"] / row["maskir_fwd_ms"], 2)
    assert row["sdpa_max_abs_diff"] < 1e-4  # SDPA with the same mask computes the same attention
    assert "flex_fwd_ms" not in row
    json.dumps(row)  # one JSONL line
    text = cpu_backends.table([row])
    assert text.splitlines()[2].startswith("| swin_128x128_w8 |") and "—" in text  # no flex column value


def test_sdpa_mask_is_the_patterns_allowed_pairs():
    from maskir.reference import reference_mask

    case = CATALOGUE["dilated_w256_d4"]["small"]
    inputs = cpu_backends.make_inputs(case, heads=1, head_dim=8)
    mask = cpu_backends.dense_mask(case, inputs)
    assert torch.equal(mask[0, 0], torch.as_tensor(reference_mask(case.pattern, case.canvas)))


def test_the_table_goes_between_the_readme_markers(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = cpu_backends.README_MARKERS
    readme.write_text(f"intro\n{begin}\nold\n{end}\noutro\n")
    cpu_backends.put_in_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{begin}\n| new |\n{end}\noutro\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        cpu_backends.put_in_readme(plain, "| new |")


def test_a_peer_failing_its_first_call_is_tried_once_more():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CppCompileError: C++ compile error\ndetails")
        return torch.ones(1)

    row: dict = {}
    assert torch.equal(cpu_backends._warm_up("flex", flaky, row), torch.ones(1)) and len(calls) == 2
    assert row["flex_retried"] is True


def test_a_peer_failing_twice_is_reported_and_maskir_errors_propagate():
    def broken():
        raise RuntimeError("no kernel\ndetails")

    row: dict = {}
    assert cpu_backends._warm_up("natten", broken, row) is None
    assert row["natten_error"] == "RuntimeError: no kernel"
    with pytest.raises(RuntimeError, match="no kernel"):
        cpu_backends._warm_up("maskir", broken, {})
