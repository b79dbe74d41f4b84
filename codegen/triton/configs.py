"""Launch configurations: inner step widths and warps/stages per kernel, by head dim, dtype and target.

Tile sizes (BLOCK_M x BLOCK_N) belong to the plan; a kernel may walk a tile in narrower steps (a chunk of
kv positions in the forward and dQ passes, of q positions in the dK/dV pass) to bound registers. Chunks
divide their tile. The interpreter (CPU) runs whole tiles in one step: its cost is per operation, not per
register. GPU rules were checked by compiling the benchmark suite for sm_80 to sm_100 (``compile_check``):
no spills and shared memory within the per-block limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskir.sim.target import ARCHES

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
SHARED_MEMORY_BYTES = {arch.capability: arch.shared_memory_per_block for arch in ARCHES.values()}
"""Per-block shared memory limits (opt-in maximum) by compute capability (``maskir.sim.target.ARCHES``)."""
THREE_STAGE_SHARED_BYTES = 200 * 1024
"""Per-block shared memory from which K/V loads run three stages deep (sm_90 suite: 131,072 B at most);
below it (sm_8x, sm_120's 99 KiB) two stages: the causal forward needed 114,688 B at three on sm_89."""
BLACKWELL_NARROW_PAIR_OPS = 5
"""On sm_100 (tcgen05) forwards whose predicate has this many pair operations, or a pair-indexed load, step
16 kv positions. Measured with triton 3.9 on the runtime's B200-priced plans: at 32-wide steps the dilated
window (5 operations, 8 warps) spilled 56 B and routing_top8 (a routing-map load) 292 B; at 16 neither does."""
HEAVY_PAIR_OPS = 16
"""Predicates with more pair operations than this step in narrow chunks (sm_90 suite: NA3D's 11 fit)."""
DKDV_ELEMENTS_FOR_8_WARPS = 64 * 128
"""dK/dV programs whose rows x head dim reach this use 8 warps (each accumulator then ~64 registers)."""
WGMMA_MIN_M = 64
"""Hopper's wgmma multiplies M >= 64 rows (a warpgroup's 4 x 16); narrower products fall back to mma.sync."""


MMA_SYNC_MAX_REGISTERS = 255
"""Registers a thread may use (``maxnreg``) in a dQ program before sm_90: every register a thread can address.
Without it ptxas held 4-warp dQ programs to 168 registers and spilled (triton 3.6: Swin's 64 B on sm_80,
the dilated window's and NA2D's 40 B on sm_89); with it they use 198-207 and spill nothing."""


@dataclass(frozen=True)
class LaunchOptions:
    """``num_warps`` and ``num_stages`` of one kernel launch, and ``max_registers`` per thread (Triton's
    ``maxnreg``; None: ptxas chooses)."""

    num_warps: int
    num_stages: int
    max_registers: int | None = None

    def as_kwargs(self) -> dict[str, int]:
        """The launch keywords: ``num_warps``, ``num_stages`` and, when set, ``maxnreg``."""
        kwargs = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return kwargs if self.max_registers is None else {**kwargs, "maxnreg": self.max_registers}


@dataclass(frozen=True)
class KernelConfig:
    """Step widths and rows per program (emitted as constexprs) and launch options of the four kernels.

    ``*_chunk_*``: positions of the other side per inner step; ``*_rows``: rows of its own tile one program
    owns (a tile of BLOCK rows is shared by BLOCK // rows programs that walk the same list).
    ``dkdv_swap_ab``: the dK/dV step multiplies [q, kv] tiles and accumulates dK^T, dV^T (FlashAttention-3's
    swapAB), so that kv tiles narrower than ``WGMMA_MIN_M`` still run every product on wgmma.
    """

    fwd_chunk_n: int
    dq_chunk_n: int
    dkdv_chunk_m: int
    preprocess_rows: int
    fwd_rows: int
    dq_rows: int
    dkdv_rows: int
    dkdv_swap_ab: bool
    fwd: LaunchOptions
    preprocess: LaunchOptions
    dq: LaunchOptions
    dkdv: LaunchOptions

    def launch_options(self) -> dict[str, dict[str, int]]:
        """Kernel name -> ``{"num_warps": ..., "num_stages": ...[, "maxnreg": ...]}``, as written into the
        generated module."""
        options = {"_fwd": self.fwd, "_bwd_preprocess": self.preprocess, "_bwd_dq": self.dq, "_bwd_dkdv": self.dkdv}
        return {name: o.as_kwargs() for name, o in options.items()}


def _chunk(block: int, width: int) -> int:
    """A step width or row count within a tile: ``width`` when it divides ``block``, else the whole block."""
    return width if block % width == 0 and width < block else block


def choose_config(
    block_q: int,
    block_kv: int,
    head_dim_pad: int,
    dtype: torch.dtype,
    *,
    interpret: bool,
    capability: tuple[int, int] = (9, 0),
    shared_memory_per_block: int | None = None,
    pair_loads: int = 0,
    pair_ops: int = 0,
    swap_ab: bool | None = None,
    table_grads: bool = False,
) -> KernelConfig:
    """The configuration for plan tiles ``block_q`` x ``block_kv`` and a (power of two) padded head dim.

    ``pair_loads``: loads in the predicate/score_mod indexed by both q and kv (a routing map, a bias table).
    Each holds a [rows, chunk] tensor of 64-bit pointers, so such kernels step in narrower chunks.
    ``pair_ops``: operations of the largest predicate/score_mod on [rows, chunk] tensors; above
    ``HEAVY_PAIR_OPS`` the live temporaries need narrower chunks too (radial: 31 ops spilled at 32 wide).
    ``swap_ab``: force the dK/dV step's orientation on the GPU (None: swapAB where kv rows < WGMMA_MIN_M;
    ``benchmarks/ab_swap.py`` times both). ``table_grads``: the dQ step also adds a score_mod's table
    gradients (a [rows, chunk, entries] one-hot temporary): 8 warps hold it without spills.
    ``shared_memory_per_block``: the target's limit in bytes (None: ``SHARED_MEMORY_BYTES[capability]``).
    """
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, DTYPE_NAMES))}, got {dtype}.")
    if interpret:  # whole tiles; swapAB below WGMMA_MIN_M as on sm_90 (16-bit): the interpreter tests both steps
        single = LaunchOptions(num_warps=4, num_stages=1)
        swap = block_kv < WGMMA_MIN_M
        return KernelConfig(
            block_kv, block_kv, block_q, block_q, block_q, block_q, block_kv, swap, single, single, single, single
        )
    if shared_memory_per_block is None:
        if tuple(capability) not in SHARED_MEMORY_BYTES:
            raise ValueError(
                f"No shared memory limit known for capability={capability}: pass shared_memory_per_block "
                f"(known capabilities: {', '.join(map(str, SHARED_MEMORY_BYTES))})."
            )
        shared_memory_per_block = SHARED_MEMORY_BYTES[tuple(capability)]
    fp32 = dtype == torch.float32
    row_bytes = head_dim_pad * (4 if fp32 else 2)
    heavy = row_bytes >= 512  # 16-bit head dim 256, fp32 head dim >= 128: split tiles, narrow steps
    narrow = heavy or pair_loads > 0 or pair_ops > HEAVY_PAIR_OPS
    # before sm_90 (mma.sync: operands and accumulators in registers) the sm_80/sm_89 suite spilled with
    # sm_90's choices (forward 64 x 128 at 64-wide steps: 16-56 B; dK/dV 128 rows: 64-384 B); it fits with
    # 32-wide forward steps on 4 warps (at 8, ptxas held Swin's and NA3D's forward to 128 registers and
    # spilled) and dK/dV programs of at most 64 kv rows on 8 warps
    mma_sync = capability[0] < 9
    narrow_fwd = narrow or mma_sync
    stages = 3 if not heavy and capability[0] >= 9 and shared_memory_per_block >= THREE_STAGE_SHARED_BYTES else 2
    fwd_rows = dq_rows = _chunk(block_q, 32 if heavy and fp32 else 128)
    dkdv_rows = _chunk(block_kv, 32 if heavy else 64 if mma_sync else 128)
    # sm_100 (tcgen05): the O, dK and dV accumulators live in tensor memory; registers hold the S/P chunk
    # and the predicate's temporaries. Heavy predicates and pair loads step 16 kv positions
    # (BLACKWELL_NARROW_PAIR_OPS); a 64-row forward on 4 warps with any predicate steps 32 (Swin, 3
    # operations, spilled 16 B at 64-wide steps; at 128 rows on 8 warps causal/documents fit at 64)
    tcgen05 = capability[0] >= 10
    blackwell_fwd_chunk = (
        16
        if tcgen05 and (pair_loads > 0 or pair_ops >= BLACKWELL_NARROW_PAIR_OPS)
        else 32
        if tcgen05 and pair_ops > 0 and fwd_rows < 128
        else None
    )
    # swapAB puts the q chunk in M of S and dP: a chunk of WGMMA_MIN_M q positions keeps those on wgmma too.
    # 16-bit only: wgmma reads transposed operands of 16-bit types (fp32 Swin dK/dV spilled 3.5 KB with it)
    swap = capability[0] >= 9 and dkdv_rows < WGMMA_MIN_M and not heavy and not fp32 if swap_ab is None else swap_ab

    def warps(rows: int) -> int:
        return 8 if rows >= 128 or heavy or fp32 else 4

    # dK/dV keeps two fp32 accumulators and the K and V rows per program: 64 x 128 of each is ~190
    # registers a thread at 4 warps before any score tile (NA2D spilled with triton 3.6's ptxas).
    # On sm_100 they live in tensor memory: the rows decide (radial's 64-row dK/dV spilled 8 B at 8 warps,
    # where ptxas held it to 80 registers; none at 4).
    big_dkdv = dkdv_rows * head_dim_pad >= DKDV_ELEMENTS_FOR_8_WARPS and not tcgen05
    dkdv_warps = 8 if mma_sync or big_dkdv else warps(dkdv_rows)

    return KernelConfig(
        fwd_chunk_n=_chunk(
            block_kv, blackwell_fwd_chunk or (32 if narrow_fwd else 64 if row_bytes > 128 or fp32 else 128)
        ),
        dq_chunk_n=_chunk(block_kv, 16 if narrow else 32),
        dkdv_chunk_m=_chunk(block_q, WGMMA_MIN_M if swap else 16 if narrow else 32),
        preprocess_rows=32 if heavy else 64,
        fwd_rows=fwd_rows,
        dq_rows=dq_rows,
        dkdv_rows=dkdv_rows,
        dkdv_swap_ab=swap,
        # a pair-indexed load (routing map, bias table) holds [rows, chunk] 64-bit pointers: at 4 warps the
        # forward of routing_top8 spilled (255 registers) once its tile gate was added (triton 3.9)
        fwd=LaunchOptions(num_warps=8 if pair_loads else warps(fwd_rows), num_stages=stages),
        preprocess=LaunchOptions(num_warps=4, num_stages=1),
        # the table-gradient one-hot of Swin/NA2D tables spilled 324 B at 4 warps (sm_90, triton 3.9)
        # before sm_90 a dQ program holds dQ, Q and dO in registers (mma.sync operands): MMA_SYNC_MAX_REGISTERS
        dq=LaunchOptions(
            num_warps=8 if table_grads else warps(dq_rows),
            num_stages=stages,
            max_registers=MMA_SYNC_MAX_REGISTERS if mma_sync else None,
        ),
        dkdv=LaunchOptions(num_warps=dkdv_warps, num_stages=stages),
    )
