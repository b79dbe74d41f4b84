"""The ``KernelSpec`` of the device a ``CompiledAttention`` runs on, read once from torch.

On CUDA: the capability (``torch.cuda.get_device_capability``), SM count and opt-in shared memory per
block (``torch.cuda.get_device_properties``), priced with the datasheet entry the device's name matches
(else the architecture's entry from ``maskir.sim.target.ARCHES``, else H100's), its SM count set to the
device's. On a CPU: ``KernelSpec.for_cpu``. Everything below the runtime reads the spec, never the device.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from maskir.runtime.checks import DTYPES
from maskir.sim.hardware import get_hardware
from maskir.sim.target import KernelSpec, arch_of, hardware_for_device_name


def device_spec(
    device: torch.device, *, head_dim: int, dtype: torch.dtype, kv_heads: int, score_mod: bool = False
) -> KernelSpec:
    """The target of kernels for ``device`` with this head dim, dtype, kv heads and score_mod presence."""
    sizes = {"head_dim": head_dim, "dtype": DTYPES[dtype], "kv_heads": kv_heads, "score_mod": score_mod}
    if device.type != "cuda":
        return KernelSpec.for_cpu(**sizes)
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but torch sees no CUDA device here: pass device='cpu'.")
    capability = tuple(torch.cuda.get_device_capability(device))
    properties = torch.cuda.get_device_properties(device)
    arch = arch_of(capability)
    name = hardware_for_device_name(properties.name) or (arch.hardware if arch else "h100")
    hardware = replace(get_hardware(name), sms=properties.multi_processor_count)
    shared = getattr(properties, "shared_memory_per_block_optin", None) or (arch and arch.shared_memory_per_block)
    if not shared:
        raise ValueError(
            f"Unknown shared memory per block for {properties.name} (capability {capability}): this torch does not "
            "report shared_memory_per_block_optin; pass backend='reference' or upgrade torch."
        )
    return KernelSpec("cuda", capability, hardware, int(shared), **sizes)
