"""The ``maskir`` command line, its ASCII preview (maskir.viz) and the quickstart example."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskir import Canvas, Causal, Neighborhood, PerHead, Sink, Window
from maskir.cli import main
from maskir.reference import reference_mask
from maskir.viz import ascii_mask, save_mask_png

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_the_parse_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "parse" in capsys.readouterr().out


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "maskir 0.1.0"


def test_parse_prints_canonical_form_canvas_and_density(capsys):
    status, out, err = run_cli(capsys, "parse", "Window(2,0)|Sink( 1 )", "--canvas", "8")
    mask = reference_mask(Window(2, 0) | Sink(1), Canvas(8))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "pattern: (Window(2, 0) | Sink(1))"
    assert lines[1] == "canvas:  Canvas((8,))"
    assert lines[2] == f"density: {mask.mean():.6f} ({mask.sum()} of 8 x 8 pairs, head 0)"


def test_parse_prints_the_ascii_preview_of_the_mask(capsys):
    _, out, _ = run_cli(capsys, "parse", "Neighborhood(3)", "--canvas", "6x6")
    assert ascii_mask(reference_mask(Neighborhood(3), Canvas((6, 6)))) in out


def test_parse_takes_a_separate_kv_canvas(capsys):
    status, out, _ = run_cli(capsys, "parse", "Causal()", "--canvas", "4", "--kv-canvas", "8")
    assert status == 0
    assert "canvas:  Canvas((4,)), kv Canvas((8,))" in out
    assert "density: 0.312500 (10 of 4 x 8 pairs, head 0)" in out


def test_parse_shows_the_chosen_head_of_a_per_head_pattern(capsys):
    _, out, _ = run_cli(capsys, "parse", "PerHead([Causal(), Window(0, 0)])", "--canvas", "4", "--head", "1")
    assert "density: 0.250000 (4 of 4 x 4 pairs, head 1)" in out
    assert ascii_mask(reference_mask(PerHead([Causal(), Window(0, 0)]), Canvas(4), head=1)) in out


def test_parse_reads_a_toml_spec_file_with_its_canvas(capsys, tmp_path):
    spec = tmp_path / "causal.toml"
    spec.write_text('pattern = "Causal()"\ncanvas = [2, 4]\n')
    status, out, _ = run_cli(capsys, "parse", str(spec))
    assert status == 0
    assert out.splitlines()[:2] == ["pattern: Causal()", "canvas:  Canvas((2, 4))"]


def test_parse_canvas_flag_overrides_the_spec_file(capsys, tmp_path):
    spec = tmp_path / "causal.toml"
    spec.write_text('pattern = "Causal()"\ncanvas = 8\n')
    _, out, _ = run_cli(capsys, "parse", str(spec), "--canvas", "16")
    assert out.splitlines()[1] == "canvas:  Canvas((16,))"


def test_parse_above_the_dense_limit_points_to_maskir_plan(capsys):
    status, out, _ = run_cli(capsys, "parse", "Causal()", "--canvas", "8192")
    assert status == 0
    assert "maskir plan" in out.splitlines()[2]
    assert "+--" not in out


def test_parse_of_a_dynamic_pattern_says_density_is_data_dependent(capsys):
    status, out, _ = run_cli(capsys, "parse", "Segments() & Causal()", "--canvas", "64")
    assert status == 0
    assert out.splitlines()[2].startswith("density: data dependent")


def test_parse_png_writes_a_picture(capsys, tmp_path):
    target = tmp_path / "mask.png"
    status, out, _ = run_cli(capsys, "parse", "Causal()", "--canvas", "32", "--png", str(target))
    assert status == 0
    assert out.splitlines()[-1] == f"wrote {target}"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["parse", "Window(1,", "--canvas", "8"], "invalid syntax"),
        (["parse", "Window(1, 0).left", "--canvas", "8"], "attribute access"),
        (["parse", "Neighborhood(7)", "--canvas", "4x4"], "exceeds the canvas extent"),
        (["parse", "Causal()"], "needs --canvas"),
        (["parse", "missing.toml"], "No such file"),
        (["parse", "Causal()", "--canvas", "8192", "--png", "big.png"], "--png needs the dense mask"),
    ],
    ids=["syntax", "attribute", "canvas-too-small", "no-canvas", "no-file", "png-too-big"],
)
def test_parse_reports_bad_input_in_one_line_with_status_2(capsys, argv, message):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2
    assert err.startswith("maskir parse: error: ") and err.count("\n") == 1
    assert message in err


def test_bad_canvas_text_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["parse", "Causal()", "--canvas", "12a"])
    assert exit_info.value.code == 2
    assert "Cannot read canvas '12a'" in capsys.readouterr().err


def test_python_dash_m_maskir_exits_2_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "maskir", "parse", "Causal(", "--canvas", "8"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("maskir parse: error: col 7: invalid syntax")
    assert "Traceback" not in result.stderr


# -- the preview -----------------------------------------------------------------------------------


def test_ascii_mask_marks_empty_partial_and_full_cells():
    causal = reference_mask(Causal(), Canvas(4))  # 2x2 cells: upper left 3 of 4, upper right 0, lower left 4
    assert ascii_mask(causal, width=2, height=2) == "+--+\n|. |\n|#.|\n+--+"


def test_ascii_mask_keeps_one_character_per_token_when_the_mask_is_small():
    mask = np.eye(3, dtype=bool)
    assert ascii_mask(mask) == "+---+\n|#  |\n| # |\n|  #|\n+---+"


def test_ascii_mask_pools_uneven_last_cells():
    mask = np.ones((5, 5), dtype=bool)
    mask[4, 4] = False  # the last cell of a 3-cell pooling holds one token
    assert ascii_mask(mask, width=3, height=3) == "+---+\n|###|\n|###|\n|## |\n+---+"


def test_ascii_mask_rejects_a_mask_that_is_not_2d_bool():
    with pytest.raises(ValueError, match="2-D bool mask"):
        ascii_mask(np.zeros((4, 4), dtype=np.int64))


def test_save_mask_png_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    save_mask_png(np.eye(4, dtype=bool), tmp_path / "eye.png")
    assert matplotlib.get_backend() == backend
    assert (tmp_path / "eye.png").stat().st_size > 0


# -- the examples ----------------------------------------------------------------------------------


def test_quickstart_example_runs(capsys):
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    quickstart.main()
    out = capsys.readouterr().out
    assert out.startswith("pattern: Neighborhood(7)  (parses back equal: True)")
    assert ascii_mask(reference_mask(quickstart.PATTERN, quickstart.CANVAS)) in out


@pytest.mark.slow  # the same training under torch.compile: test_score_mod_grads' Swin block example
def test_compiled_block_example_trains_under_torch_compile_in_a_fresh_process(tmp_path):
    """examples/compiled_block.py: fullgraph torch.compile builds the kernels while tracing; after three
    SGD steps the compiled and the eager block give the same loss."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["MASKIR_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compiled_block.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [float(word) for word in done.stdout.split("loss after training: ")[1].split(" vs ")]
    assert len(done.stdout.splitlines()) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_plan_prints_blocks_layout_tiles_and_efficiency(capsys):
    code, out, _ = run_cli(
        capsys, "plan", "Neighborhood(5)", "--canvas", "32x32", "--block-q", "16", "--block-kv", "16"
    )
    assert code == 0
    assert "blocks 16x16" in out and "layout" in out and "efficiency" in out and "planned in" in out


def test_plan_rejects_a_bad_block_with_one_line(capsys):
    code, _, err = run_cli(capsys, "plan", "Causal()", "--canvas", "64", "--block-q", "3")
    assert code == 2 and "block_q" in err and len(err.strip().splitlines()) == 1


def test_show_writes_the_block_map_png(capsys, tmp_path):
    path = tmp_path / "map.png"
    code, out, _ = run_cli(capsys, "show", "Blocks(8)", "--canvas", "32x32", "--block-q", "16", "-o", str(path))
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(path) in out


def test_simulate_prints_times_bounds_and_the_flex_comparison(capsys):
    code, out, _ = run_cli(capsys, "simulate", "Blocks(8)", "--canvas", "64x64", "--compare", "flex", "--backward")
    assert code == 0
    assert out.count("forward") >= 2 and "backward" in out and "speed of light" in out and "flex on h100" in out


def test_simulate_names_the_valid_hardware_on_a_bad_name(capsys):
    code, _, err = run_cli(capsys, "simulate", "Causal()", "--canvas", "1024", "--hw", "tpu")
    assert code == 2 and "h100" in err


def test_bench_without_a_gpu_prints_the_plan_and_prediction(capsys):
    code, out, _ = run_cli(capsys, "bench", "Window(255, 0)", "--canvas", "4096")
    assert code == 0 and "no CUDA GPU" in out and "simulated" in out


@pytest.mark.parametrize(
    "backend, needle",
    [
        ("triton", "def _fwd("),
        ("tvm", "def fwd_0("),
        ("tvm-cuda", "__global__ void __launch_bounds__(64) fwd_0_kernel("),
    ],
)
def test_source_prints_each_backends_generated_kernels(capsys, backend, needle):
    if backend.startswith("tvm-"):
        pytest.importorskip("tvm")
    argv = ["source", "Neighborhood(3)", "--canvas", "16x16", "--heads", "2", "--head-dim", "64", "--backend", backend]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# maskir") or backend == "tvm-cuda"
    assert needle in out


def test_cache_info_ls_and_clear(capsys, tmp_path, monkeypatch):
    from maskir.runtime.cache import KernelCache

    monkeypatch.setenv("MASKIR_CACHE_DIR", str(tmp_path))
    KernelCache().get_or_build({"pattern": "Causal()", "backend": "triton"}, lambda: ("X = 1\n", {}))
    assert "1 valid entries" in run_cli(capsys, "cache", "info")[1]
    assert "Causal()" in run_cli(capsys, "cache", "ls")[1]
    assert "removed 2 files" in run_cli(capsys, "cache", "clear")[1]
    assert run_cli(capsys, "cache", "ls")[1] == ""
