"""Decode pricing: the launches ``maskir.decode`` makes for one call shape, from its decode plan alone.

The grid and tile lists are the runtime's own (``maskir.planner.decode.decode_grid``, the same SM count),
so the programs priced are the programs launched. Per program of R packed rows over T kv tiles of
b_c = DECODE_BLOCK_KV positions, F of them FULL (e bytes per element, D head dim):

    tile    = max(2 * 2 * R * b_c * D / (efficiency * tensor FLOP/s per SM),  2 * b_c * D * e / HBM bytes/s per SM)
              + tile_cycles / clock  (+ mask_ops_per_pair * R * b_c / ALU ops/s per SM if PARTIAL)
    program = (R * D * e + R * (D + 1) * 4) / HBM bytes/s per SM + T * tile     (q in; fp32 partial out)
    decode  = launch_us + max(makespan on the SMs, bytes / HBM bytes/s)
    merge   = launch_us + (partials * rows * (D + 1) * 4 + rows * D * e) / HBM bytes/s   (one fused launch)

K/V tiles stream from HBM once per program (the query heads of a kv head share it: GQA read once). The
comparison prices the training forward on the same call: one program per query head over the lists of
its 64-row q tile, no split, K/V read per query head. ``cache_floor_ms`` is reading the whole valid cache
once (K and V of every kv head) at HBM bandwidth: the bound a decode step of a dense pattern meets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskir.ir import Pattern
from maskir.planner.decode import DECODE_BLOCK_KV, DecodeGrid, decode_grid, decode_plan, kv_bucket
from maskir.sim.cost import FORWARD, Launch, PartWork, Workload, _kernel_launch, _memory_launch
from maskir.sim.hardware import Hardware, KernelModel, dtype_info, get_hardware, get_kernel
from maskir.sim.schedule import list_schedule

TRAINING_BLOCK_Q = 64
"""The training forward's q tile in the comparison (the planner's smallest)."""


@dataclass(frozen=True)
class _Rows:
    """Tile counts per program row, read by ``sim.cost`` like a ``TileTable``'s (``kv_count``, ``kv_full``)."""

    kv_count: np.ndarray
    kv_full: np.ndarray


@dataclass(frozen=True)
class DecodeReport:
    """Predicted decode launches of one call shape, the training forward on the same call, and the floor."""

    pattern: str
    hardware: str
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    n_q: int
    kv_len: int
    q_offset: int
    grid: DecodeGrid
    launches: tuple[Launch, ...]
    training: Launch
    kv_tiles_read: int  # K/V tiles (of DECODE_BLOCK_KV positions, per kv head or head pack) read from HBM
    cache_floor_ms: float

    @property
    def fwd_ms(self) -> float:
        return sum(launch.ms for launch in self.launches)

    @property
    def programs(self) -> int:
        return self.grid.programs

    @property
    def waves(self) -> int:
        return self.launches[0].schedule.waves

    @property
    def floor_ratio(self) -> float:
        """Predicted time over ``cache_floor_ms``."""
        return self.fwd_ms / self.cache_floor_ms

    def __str__(self) -> str:
        g, s = self.grid, self.launches[0].schedule
        lines = [
            f"maskir decode on {self.hardware}: {self.pattern}, {self.n_q} queries at {self.q_offset}.. over a "
            f"{self.kv_len}-position cache, B={self.batch} H={self.heads} Hkv={self.kv_heads} D={self.head_dim} "
            f"{self.dtype}",
            f"  grid: {g.pack} query heads packed per program ({g.rows} rows), {g.row_blocks} row block(s), "
            f"{g.slots} slot(s), {g.splits} kv splits: {g.programs} programs, {s.waves} waves, SM utilization "
            f"{s.utilization:.2f}",
            f"  forward   {self.fwd_ms:9.3f} ms  ({self.floor_ratio:.2f}x the cache's HBM floor "
            f"{self.cache_floor_ms:.3f} ms; training kernels {self.training.ms:.3f} ms, "
            f"{self.training.schedule.programs} programs)",
            "  launches:",
        ]
        for launch in self.launches:
            line = f"    {launch.name:<20} {launch.ms:9.3f} ms  "
            if launch.schedule is not None:
                line += f"{launch.schedule.programs} programs, makespan {launch.schedule.makespan * 1e3:.3f} ms,"
            else:
                line += "memory-bound,"
            lines.append(line + f" HBM floor {launch.hbm_floor_ms:.3f} ms")
        return "\n".join(lines)


def _split_counts(count: np.ndarray, full: np.ndarray, splits: int) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, FULL tiles) of each (list, split) chunk: the kernel's ceil(T / splits) entries per split."""
    per = -(-count // splits)
    lo = np.minimum(np.arange(splits)[None, :] * per[:, None], count[:, None])
    hi = np.minimum(lo + per[:, None], count[:, None])
    full_in = np.clip(np.minimum(hi, full[:, None]) - lo, 0, None)
    return hi - lo, full_in


def decode_launches(
    grid: DecodeGrid,
    count: np.ndarray,
    full: np.ndarray,
    groups: np.ndarray,
    hw: Hardware,
    kernel: KernelModel,
    *,
    head_dim: int,
    dtype: str,
) -> tuple[tuple[Launch, ...], int]:
    """(decode and merge launches, K/V tiles read) of a call's grid and lists (``count``/``full`` per list)."""
    elem, rate = dtype_info(dtype)
    clock = hw.clock_ghz * 1e9
    rows, b_c = grid.rows, DECODE_BLOCK_KV
    mma = 2 * 2 * rows * b_c * head_dim / (kernel.fwd_efficiency * rate * hw.tensor_flops_per_sm)
    load = 2 * b_c * head_dim * elem / hw.hbm_bytes_per_sm
    tile = max(mma, load) + kernel.tile_cycles / clock
    mask = kernel.mask_ops_per_pair * rows * b_c / hw.alu_ops_per_sm
    fixed = (rows * head_dim * elem + rows * (head_dim + 1) * 4) / hw.hbm_bytes_per_sm
    tiles, fulls = _split_counts(count, full, grid.splits)  # [lists per group * groups, splits]
    order = []  # launch order: program_id(0) = split * slots + slot fastest, then (b, pack, row block)
    for b in range(grid.batch):
        for pack in range(grid.head_packs):
            for rb in range(grid.row_blocks):
                base = (int(groups[pack]) * grid.batch + b) * grid.row_blocks + rb
                for split in range(grid.splits):
                    for slot in range(grid.slots):
                        order.append((base * grid.slots + slot, split))
    index = np.asarray(order)
    t, f = tiles[index[:, 0], index[:, 1]], fulls[index[:, 0], index[:, 1]]
    durations = fixed + t * (tile + mask) - f * mask
    schedule = list_schedule(durations, hw.sms, "launch")
    kv_tiles = int(t.sum())
    partials = grid.splits * grid.slots
    out_rows = grid.batch * grid.heads * grid.n_q
    bytes_read = (
        kv_tiles * 2 * b_c * head_dim * elem + out_rows * head_dim * elem + partials * out_rows * (head_dim + 1) * 4
    )
    floor = bytes_read / (hw.hbm_tbps * 1e12)
    launches = [
        Launch(
            "decode",
            False,
            (kernel.launch_us * 1e-6 + max(schedule.makespan, floor)) * 1e3,
            floor * 1e3,
            schedule,
            durations,
        )
    ]
    if partials > 1:
        merge = partials * out_rows * (head_dim + 1) * 4 + out_rows * head_dim * elem
        launches.append(_memory_launch("merge splits", False, merge, hw, kernel))
    return tuple(launches), kv_tiles


def training_launch(
    grid: DecodeGrid, count: np.ndarray, full: np.ndarray, hw: Hardware, kernel: KernelModel, *, head_dim, dtype, kv_len
) -> Launch:
    """The training forward on this call: a program per (batch, query head, q tile), its whole list, K/V per head."""
    elem, _ = dtype_info(dtype)
    lists = np.asarray(count[: grid.lists]), np.asarray(full[: grid.lists])
    part = PartWork(np.zeros(grid.heads, dtype=np.int64), (_Rows(*lists),), kv_len)
    work = Workload(TRAINING_BLOCK_Q, DECODE_BLOCK_KV, grid.heads, grid.n_q, kv_len, (part,))
    bytes_read = grid.heads * (int(lists[0].sum()) * 2 * DECODE_BLOCK_KV + 2 * grid.n_q) * head_dim * elem
    return _kernel_launch(
        "training forward", (FORWARD,), part, bytes_read, work, hw, kernel, 1, head_dim, dtype, "list"
    )


def simulate_decode(
    pattern: Pattern,
    n_q: int,
    kv_len: int,
    *,
    q_offset: int | None = None,
    hardware: str | Hardware = "h100",
    kernel: str | KernelModel = "maskir",
    batch: int = 1,
    heads: int = 32,
    kv_heads: int | None = None,
    head_dim: int = 128,
    dtype: str = "bf16",
    splits: int | None = None,
) -> DecodeReport:
    """Price ``maskir.decode`` for ``batch`` x ``n_q`` queries at ``q_offset`` (default ``kv_len - n_q``) over
    a cache of ``kv_len`` valid positions per batch, on ``hardware`` (its SM count picks the splits)."""
    hw, model = get_hardware(hardware), get_kernel(kernel)
    kv_heads = heads if kv_heads is None else kv_heads
    for name, value in (("n_q", n_q), ("kv_len", kv_len), ("batch", batch), ("heads", heads), ("kv_heads", kv_heads)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")
    if heads % kv_heads:
        raise ValueError(f"Key/value heads must evenly divide query heads, got heads_q={heads}, heads_kv={kv_heads}.")
    offset = kv_len - n_q if q_offset is None else q_offset
    if offset < 0:
        raise ValueError(f"q_offset must be >= 0, got {offset} (default kv_len - n_q).")
    offsets, lens = np.full(batch, offset, dtype=np.int64), np.full(batch, kv_len, dtype=np.int64)
    plan = decode_plan(pattern, kv_bucket(pattern, max(kv_len, offset + n_q)), heads)
    grid, lists, groups = decode_grid(plan, kv_heads, n_q, offsets, lens, sms=hw.sms, splits=splits)
    count, full = lists.count.astype(np.int64), lists.full.astype(np.int64)
    launches, kv_tiles = decode_launches(grid, count, full, groups, hw, model, head_dim=head_dim, dtype=dtype)
    elem, _ = dtype_info(dtype)
    cache_bytes = 2 * batch * kv_heads * kv_len * head_dim * elem
    return DecodeReport(
        pattern=str(pattern),
        hardware=hw.name,
        batch=batch,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        n_q=n_q,
        kv_len=kv_len,
        q_offset=offset,
        grid=grid,
        launches=launches,
        training=training_launch(grid, count, full, hw, model, head_dim=head_dim, dtype=dtype, kv_len=kv_len),
        kv_tiles_read=kv_tiles,
        cache_floor_ms=cache_bytes / (hw.hbm_tbps * 1e12) * 1e3,
    )
