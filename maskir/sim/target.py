"""What a kernel is built for: ``KernelSpec``, one frozen description of the target passed down the pipeline.

The runtime builds one ``KernelSpec`` from the actual device (``maskir.runtime.target.device_spec``) or
the command line builds it from ``--arch``/``--hw`` (``KernelSpec.for_arch``); the planner prices tiles
and layouts with its ``hardware`` (``maskir.planner.cost.cost_for``) and a backend picks its launch
configuration from its ``capability`` and ``shared_memory_per_block``. Nothing below the runtime asks
the device itself.

``ARCHES`` lists the architectures maskir compiles for. Shared memory per block is the opt-in maximum
of the CUDA C++ Programming Guide's "Technical Specifications per Compute Capability" table
(https://docs.nvidia.com/cuda/cuda-c-programming-guide/#features-and-technical-specifications):
163 KiB on 8.0, 99 KiB on 8.6 and 8.9, 227 KiB on 9.0 and 10.0. Imports only ``maskir.sim.hardware``.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskir.sim.hardware import DTYPES, HARDWARE, Hardware, get_hardware


@dataclass(frozen=True)
class Arch:
    """A CUDA architecture: compute capability, per-block shared memory limit (bytes, opt-in maximum) and
    the datasheet entry priced when no ``--hw`` is given."""

    name: str
    capability: tuple[int, int]
    shared_memory_per_block: int
    hardware: str


ARCHES: dict[str, Arch] = {
    arch.name: arch
    for arch in (
        Arch("sm_80", (8, 0), 166912, "a100"),
        Arch("sm_86", (8, 6), 101376, "a6000"),
        Arch("sm_89", (8, 9), 101376, "l40s"),
        Arch("sm_90", (9, 0), 232448, "h100"),
        Arch("sm_100", (10, 0), 232448, "b200"),
    )
}


def get_arch(name: str) -> Arch:
    """The ``Arch`` for a name such as "sm_89"."""
    if name not in ARCHES:
        raise ValueError(f"Unknown arch {name!r}; valid names: {', '.join(ARCHES)}.")
    return ARCHES[name]


def arch_of(capability: tuple[int, int]) -> Arch | None:
    """The listed ``Arch`` with this compute capability, or None."""
    return next((arch for arch in ARCHES.values() if arch.capability == tuple(capability)), None)


def hardware_for_device_name(device_name: str) -> str | None:
    """The datasheet entry for a CUDA device name ("NVIDIA GeForce RTX 4090" -> "rtx4090"), or None: the
    longest entry whose dash-separated parts all occur in the name with spaces and dashes removed."""
    squashed = "".join(device_name.lower().replace("-", " ").split())
    matches = [key for key in HARDWARE if all(part in squashed for part in key.split("-"))]
    return max(matches, key=len) if matches else None


@dataclass(frozen=True)
class KernelSpec:
    """The target of one compiled attention: device, GPU facts and the problem's kernel-shaping sizes.

    ``device``: "cuda" or "cpu". ``capability``: (major, minor) on CUDA, None on a CPU.
    ``hardware``: the datasheet numbers the planner prices with (SM count taken from the device when it is
    known). ``shared_memory_per_block``: bytes a block may use (0 on a CPU: no limit applies).
    ``head_dim``, ``dtype`` ("bf16", "fp16", "fp32"), ``kv_heads`` and ``score_mod`` (whether one is given)
    shape the kernels' registers and shared memory.
    """

    device: str
    capability: tuple[int, int] | None
    hardware: Hardware
    shared_memory_per_block: int
    head_dim: int = 128
    dtype: str = "bf16"
    kv_heads: int = 1
    score_mod: bool = False

    def __post_init__(self):
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"KernelSpec device must be 'cuda' or 'cpu', got device={self.device!r}.")
        if (self.capability is None) != (self.device == "cpu"):
            raise ValueError(f"KernelSpec needs a capability on cuda and none on cpu, got {self.capability=}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"KernelSpec dtype must be one of {', '.join(DTYPES)}, got dtype={self.dtype!r}.")
        for name in ("head_dim", "kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KernelSpec {name} must be a positive int, got {name}={value!r}.")

    @property
    def arch(self) -> str:
        """ "sm_89" style name of the capability, or "cpu"."""
        return "cpu" if self.capability is None else f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def sms(self) -> int:
        """Streaming multiprocessors of the target (of the priced hardware)."""
        return self.hardware.sms

    @classmethod
    def for_arch(cls, arch: str, *, hw: str | Hardware | None = None, **sizes) -> KernelSpec:
        """A cross-compilation target: ``arch`` from ``ARCHES`` ("sm_89"), priced as ``hw`` (default: the
        arch's datasheet entry). ``sizes``: head_dim, dtype, kv_heads, score_mod."""
        entry = get_arch(arch)
        hardware = get_hardware(hw or entry.hardware)
        return cls("cuda", entry.capability, hardware, entry.shared_memory_per_block, **sizes)

    @classmethod
    def for_cpu(cls, *, hw: str | Hardware = "h100", **sizes) -> KernelSpec:
        """A CPU target (the Triton interpreter, TVM's llvm build, the reference). ``hw`` is what the
        simulator would price; the planner prices a CPU target like no spec at all (``cost_for``)."""
        return cls("cpu", None, get_hardware(hw), 0, **sizes)

    def __str__(self) -> str:
        extras = f", {self.kv_heads} kv heads" + (", score_mod" if self.score_mod else "")
        return f"{self.arch} priced as {self.hardware.name}, head_dim {self.head_dim}, {self.dtype}{extras}"
