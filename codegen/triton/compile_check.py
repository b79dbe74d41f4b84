"""Compile generated kernels for a GPU target with no GPU: shared memory, registers and spills per kernel.

The kernels are specialised exactly as a launch would specialise them: ``TritonAttention`` runs forward and
backward on "meta" tensors with a launcher that records each call instead of running it, and Triton's own
binder turns the recorded arguments into the signature, constexprs and alignment attributes. Each call is
compiled with ``triton.compile`` for ``GPUTarget("cuda", major * 10 + minor, 32)``; ``ptxas -v`` (bundled
with the wheel, run by that compile) reports registers and spills. Triton raises no out-of-resources error
without a device, so ``KernelReport.ok`` checks the limits itself.

``triton.jit`` returns interpreter functions when ``TRITON_INTERPRET=1`` is set at import, so compile in a
process without it (tests/test_sm90_compile.py and tests/test_compile_matrix.py run themselves as
subprocesses; ``maskir check`` refuses to run with it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from maskir.codegen.common.ptxas import parse_ptxas_log
from maskir.codegen.triton.configs import SHARED_MEMORY_BYTES
from maskir.codegen.triton.emit import GeneratedSource, generate_source
from maskir.codegen.triton.launch import TritonAttention
from maskir.ir import Routing


@dataclass(frozen=True)
class KernelReport:
    """Resources of one compiled kernel of one configuration."""

    config: str
    kernel: str  # the kernel's name, plus " part <i>" for the specialisation of plan part i > 0
    shared: int
    registers: int
    spills: int
    num_warps: int
    num_stages: int
    seconds: float
    shared_limit: int
    tensor_core: str = "none"  # the MMA instructions in the PTX (``tensor_core_kind``)
    rows: int = 0  # the smallest M among the kernel's products (``product_rows``; wgmma needs M >= 64)

    @property
    def ok(self) -> bool:
        return self.shared <= self.shared_limit and self.spills == 0


class _RecordingAttention(TritonAttention):
    """Records (kernel name, grid, arguments) instead of launching: used on meta tensors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def launch(self, name: str, grid: tuple[int, int], args: dict[str, Any]) -> None:
        self.calls.append((name, args))


def kernel_calls(
    module: ModuleType, plan, generated: GeneratedSource, *, dtype: torch.dtype, tensors: Sequence[torch.Tensor] = ()
) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, kernel name, arguments) of each distinct launch a forward plus backward makes (meta tensors).

    Each plan part is its own specialisation (PART, gather flags), labelled ``"_fwd part 1"`` and so on.
    ``tensors``: the run-time data tensors; by default the score_mod's captured tensors. The backward asks
    for the gradients of the score_mod's float tensors, so dQ is compiled with its table-gradient step.
    """
    recorder = _RecordingAttention(module, plan, generated)
    meta = torch.device("meta")
    batch, heads, kv_heads, dim = 1, recorder.heads, recorder.kv_heads, recorder.head_dim
    q = torch.empty(batch, heads, plan.canvas.size, dim, dtype=dtype, device=meta)
    k = torch.empty(batch, kv_heads, plan.kv_canvas.size, dim, dtype=dtype, device=meta)
    tensors = [t.to(meta) for t in tensors] or [t.to(meta) for t in generated.static_tensors.values()]
    out, lse = recorder.forward(q, k, k, scale=dim**-0.5, tensors=tensors)
    tables = generated.table_grads  # a score_mod's float tensors: compile the dQ kernel that trains them
    trained = [i for i, name in enumerate(generated.tensor_names) if tables is not None and name in tables.offsets]
    recorder.backward(q, k, k, out, lse, out, scale=dim**-0.5, tensors=tensors, trained=trained)
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, args in recorder.calls:
        part = args.get("PART", 0)
        calls.setdefault(name + (f" part {part}" if part else ""), (name, args))
    return [(label, name, args) for label, (name, args) in calls.items()]


def compile_kernel(fn, args: dict[str, Any], options: dict[str, int], capability: tuple[int, int]):
    """triton.compile of one jit function for ``capability``, specialised on ``args`` like a launch.

    Returns (compiled kernel, ptxas log).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    if not hasattr(fn, "params"):
        raise RuntimeError("compile_check needs real @triton.jit functions: run it without TRITON_INTERPRET=1.")
    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**args, **options}
    bound, specialization, _ = binder(**kwargs)
    parsed, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, None)
    source = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    knobs = (triton.knobs.nvidia, "dump_ptxas_log"), (triton.knobs.compilation, "always_compile")
    previous = [getattr(group, name) for group, name in knobs]
    for group, name in knobs:  # run ptxas (no cache hit) and print its log
        setattr(group, name, True)
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=target, options=parsed.__dict__)
    finally:
        for (group, name), value in zip(knobs, previous):
            setattr(group, name, value)
    return compiled, log.getvalue()


_ROWS = {"_fwd": "FWD_ROWS", "_bwd_preprocess": "PREPROCESS_ROWS", "_bwd_dq": "DQ_ROWS", "_bwd_dkdv": "DKDV_ROWS"}
"""The constexpr holding each kernel's rows per program."""


def product_rows(module: ModuleType, name: str) -> int:
    """The smallest M of kernel ``name``'s matrix products: its rows per program, except a swapAB dK/dV
    step, whose products have the q chunk (S, dP) or the head dim (dK^T, dV^T) as M."""
    if name == "_bwd_dkdv" and module.DKDV_SWAP_AB:
        return min(int(module.DKDV_CHUNK_M), int(module.HEAD_DIM_PAD))
    return int(getattr(module, _ROWS[name]))


TENSOR_CORE_OPS = (("wgmma", "wgmma.mma_async"), ("tcgen05", "tcgen05.mma"), ("mma", "mma.sync"))
"""(kind, PTX instruction prefix): Hopper's warpgroup MMA, Blackwell's (sm_100) tensor-memory MMA, and the
warp-level ``mma.sync`` of sm_80 onwards."""


def tensor_core_kind(ptx: str) -> str:
    """The tensor-core instructions in a kernel's PTX joined by "+" in ``TENSOR_CORE_OPS`` order: "wgmma"
    (sm_90 warpgroup MMA only), "tcgen05" (sm_100), "mma" (``mma.sync`` only), "wgmma+mma" (some product
    missed wgmma), or "none"."""
    kinds = [name for name, op in TENSOR_CORE_OPS if op in ptx]
    return "+".join(kinds) or "none"


def check_module(
    config: str,
    module: ModuleType,
    plan,
    generated: GeneratedSource,
    *,
    dtype: torch.dtype,
    capability: tuple[int, int] = (9, 0),
    tensors: Sequence[torch.Tensor] = (),
) -> list[KernelReport]:
    """Compile the four kernels of a generated module and report their resources."""
    reports = []
    for label, name, args in kernel_calls(module, plan, generated, dtype=dtype, tensors=tensors):
        options = module.LAUNCH_OPTIONS[name]
        started = time.perf_counter()
        compiled, log = compile_kernel(getattr(module, name), args, options, capability)
        registers, spills = parse_ptxas_log(log)
        reports.append(
            KernelReport(
                config,
                label,
                int(compiled.metadata.shared),
                registers,
                spills,
                options["num_warps"],
                options["num_stages"],
                round(time.perf_counter() - started, 3),
                SHARED_MEMORY_BYTES[capability],
                tensor_core_kind(compiled.asm["ptx"]),
                product_rows(module, name),
            )
        )
    return reports


def import_source(source: str, path: Path) -> ModuleType:
    """Write ``source`` to ``path`` and import it (``@triton.jit`` reads the source from a real file)."""
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"maskir_compile_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_plan(
    config: str,
    plan,
    *,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int | None = None,
    capability: tuple[int, int] = (9, 0),
    tensors: Callable[[tuple[str, ...]], Sequence[torch.Tensor]] | None = None,
    score_mod: Callable | None = None,
) -> list[KernelReport]:
    """Generate the module for ``plan`` (GPU flavour), import it from a temp file and compile its kernels.

    ``tensors(names)`` gives example (e.g. meta) tensors for the run-time data the kernels read, if any;
    the tensors ``score_mod`` captures are passed as they are (a bias table: its dQ step trains it).
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check must run without TRITON_INTERPRET=1: use a subprocess.")
    generated = generate_source(
        plan,
        head_dim=head_dim,
        dtype=dtype,
        kv_heads=kv_heads,
        score_mod=score_mod,
        interpret=False,
        capability=capability,
    )
    with tempfile.TemporaryDirectory(prefix="maskir-compile-") as tmp:
        module = import_source(generated.source, Path(tmp) / f"{config}.py")
        captured = generated.static_tensors
        given = tensors([n for n in generated.tensor_names if n not in captured]) if tensors is not None else []
        examples = [captured[n] if n in captured else given.pop(0) for n in generated.tensor_names] if given else ()
        return check_module(config, module, plan, generated, dtype=dtype, capability=capability, tensors=examples)


def meta_tensors(names: Sequence[str], plan) -> list[torch.Tensor]:
    """Meta tensors standing in for a plan's run-time data, batch 1: segment ids [1, N] int32 and the routing
    map [1, heads, q blocks, kv blocks] int8 (blocks of the pattern's ``Routing`` node)."""
    block = next((node.block for node in plan.pattern.walk() if isinstance(node, Routing)), 1)
    n_q, n_kv = plan.canvas.size, plan.kv_canvas.size
    shapes = {
        "segments_q": ((1, n_q), torch.int32),
        "segments_kv": ((1, n_kv), torch.int32),
        "routing_map": ((1, plan.heads, -(-n_q // block), -(-n_kv // block)), torch.int8),
    }
    unknown = [name for name in names if name not in shapes]
    if unknown:
        raise ValueError(f"No example shape for run-time tensors {unknown}: pass check_plan(..., tensors=...).")
    return [torch.empty(shapes[name][0], dtype=shapes[name][1], device="meta") for name in names]


def format_table(reports: list[KernelReport]) -> str:
    """A fixed-width table: config, kernel, shared bytes, registers, spills, warps/stages, rows, MMA kind, ok."""
    lines = [
        f"{'config':<30}{'kernel':<24}{'shared':>8}{'regs':>6}{'spills':>8}{'warps':>7}{'stages':>7}{'rows':>6}"
        f"{'mma':>10}  ok"
    ]
    for r in reports:
        lines.append(
            f"{r.config:<30}{r.kernel:<24}{r.shared:>8}{r.registers:>6}{r.spills:>8}{r.num_warps:>7}"
            f"{r.num_stages:>7}{r.rows:>6}{r.tensor_core:>10}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
