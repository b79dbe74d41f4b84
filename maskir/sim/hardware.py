"""GPU datasheet numbers and per-kernel efficiency constants: everything the cost model multiplies by.

``Hardware`` holds vendor figures (one datasheet cited per entry). ``KernelModel`` holds what a kernel
achieves on them, as fractions of peak, ALU operations and cycles, so one fit transfers across GPUs to
first order. The FlexAttention constants were fitted by ``benchmarks/fit_sim.py`` on the H100 anchors in
``shared/anchors/h100_flex_sdpa.jsonl``; re-run it to refit and paste its output here.
Imports nothing from maskir: the planner reads this table to price layouts.

Sources of ``HARDWARE`` (each entry's comment names the figures it takes from them):
- H100 / H100 PCIe: https://www.nvidia.com/en-us/data-center/h100/ (datasheet) and
  https://resources.nvidia.com/en-us-tensor-core (Hopper architecture whitepaper)
- H200: https://www.nvidia.com/en-us/data-center/h200/
- A100: https://www.nvidia.com/en-us/data-center/a100/ and
  https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/nvidia-ampere-architecture-whitepaper.pdf
- B200: https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200) and
  https://chipsandcheese.com/p/nvidias-b200-keeping-the-cuda-juggernaut-rolling
- L40S: https://www.nvidia.com/en-us/data-center/l40s/
- RTX 4090: https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
- RTX A6000: https://www.nvidia.com/en-us/design-visualization/rtx-a6000/ (datasheet)
- shared memory per SM: https://docs.nvidia.com/cuda/ampere-tuning-guide/ and
  https://docs.nvidia.com/cuda/ada-tuning-guide/
"""

from __future__ import annotations

from dataclasses import dataclass, replace

L2_BYTES_PER_CLOCK = 5120
"""L2 -> SM read bandwidth per clock. The A100 whitepaper gives 5120 B/clk; no other vendor figure is
published, so every part is assumed to match it at its boost clock (an estimate: it only binds for
tiles small enough that loading K and V outlasts their math)."""


@dataclass(frozen=True)
class Hardware:
    """One GPU: SM count, boost clock, dense tensor peak (bf16/fp16 inputs, fp32 accumulate, no 2:4
    sparsity), fp32 CUDA-core peak, HBM bandwidth, max shared memory per SM and L2 size."""

    name: str
    sms: int
    clock_ghz: float
    tensor_tflops: float
    fp32_tflops: float
    hbm_tbps: float
    smem_kib: int
    l2_mib: float

    @property
    def tensor_flops_per_sm(self) -> float:
        """Peak dense bf16/fp16 tensor FLOP/s of one SM."""
        return self.tensor_tflops * 1e12 / self.sms

    @property
    def alu_ops_per_sm(self) -> float:
        """32-bit lane operations per second of one SM (fp32 FLOP/s / 2: an FMA counts two FLOPs)."""
        return self.fp32_tflops * 1e12 / 2 / self.sms

    @property
    def hbm_bytes_per_sm(self) -> float:
        """An equal share of DRAM bandwidth per SM, bytes/s."""
        return self.hbm_tbps * 1e12 / self.sms

    @property
    def l2_bytes_per_sm(self) -> float:
        """An equal share of L2 read bandwidth per SM, bytes/s (see ``L2_BYTES_PER_CLOCK``)."""
        return L2_BYTES_PER_CLOCK * self.clock_ghz * 1e9 / self.sms

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.sms} SMs at {self.clock_ghz:g} GHz, {self.tensor_tflops:g} TFLOP/s dense bf16, "
            f"{self.hbm_tbps:g} TB/s, {self.smem_kib} KiB smem/SM, {self.l2_mib:g} MiB L2"
        )


HARDWARE: dict[str, Hardware] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s bf16 dense (1,979 with sparsity), 67 TFLOP/s
    # fp32, 3.35 TB/s HBM3; Hopper architecture whitepaper: 132 SMs, 1.98 GHz max boost, 228 KiB shared
    # memory per SM, 50 MiB L2. (The tensor peak is quoted at 1.83 GHz: 132 SMs x 4,096 FLOP/clk; the fp32
    # peak at 1.98 GHz: 132 x 128 lanes x 2. ``clock_ghz`` is the max boost, used for L2 bandwidth only.)
    "h100": Hardware("h100", 132, 1.98, 989.4, 66.9, 3.35, 228, 50),
    # Same datasheet, PCIe column: 756 TFLOP/s bf16 dense (1,513 with sparsity), 51 TFLOP/s fp32, 2.0 TB/s
    # HBM2e; whitepaper: 114 SMs, 1.755 GHz boost.
    "h100-pcie": Hardware("h100-pcie", 114, 1.755, 756.5, 51.2, 2.0, 228, 50),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): 989 TFLOP/s bf16 dense, 67 TFLOP/s fp32, 4.8 TB/s HBM3e;
    # the GH100 configuration of the H100 SXM5 (132 SMs, 1.98 GHz, 228 KiB smem, 50 MiB L2).
    "h200": Hardware("h200", 132, 1.98, 989.4, 66.9, 4.8, 228, 50),
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): 312 TFLOP/s bf16 dense, 19.5 TFLOP/s fp32, 2,039 GB/s
    # HBM2e; Ampere GA100 whitepaper: 108 SMs, 1.41 GHz boost, 164 KiB shared memory per SM, 40 MiB L2.
    "a100": Hardware("a100", 108, 1.41, 312.0, 19.5, 2.039, 164, 40),
    # NVIDIA HGX B200 datasheet, per GPU: 2.25 PFLOP/s fp16/bf16 dense (4.5 with sparsity), 75 TFLOP/s fp32,
    # 8 TB/s HBM3e; Chips and Cheese, "Nvidia's B200: Keeping the CUDA Juggernaut Rolling" (2025):
    # 148 SMs, 126 MiB L2, 228 KiB shared memory per SM as on H100; 1.98 GHz boost (75 TFLOP/s fp32 over
    # 148 SMs x 128 lanes x 2).
    "b200": Hardware("b200", 148, 1.98, 2250.0, 75.0, 8.0, 228, 126),
    # NVIDIA L40S datasheet: 362.05 TFLOP/s bf16 dense (733 with sparsity), 91.6 TFLOP/s fp32, 864 GB/s
    # GDDR6, 142 SMs (568 tensor cores / 4; AD102), 2.52 GHz boost (91.6 TFLOP/s over 18,176 lanes x 2);
    # Ada tuning guide: 100 KiB shared memory per SM. L2: the datasheet gives none; 96 MiB is the Ada
    # whitepaper's full AD102 (16 MiB per 64-bit channel, L40S uses all 384 bits); some third-party
    # listings say 48 MiB (unconfirmed by NVIDIA).
    "l40s": Hardware("l40s", 142, 2.52, 362.05, 91.6, 0.864, 100, 96),
    # NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090): 165.2 TFLOP/s fp16/bf16 tensor with
    # fp32 accumulate, dense (330.4 with sparsity), 82.6 TFLOP/s fp32, 1,008 GB/s GDDR6X, 128 SMs,
    # 2.52 GHz boost, 72 MiB L2; Ada tuning guide: 100 KiB shared memory per SM.
    "rtx4090": Hardware("rtx4090", 128, 2.52, 165.2, 82.6, 1.008, 100, 72),
    # NVIDIA RTX A6000 datasheet (sm_86): 309.7 TFLOP/s tensor with sparsity (154.8 dense), 38.7 TFLOP/s fp32,
    # 768 GB/s GDDR6, 84 SMs (10,752 CUDA cores) at 1.80 GHz boost, 6 MiB L2 (GA102, Ampere whitepaper);
    # Ampere tuning guide: 100 KiB shared memory per SM on compute capability 8.6.
    "a6000": Hardware("a6000", 84, 1.80, 154.8, 38.7, 0.768, 100, 6),
}

DTYPES: dict[str, tuple[int, float]] = {"bf16": (2, 1.0), "fp16": (2, 1.0), "fp32": (4, 0.5)}
"""dtype -> (bytes per element, tensor rate relative to bf16). fp32 runs as TF32, half the bf16 rate on
every part above (e.g. H100 SXM: 494.7 vs 989.4 TFLOP/s dense)."""


def get_hardware(name: str | Hardware) -> Hardware:
    """The ``Hardware`` entry for a name such as "h100" (a ``Hardware`` passes through)."""
    if isinstance(name, Hardware):
        return name
    if name not in HARDWARE:
        raise ValueError(f"Unknown hardware {name!r}; valid names: {', '.join(HARDWARE)}.")
    return HARDWARE[name]


def dtype_info(dtype: str) -> tuple[int, float]:
    """(bytes per element, tensor rate relative to bf16) of a dtype name."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; valid names: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class KernelModel:
    """What one attention kernel achieves on a GPU, in hardware-relative units.

    - ``fwd_efficiency`` / ``bwd_efficiency``: fraction of the tensor peak the matmuls of a FULL tile reach
      (it absorbs the softmax's exp/max/sum, which scale with the tile like the matmuls).
    - ``mask_ops_per_pair``: extra 32-bit ALU operations per (q, kv) pair of a PARTIAL tile, per pass
      (predicate arithmetic, select, extra bookkeeping on the masked path).
    - ``tile_cycles``: fixed SM cycles per tile visited (accumulator rescale, index load, loop control).
    - ``launch_us``: fixed time per kernel launch.
    - ``fused_backward``: dK/dV and dQ programs share one launch (flex) or run as two (maskir).
    Programs reach the SMs in grid order, q tile (or kv tile) fastest, then batch * head: both kernels.
    """

    name: str
    fwd_efficiency: float
    bwd_efficiency: float
    mask_ops_per_pair: float
    tile_cycles: float
    launch_us: float
    fused_backward: bool


FLEX = KernelModel(
    name="flex",
    # Fitted by benchmarks/fit_sim.py on benchmarks/anchors/h100_flex_sdpa.jsonl (a copy of shared/anchors):
    # 5 forward + 3 forward+backward rows, errors -4.8% (causal fwd) to +5.4% (dense fwd), leave-one-out
    # errors within 10%. A per-program constant was tried and fitted to 0: the Q load and O store through
    # HBM already explain what a program costs beyond its tiles.
    fwd_efficiency=0.507,
    bwd_efficiency=0.662,
    mask_ops_per_pair=32.3,
    # Not identifiable from 128x128 anchors (it trades off against the efficiency): an estimate, the
    # accumulator rescale (128 x 128 fp32 multiplies over 128 lanes = 128 cycles) plus ~70 of loop control.
    tile_cycles=200.0,
    # Not fitted: a typical launch plus CUDA-event overhead for one kernel.
    launch_us=5.0,
    # torch's flex backward runs its dK/dV and dQ programs in one grid.
    fused_backward=True,
)

MASKIR = replace(FLEX, name="maskir", fused_backward=False)
"""maskir's Triton kernels walk the tiles as flex's do (FULL then PARTIAL, FA2 online softmax), so until
benchmarks/results holds maskir measurements (refit with ``benchmarks/fit_sim.py --kernel maskir``) they
get flex's constants; its backward launches dQ and dK/dV separately (codegen/triton/launch.py)."""

KERNELS: dict[str, KernelModel] = {"maskir": MASKIR, "flex": FLEX}


def get_kernel(name: str | KernelModel) -> KernelModel:
    """The ``KernelModel`` for "maskir" or "flex" (a ``KernelModel`` passes through)."""
    if isinstance(name, KernelModel):
        return name
    if name not in KERNELS:
        raise ValueError(f"Unknown kernel {name!r}; valid names: {', '.join(KERNELS)}.")
    return KERNELS[name]


# -- links between GPUs (context parallelism) ----------------------------------------------------------


@dataclass(frozen=True)
class Interconnect:
    """The links of one multi-GPU system, per GPU and per direction: inside a node (NVLink) and across nodes
    (the GPU's own InfiniBand NIC), in GB/s, and how many GPUs a node holds."""

    name: str
    node_gbps: float
    network_gbps: float
    gpus_per_node: int

    def transfer_seconds(self, node_bytes: float, network_bytes: float) -> float:
        """Seconds to receive ``node_bytes`` from GPUs of the same node and ``network_bytes`` from other
        nodes, the two links working at once."""
        return max(node_bytes / (self.node_gbps * 1e9), network_bytes / (self.network_gbps * 1e9))


INTERCONNECT: dict[str, Interconnect] = {
    # H100 datasheet (SXM5): NVLink 900 GB/s per GPU (both directions: 450 each way); DGX H100 datasheet: 8 GPUs,
    # 8x single-port ConnectX-7 VPI up to 400 Gb/s InfiniBand (50 GB/s per GPU each way).
    "h100": Interconnect("h100", 450.0, 50.0, 8),
    # H200 datasheet (SXM): NVLink 900 GB/s; DGX H200 datasheet: 8 GPUs, 8x ConnectX-7 400 Gb/s InfiniBand.
    "h200": Interconnect("h200", 450.0, 50.0, 8),
    # A100 datasheet (80GB SXM): NVLink 600 GB/s; DGX A100 datasheet: 8 GPUs, 8x single-port ConnectX-6 VPI
    # 200 Gb/s HDR InfiniBand (25 GB/s per GPU each way).
    "a100": Interconnect("a100", 300.0, 25.0, 8),
    # HGX B200 datasheet: fifth-generation NVLink 1.8 TB/s per GPU; DGX B200 datasheet: 8 GPUs, 8x single-port
    # ConnectX-7 VPI up to 400 Gb/s InfiniBand.
    "b200": Interconnect("b200", 900.0, 50.0, 8),
}


def get_interconnect(name: str | Interconnect) -> Interconnect:
    """The ``Interconnect`` of a hardware name with NVLink systems in the table (h100, h200, a100, b200)."""
    if isinstance(name, Interconnect):
        return name
    if name not in INTERCONNECT:
        raise ValueError(
            f"No interconnect figures for {name!r}; valid names: {', '.join(INTERCONNECT)} (NVLink systems)."
        )
    return INTERCONNECT[name]
