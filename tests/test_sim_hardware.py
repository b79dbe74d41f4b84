"""Hardware table and kernel constants (maskir.sim.hardware): lookups, errors, datasheet consistency."""

import pytest

from maskir.sim.hardware import DTYPES, HARDWARE, KERNELS, dtype_info, get_hardware, get_kernel

EXPECTED = ("h100", "h100-pcie", "h200", "a100", "b200", "l40s", "rtx4090")


def test_table_has_the_documented_gpus():
    assert set(EXPECTED) <= set(HARDWARE)
    assert all(name == hw.name for name, hw in HARDWARE.items())


def test_unknown_hardware_lists_the_valid_names():
    with pytest.raises(ValueError, match="Unknown hardware 'h1000'; valid names: h100, h100-pcie, h200"):
        get_hardware("h1000")


def test_unknown_kernel_and_dtype_list_the_valid_names():
    with pytest.raises(ValueError, match="valid names: maskir, flex"):
        get_kernel("sdpa")
    with pytest.raises(ValueError, match="valid names: bf16, fp16, fp32"):
        dtype_info("int8")


def test_instances_pass_through_lookup():
    assert get_hardware(HARDWARE["a100"]) is HARDWARE["a100"]
    assert get_kernel(KERNELS["flex"]) is KERNELS["flex"]


@pytest.mark.parametrize("hw", HARDWARE.values(), ids=lambda hw: hw.name)
def test_fp32_peak_is_whole_lanes_per_sm_at_the_boost_clock(hw):
    """Transcription check: fp32 TFLOP/s = SMs x lanes x 2 x clock with 64 (Ampere GA100) or 128 lanes."""
    lanes = hw.fp32_tflops * 1e12 / (2 * hw.sms * hw.clock_ghz * 1e9)
    assert min(abs(lanes - 64), abs(lanes - 128)) < 0.5


@pytest.mark.parametrize("hw", HARDWARE.values(), ids=lambda hw: hw.name)
def test_per_sm_rates_divide_the_chip_rates(hw):
    assert hw.tensor_flops_per_sm * hw.sms == pytest.approx(hw.tensor_tflops * 1e12)
    assert hw.hbm_bytes_per_sm * hw.sms == pytest.approx(hw.hbm_tbps * 1e12)


def test_h100_matches_toolchain_measurements():
    """TOOLCHAIN.md: ~800 TFLOP/s measured bf16 matmul and ~3 TB/s copy on the project's H100: below peak."""
    h100 = HARDWARE["h100"]
    assert 800 < h100.tensor_tflops < 1000 and 3.0 < h100.hbm_tbps < 3.5
    assert h100.sms == 132


def test_fp32_runs_at_half_the_tensor_rate_with_four_byte_elements():
    assert DTYPES["bf16"] == DTYPES["fp16"] == (2, 1.0)
    assert DTYPES["fp32"] == (4, 0.5)


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=lambda k: k.name)
def test_kernel_constants_are_physical(kernel):
    assert 0 < kernel.fwd_efficiency <= 1 and 0 < kernel.bwd_efficiency <= 1
    assert kernel.mask_ops_per_pair >= 0 and kernel.tile_cycles >= 0
    assert kernel.launch_us > 0
