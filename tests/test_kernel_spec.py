"""``KernelSpec``: one description of the target, built once by the runtime and read by the planner's cost and
the Triton backend's launch configuration (maskir.sim.target, maskir.runtime.target)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from maskir import Canvas, Causal, patterns
from maskir.planner import plan
from maskir.planner.cost import cost_for, plan_cost
from maskir.runtime.target import device_spec
from maskir.sim.cost import plan_cost as simulated_ms
from maskir.sim.hardware import HARDWARE
from maskir.sim.target import ARCHES, KernelSpec, hardware_for_device_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "arch, capability, shared, hardware",
    [
        ("sm_80", (8, 0), 166912, "a100"),
        ("sm_86", (8, 6), 101376, "a6000"),
        ("sm_89", (8, 9), 101376, "l40s"),
        ("sm_90", (9, 0), 232448, "h100"),
        ("sm_100", (10, 0), 232448, "b200"),
    ],
)
def test_arch_spec_has_the_programming_guide_shared_memory_limit(arch, capability, shared, hardware):
    spec = KernelSpec.for_arch(arch)
    assert (spec.capability, spec.shared_memory_per_block, spec.hardware.name, spec.arch) == (
        capability,
        shared,
        hardware,
        arch,
    )
    assert spec.sms == HARDWARE[hardware].sms


def test_arch_spec_takes_another_datasheet_entry():
    assert KernelSpec.for_arch("sm_89", hw="rtx4090").hardware is HARDWARE["rtx4090"]


def test_unknown_arch_lists_the_valid_names():
    with pytest.raises(ValueError, match="Unknown arch 'sm_75'; valid names: sm_80, sm_86, sm_89, sm_90, sm_100"):
        KernelSpec.for_arch("sm_75")


def test_spec_rejects_a_capability_on_cpu_and_a_bad_dtype():
    with pytest.raises(ValueError, match="capability"):
        KernelSpec("cpu", (9, 0), HARDWARE["h100"], 0)
    with pytest.raises(ValueError, match="dtype='int8'"):
        KernelSpec.for_cpu(dtype="int8")


@pytest.mark.parametrize(
    "device_name, entry",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA RTX A6000", "a6000"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GeForce RTX 3060", None),
    ],
)
def test_device_names_find_their_datasheet_entry(device_name, entry):
    assert hardware_for_device_name(device_name) == entry


def test_planner_prices_the_spec_hardware_head_dim_and_dtype():
    planned = plan(patterns.natten(7), Canvas((32, 32)))
    spec = KernelSpec.for_arch("sm_89", hw="rtx4090", head_dim=64, dtype="fp16")
    assert cost_for(spec)(planned) == simulated_ms(planned, HARDWARE["rtx4090"], head_dim=64, dtype="fp16")
    assert plan_cost(planned) == simulated_ms(planned, "h100", head_dim=128, dtype="bf16")


def test_plan_minimises_the_cost_of_its_spec():
    """The planner's choice for a spec is the cheapest candidate under that spec's cost."""
    pattern, canvas = patterns.sliding_window(256), Canvas(4096)
    for arch in ("sm_89", "sm_100"):
        spec = KernelSpec.for_arch(arch)
        chosen = plan(pattern, canvas, spec=spec)
        candidates = [plan(pattern, canvas, block_q=q, block_kv=kv) for q in (64, 128) for kv in (32, 64, 128)]
        assert cost_for(spec)(chosen) <= min(cost_for(spec)(c) for c in candidates) + 1e-12


def test_plan_rejects_a_spec_of_the_wrong_type():
    with pytest.raises(TypeError, match="spec must be a maskir.sim.target.KernelSpec"):
        plan(Causal(), Canvas(64), spec="sm_89")


def test_cpu_device_spec_is_priced_like_the_planner_default():
    spec = device_spec(torch.device("cpu"), head_dim=32, dtype=torch.float32, kv_heads=2)
    assert cost_for(spec) is plan_cost
    assert (spec.device, spec.capability, spec.hardware.name) == ("cpu", None, "h100")
    assert (spec.head_dim, spec.dtype, spec.kv_heads, spec.arch) == (32, "fp32", 2, "cpu")


RUNTIME_ON_A_PATCHED_DEVICE = textwrap.dedent(
    """
    import ast, json, sys, types, torch
    capability, name, sms, shared = ast.literal_eval(sys.argv[1])
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_capability = lambda device=None: capability
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(
        name=name, multi_processor_count=sms, shared_memory_per_block_optin=shared, major=capability[0],
        minor=capability[1])
    import maskir
    from maskir.codegen.triton.compile_check import check_module
    compiled = maskir.compile(maskir.Causal(), 2048, heads=2, head_dim=128, dtype=torch.bfloat16, device="cuda")
    kernels = compiled.kernels
    reports = check_module("causal", kernels.module, compiled.plan, kernels.generated, dtype=torch.bfloat16,
                           capability=compiled.spec.capability)
    from maskir.codegen.triton.compile_check_decode import check_decode_plan
    decoding = maskir.compile_decode(maskir.Causal(), heads=2, kv_heads=2, head_dim=128, dtype=torch.bfloat16,
                                     device="cuda")
    decode_module = decoding.kernels(1, 2048).module
    reports += check_decode_plan("decode", decoding.plan(2048), n_q=1, head_dim=128, dtype=torch.bfloat16,
                                 kv_heads=2, paged=False, capability=decoding.spec.capability, sms=decoding.spec.sms)
    print(json.dumps({"arch": compiled.spec.arch, "hardware": compiled.spec.hardware.name,
                      "sms": compiled.spec.sms, "options": kernels.module.LAUNCH_OPTIONS,
                      "decode": [decoding.spec.arch, decode_module.LAUNCH_OPTIONS["_decode"]["num_stages"]],
                      "reports": [[r.kernel, r.shared, r.shared_limit, r.spills, r.ok] for r in reports]}))
    """
)


@pytest.mark.parametrize(
    "capability, device_name, sms, entry, decode_stages",
    [((8, 9), "NVIDIA GeForce RTX 4090", 128, "rtx4090", 2), ((8, 0), "NVIDIA A100-SXM4-40GB", 108, "a100", 3)],
)
def test_runtime_on_an_ampere_or_ada_device_generates_kernels_that_fit(
    tmp_path, capability, device_name, sms, entry, decode_stages
):
    """With the device capability patched, ``maskir.compile`` and ``maskir.compile_decode`` on "cuda" build
    their spec from the device and generate kernels that, compiled for that capability (ptxas, no GPU), fit
    its shared memory and spill nothing. With sm_90's configuration the causal forward needed 114,688 B, over
    sm_89's 101,376 B; the decode kernel's 3 stages of 64 x 128 K and V need 102,400 B there, so it takes 2."""
    shared = ARCHES[f"sm_{capability[0]}{capability[1]}"].shared_memory_per_block
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(MASKIR_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_ON_A_PATCHED_DEVICE, repr((capability, device_name, sms, shared))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert (found["arch"], found["hardware"], found["sms"]) == (f"sm_{capability[0]}{capability[1]}", entry, sms)
    kernels = {name.split()[0] for name, *_ in found["reports"]}
    assert kernels == {"_fwd", "_bwd_preprocess", "_bwd_dq", "_bwd_dkdv", "_decode", "_merge"}
    assert all(limit == shared for _, _, limit, _, _ in found["reports"])
    assert [row for row in found["reports"] if not row[-1]] == []
    assert found["options"]["_fwd"]["num_stages"] == 2
    assert found["decode"] == [f"sm_{capability[0]}{capability[1]}", decode_stages]


def test_decode_stages_are_priced_from_the_targets_shared_memory():
    """Each stage holds a 64 x D tile of K and of V beside the program's queries: 3 stages of head dim 128
    bf16 need 3 x 32,768 + 16 x 256 = 102,400 B, over sm_89's 101,376 B; fp32 doubles the stage."""
    from maskir.codegen.triton.emit_decode import decode_launch_options

    def stages(capability, dtype=torch.bfloat16):
        return decode_launch_options(128, dtype, False, chunk=64, rows=16, capability=capability).num_stages

    assert [stages(c) for c in ((8, 0), (8, 6), (8, 9), (9, 0), (10, 0))] == [3, 2, 2, 3, 3]
    assert [stages(c, torch.float32) for c in ((8, 0), (8, 9), (9, 0))] == [2, 1, 3]
    assert decode_launch_options(128, torch.bfloat16, True).num_stages == 1
    with pytest.raises(ValueError, match="shared_memory_per_block"):
        decode_launch_options(128, torch.bfloat16, False, capability=(7, 5))


def test_cli_source_configures_the_triton_module_for_the_arch(capsys):
    from maskir.cli import main

    launch = {}
    for arch in ("sm_89", "sm_90"):
        assert main(["source", "Causal()", "--canvas", "1024", "--arch", arch]) == 0
        text = capsys.readouterr().out
        launch[arch] = text[text.index("LAUNCH_OPTIONS") :].splitlines()[1].strip()
    assert launch == {
        "sm_89": "'_fwd': {'num_warps': 4, 'num_stages': 2},",
        "sm_90": "'_fwd': {'num_warps': 4, 'num_stages': 3},",
    }


def test_cli_plan_and_simulate_price_the_chosen_hardware(capsys):
    from maskir.cli import main

    assert main(["simulate", "Causal()", "--canvas", "4096", "--arch", "sm_89", "--hw", "rtx4090"]) == 0
    assert "rtx4090" in capsys.readouterr().out
    assert main(["plan", "Causal()", "--canvas", "4096", "--arch", "sm_100"]) == 0
    assert "plan of Causal()" in capsys.readouterr().out
    assert main(["plan", "Causal()", "--canvas", "64", "--hw", "h1000"]) == 2
    assert "Unknown hardware 'h1000'" in capsys.readouterr().err


def test_cli_check_refuses_the_interpreter(monkeypatch, capsys):
    from maskir.cli import main

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["check", "Causal()", "--canvas", "256", "--arch", "sm_89"]) == 2
    assert "run it without TRITON_INTERPRET=1" in capsys.readouterr().err


def test_cli_check_prints_the_table_and_exits_0_when_every_kernel_fits():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run(
        [sys.executable, "-m", "maskir", "check", "Window(64, 0)", "--canvas", "1024", "--arch", "sm_89",
         "--heads", "2", "--head-dim", "64"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("sm_89")]
    assert {row[1] for row in rows} == {"_fwd", "_bwd_preprocess", "_bwd_dq", "_bwd_dkdv"}
    assert all(row[-1] == "yes" for row in rows)
    assert "sm_89 priced as l40s, head_dim 64, bf16" in done.stdout
