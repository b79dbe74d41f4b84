"""maskir.distributed: sharding properties (one process) and context-parallel attention over gloo in 2 and
4 processes, outputs and q/k/v gradients against the single-process float64 reference.

Token counts are chosen not to divide by the world size nor by the tile (16 tokens here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.utils._python_dispatch import TorchDispatchMode

from maskir import Canvas, Causal, Columns, Dilated, Segments, Window, patterns
from maskir.distributed import shard
from maskir.distributed.balance import differencing, imbalance, lpt, snake
from maskir.distributed.compare import torch_balances
from maskir.distributed.shard import tile_work
from maskir.distributed.torch_balancers import token_plan
from maskir.reference import reference_attention, reference_mask

BLOCK = {"block_q": 16, "block_kv": 16}
CASES = {
    "causal": (Causal(), Canvas(75)),
    "sliding_window_sinks": (patterns.streaming_llm(4, 24), Canvas(90)),
    "documents": (patterns.document(causal=True), Canvas(84)),
    "na2d": (patterns.natten(5), Canvas((9, 11))),
    "na3d": (patterns.natten((3, 3, 5)), Canvas((3, 6, 7))),
    "swin": (patterns.swin(4), Canvas((12, 10))),
    "radial": (patterns.radial(4, 40, 16), Canvas((4, 40))),
}
MORE_CASES = {
    "cross_window": (Window(8, 8), Canvas(50), Canvas(70)),
    "fewer_tiles_than_ranks": (Causal(), Canvas(40), None),
}
"""(pattern, q canvas, kv canvas or None): cross-attention on canvases of different sizes, and 3 q tiles for
4 ranks (one rank holds no tokens but still sends and receives)."""
DOCUMENT_STARTS = (0, 13, 40, 41, 70)
"""Packed documents of uneven lengths for the ``documents`` case."""


def _segments(n: int, batch: int) -> torch.Tensor:
    ids = torch.zeros(n, dtype=torch.int32)
    for start in DOCUMENT_STARTS[1:]:
        ids[start:] += 1
    return ids.expand(batch, -1).contiguous()


def _bias_score_mod(score, b, h, q_idx, kv_idx):
    """An ALiBi-style score_mod: the kernels must see original token indices for it to match."""
    return score - 0.05 * (h + 1) * (q_idx - kv_idx).abs()


# -- sharding, one process ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_token_is_held_by_exactly_one_rank(name, ranks):
    pattern, canvas = CASES[name]
    cp = shard(pattern, canvas, ranks, **BLOCK)
    for indices in (cp.token_indices, cp.kv_token_indices):
        held = torch.cat([indices(r) for r in range(ranks)])
        assert held.dtype == torch.long
        assert torch.equal(held.sort().values, torch.arange(canvas.size))


@pytest.mark.parametrize("name", [n for n in CASES if n != "documents"])
def test_rank_sub_plans_together_allow_exactly_the_pattern(name):
    """Stacking each rank's sub-plan mask over its own rows gives the reference mask: no pair lost or added."""
    pattern, canvas = CASES[name]
    cp = shard(pattern, canvas, 3, **BLOCK)
    stacked = np.zeros((canvas.size, canvas.size), dtype=bool)
    for rank in range(3):
        rows = cp.token_indices(rank).numpy()
        stacked[rows] = cp.sub_plans[rank].to_mask()[rows]
    assert np.array_equal(stacked, reference_mask(pattern, canvas))


def test_cross_attention_places_each_kv_token_once_and_keeps_every_pair():
    pattern, canvas, kv_canvas = MORE_CASES["cross_window"]
    cp = shard(pattern, canvas, 3, kv_canvas=kv_canvas, **BLOCK)
    held = torch.cat([cp.kv_token_indices(r) for r in range(3)])
    assert torch.equal(held.sort().values, torch.arange(kv_canvas.size))
    stacked = np.zeros((canvas.size, kv_canvas.size), dtype=bool)
    for rank in range(3):
        rows = cp.token_indices(rank).numpy()
        stacked[rows] = cp.sub_plans[rank].to_mask()[rows]
    assert np.array_equal(stacked, reference_mask(pattern, canvas, kv_canvas))


@pytest.mark.parametrize("name", [n for n in CASES if n != "documents"])
def test_each_rank_fetches_every_allowed_kv_row_it_does_not_hold_from_its_owner(name):
    """Own rows plus fetched rows cover every key the rank's queries may attend (reference mask); fetched
    rows come from their owners, only from other ranks, and add up to bytes_moved <= a ring all-gather."""
    pattern, canvas = CASES[name]
    cp = shard(pattern, canvas, 4, **BLOCK)
    mask = reference_mask(pattern, canvas)
    for rank in range(4):
        fetched = np.concatenate(list(cp.received[rank]))
        attended = np.flatnonzero(mask[cp.token_indices(rank).numpy()].any(axis=0))
        assert set(attended) <= set(fetched) | set(cp.kv_token_indices(rank).tolist())
        assert (cp.kv_owner[fetched] != rank).all() and np.unique(fetched).size == fetched.size
        for source, tokens in cp.received_tokens(rank).items():
            assert (cp.kv_owner[tokens] == source).all()
    total = sum(cp.bytes_received(r, 16, torch.float32) for r in range(4))
    assert total == cp.bytes_moved(16, torch.float32) <= cp.all_gather_bytes(16, torch.float32)


@pytest.mark.parametrize("name", CASES)
def test_balance_meets_the_goal_and_is_never_worse_than_ptrrs_rule(name):
    """The chosen split is within 1.05 (or 0.02 of LPT on the same tiles) and no worse than PTRR's snake on
    the same tiles (torch refuses these sizes, so the snake stands in); .balance is its imbalance."""
    pattern, canvas = CASES[name]
    for ranks in (2, 4):
        cp = shard(pattern, canvas, ranks, **BLOCK)
        work = tile_work(cp.plan)
        chosen = imbalance(work, _tile_owner(cp), ranks)
        assert chosen <= max(1.05, imbalance(work, lpt(work, ranks), ranks) + 0.02) + 1e-9
        assert chosen <= imbalance(work, snake(work, ranks), ranks) + 1e-9  # PTRR's rule, same tiles
        assert cp.balance == pytest.approx(chosen)


@pytest.mark.parametrize(
    ("pattern", "canvas"),
    [
        ((Window(127, 0) | Columns(64, 1)) & Causal(), Canvas(2048)),  # two parts: local and gathered columns
        (Dilated(64, 4), Canvas(2048)),  # a permuted layout: torch's chunks cut maskir's tiles
        (patterns.natten(9), Canvas((32, 64))),
    ],
)
@pytest.mark.parametrize("ranks", [4, 8])
def test_balance_is_never_worse_than_torchs_ptrr_on_the_same_measure(pattern, canvas, ranks):
    """Where torch's PTRR and HeadTail split the tokens, maskir's split is no worse on .balance's measure
    (computed pairs of maskir's plan), and tile_work adds up to every rank's computed pairs."""
    cp = shard(pattern, canvas, ranks)
    head_tail, ptrr = torch_balances(cp, token_plan(pattern, canvas))
    assert ptrr is not None and cp.balance <= min(ptrr, head_tail) + 1e-12
    loads = np.bincount(_tile_owner(cp), weights=tile_work(cp.plan), minlength=ranks)
    assert loads.tolist() == [cp.computed_pairs(r) for r in range(ranks)]


def test_when_torchs_chunks_cut_every_tiled_split_shard_falls_back_to_token_order_tiles():
    """Shifted Swin windows at 8 ranks: no split of the window-major tiles is as even as torch's PTRR split of
    the tokens, so shard takes token-order tiles nested in torch's chunks, where PTRR's split is a candidate."""
    pattern, canvas = patterns.swin(8, shifted=True), Canvas((64, 128))
    cp = shard(pattern, canvas, 8)
    _, ptrr = torch_balances(cp, token_plan(pattern, canvas))
    assert cp.plan.layout.name == "identity" and cp.balance <= ptrr + 1e-12


def test_differencing_splits_equal_tiles_evenly_and_assigns_every_tile():
    owner = differencing(np.full(24, 5.0), 8)
    assert np.bincount(owner, minlength=8).tolist() == [3] * 8
    work = np.array([9, 7, 6, 5, 5, 4, 3, 3, 2, 1], dtype=float)
    owner = differencing(work, 3)
    assert owner.min() >= 0 and owner.max() < 3 and imbalance(work, owner, 3) <= imbalance(work, lpt(work, 3), 3)


def _tile_owner(cp) -> np.ndarray:
    owner = np.empty(cp.plan.parts[0].n_q_tiles, dtype=np.int64)
    for rank, tiles in enumerate(cp.rank_tiles):
        owner[tiles] = rank
    return owner


def test_local_pattern_moves_a_fraction_of_an_all_gather():
    cp = shard(patterns.sliding_window(128), Canvas(4096), 8)
    assert cp.balance <= 1.05
    assert cp.bytes_moved(128, torch.bfloat16) <= 0.25 * cp.all_gather_bytes(128, torch.bfloat16)
    assert "rank 7" in cp.describe()


def test_segments_given_to_shard_keep_every_allowed_pair_and_fetch_less():
    """With the ids, a packed-documents pattern keeps every pair its documents allow (the rank sub-plans
    stacked equal the reference mask) and fetches less than its static superset (causal)."""
    pattern, canvas = CASES["documents"]
    ids = _segments(canvas.size, 1)
    static, opened = shard(pattern, canvas, 3, **BLOCK), shard(pattern, canvas, 3, segments=ids, **BLOCK)
    assert opened.bytes_moved(16, torch.float32) < static.bytes_moved(16, torch.float32)
    stacked = np.zeros((canvas.size, canvas.size), dtype=bool)
    data = (ids.numpy(), ids.numpy())
    for rank in range(3):
        rows = opened.token_indices(rank).numpy()
        stacked[rows] = opened.sub_plans[rank].to_mask(segments=data)[rows]
    assert np.array_equal(stacked, reference_mask(pattern, canvas, segments=data))


def test_shard_rejects_bad_world_size_and_routing():
    with pytest.raises(ValueError, match="world_size"):
        shard(Causal(), Canvas(64), 0)
    with pytest.raises(ValueError, match="Routing"):
        shard(patterns.moba(16, 2), Canvas(64), 2)
    with pytest.raises(ValueError, match="rank"):
        shard(Causal(), Canvas(64), 2).token_indices(2)


def test_compile_refuses_a_plan_of_another_pattern():
    import maskir

    cp = shard(Causal(), Canvas(64), 2, **BLOCK)
    with pytest.raises(ValueError, match="plan was made for"):
        maskir.compile(patterns.swin(4), Canvas(64), heads=1, head_dim=16, plan=cp.sub_plans[0], backend="reference")


# -- maskir cp: beside torch's balancers and a ring all-gather ---------------------------------------


def test_torch_balancers_split_causal_evenly_and_refuse_sizes_they_cannot_split():
    """HeadTail pairs 128-block chunks 0+3 and 1+2 of a causal 1024: 1+2+7+8 = 3+4+5+6 blocks each."""
    cp = shard(Causal(), Canvas(1024), 2, block_q=128, block_kv=128)
    assert torch_balances(cp, token_plan(Causal(), Canvas(1024))) == (pytest.approx(1.0), pytest.approx(1.0))
    ragged = shard(Causal(), Canvas(1000), 8)
    assert torch_balances(ragged, token_plan(Causal(), Canvas(1000))) == (None, None)


def test_cp_command_prints_maskir_beside_torch_and_the_ring(capsys):
    from maskir.cli import main

    assert main(["cp", "Window(255, 0) & Causal()", "--canvas", "2048", "--ranks", "2", "8"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(row[2]) for row in rows] == [2, 8]
    for row in rows:
        maskir_balance, head_tail, ptrr = float(row[3].split()[0]), float(row[4]), float(row[5])
        assert maskir_balance <= ptrr <= head_tail
        assert float(row[8].strip(" %")) <= 100 and float(row[9]) > 0 and float(row[10]) > 0


# -- attention over gloo -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case(name: str) -> tuple:
    """(pattern, q canvas, kv canvas or None for self-attention) of a case."""
    return (*CASES[name], None) if name in CASES else MORE_CASES[name]


def _inputs(name: str, heads: int, kv_heads: int):
    """q, k, v, dout (float32, seeded by the case) and the segment ids of a case."""
    pattern, canvas, kv_canvas = _case(name)
    generator = torch.Generator().manual_seed(len(name))
    q, dout = (torch.randn(2, heads, canvas.size, 16, generator=generator) for _ in range(2))
    k, v = (torch.randn(2, kv_heads, (kv_canvas or canvas).size, 16, generator=generator) for _ in range(2))
    segments = _segments(canvas.size, 2) if any(isinstance(node, Segments) for node in pattern.walk()) else None
    return q, k, v, dout, segments


def _expected(name: str, heads: int, kv_heads: int, score_mod) -> list[torch.Tensor]:
    """Output and q/k/v gradients of the whole problem in one process, float64 dense reference."""
    pattern, canvas, kv_canvas = _case(name)
    q, k, v, dout, segments = _inputs(name, heads, kv_heads)
    full = [t.double().requires_grad_() for t in (q, k, v)]
    repeat = heads // kv_heads
    out = reference_attention(
        full[0], full[1].repeat_interleave(repeat, 1), full[2].repeat_interleave(repeat, 1), pattern, canvas,
        kv_canvas=kv_canvas, score_mod=score_mod, segments=segments,
    )  # fmt: skip
    (out * dout.double()).sum().backward()
    return [out.detach(), *(t.grad for t in full)]


def _check_case(rank: int, world: int, check: tuple, expected: list[torch.Tensor], mesh) -> None:
    from maskir.distributed import attention, gather, scatter

    name, backend, heads, kv_heads, score_mod = check
    pattern, canvas, kv_canvas = _case(name)
    q, k, v, dout, segments = _inputs(name, heads, kv_heads)
    cp = shard(pattern, canvas, world, heads=heads, kv_canvas=kv_canvas, segments=segments, **BLOCK)
    local = [scatter(q, cp, rank), scatter(k, cp, rank, kv=True), scatter(v, cp, rank, kv=True)]
    local = [t.requires_grad_() for t in local]
    out = attention(*local, cp, group=mesh, mesh_dim="cp", segments=segments, score_mod=score_mod, backend=backend)
    overlapped = type(out.grad_fn).__name__ == "OverlappedAttentionBackward"
    assert overlapped == (backend != "reference"), f"{name} ({backend}): overlapped={overlapped}"
    (out * scatter(dout, cp, rank)).sum().backward()
    got = [gather(out, cp), *(gather(t.grad, cp, kv=i > 0) for i, t in enumerate(local))]
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        error = (a.double() - b).abs().max().item()
        assert error < 2e-5, (
            f"{name} on {world} ranks ({backend}): {what} differs from the float64 reference by {error}"
        )


def _worker(rank: int, world: int, port: int, checks: list[tuple], expected: list[list[torch.Tensor]]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("cp",))  # attention takes the mesh, gather the group
    try:
        for check, wanted in zip(checks, expected):
            _check_case(rank, world, check, wanted, mesh)
    finally:
        dist.destroy_process_group()


def _spawn(world: int, checks: list[tuple]) -> None:
    """Run ``checks`` (name, backend, heads, kv heads, score_mod) on ``world`` gloo processes."""
    expected = [_expected(name, heads, kv_heads, score_mod) for name, _, heads, kv_heads, score_mod in checks]
    mp.spawn(_worker, args=(world, _free_port(), checks, expected), nprocs=world, join=True)


def test_two_ranks_match_the_float64_reference():
    """Every pattern of CASES on the reference backend (one compact problem after the exchange), and through
    the generated Triton kernels (interpreter), whose backward reads the given out and lse, so the exchange
    overlaps the local part and the parts merge by lse (``overlap``): causal (rows the remote part does not
    allow), packed documents (segment ids), and NA2D with GQA and a score_mod."""
    checks = [(name, "reference", 2, 2, None) for name in CASES]
    checks += [("causal", "triton", 1, 1, None), ("documents", "triton", 1, 1, None)]
    checks += [("na2d", "triton", 2, 1, _bias_score_mod)]
    _spawn(2, checks)


def test_four_ranks_match_the_float64_reference():
    _spawn(4, [(name, "reference", 1, 1, None) for name in [*CASES, *MORE_CASES]])


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns while active (forward and CPU backward alike)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(result):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return result


def _buffers_worker(rank: int, world: int, port: int, case: tuple) -> None:
    """Forward and backward of one rank under ``_Shapes``, on both paths (one compact problem: reference;
    overlapped local and remote parts: Triton): no tensor may have an extent above the rows the rank holds
    plus the rows it fetches (a canvas-sized buffer would have one of N)."""
    from maskir.distributed import attention, scatter

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pattern, canvas = case
        cp = shard(pattern, canvas, world, block_q=64, block_kv=64)
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, canvas.size, 16, generator=generator) for _ in range(3))
        rows = cp.kv_token_indices(rank).numel() + sum(t.size for t in cp.received[rank])
        for backend in ("reference", "triton"):
            local = [scatter(q, cp, rank).requires_grad_()]
            local += [scatter(t, cp, rank, kv=True).requires_grad_() for t in (k, v)]
            with _Shapes() as recorded:
                attention(*local, cp, backend=backend).sum().backward()
            largest = max(max(shape, default=0) for shape in recorded.shapes)
            assert 0 < largest <= rows < canvas.size // 2 + canvas.size // 4, (backend, rank, largest, rows)
            assert all(t.grad is not None for t in local)
    finally:
        dist.destroy_process_group()


def test_rank_buffers_hold_only_its_rows_and_the_rows_it_fetches():
    """Memory O(N / world + rows fetched): on a causal sliding window over 600 tokens in 2 ranks, every tensor
    the forward and backward create is at most the rank's own plus fetched rows long, far below N."""
    case = ((Window(31, 0) & Causal()), Canvas(600))
    mp.spawn(_buffers_worker, args=(2, _free_port(), case), nprocs=2, join=True)


@pytest.mark.slow  # the same flow as test_two_ranks_match_the_float64_reference, from the example's script
def test_context_parallel_example_matches_one_process(tmp_path):
    """examples/context_parallel.py launches 2 CPU processes; output and weight gradient equal one process's."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "context_parallel.py")],
        env={**os.environ, "MASKIR_CACHE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("max |")]
    assert len(errors) == 2 and max(errors) < 1e-4, done.stdout
    assert "rank 1:" in done.stdout
