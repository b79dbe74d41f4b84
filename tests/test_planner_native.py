"""mask_mods compiled to a vectorised C cell counter (``maskir.planner.native``) count exactly what torch
counts: every modelled operation (floor ``//`` and ``%`` of negative values, where, min/max/abs, bool and
2-D tables, captured 0-d tensors, int results), ragged edge chunks, per-head masks; int32 only when every
value fits, int64 otherwise; anything outside the model gives no counter (torch counts instead)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from maskir.ir import Predicate
from maskir.planner import cells, native
from maskir.planner.fallback import EMPTY, FULL, PARTIAL

if native.COMPILER.compiler is None:  # pragma: no cover (every machine this project runs on has cc)
    pytest.skip("no C compiler", allow_module_level=True)

N_Q, N_KV = 300, 250
DOCUMENTS = torch.tensor([0] * 37 + [1] * 90 + [2] * 50 + [3] * 123)
KEEP = torch.tensor([True] * 200 + [False] * 60 + [True] * 40)
MODULI = torch.tensor([2, 5, 3])
LIMIT = torch.tensor(150)
HEAD_OFFSETS = torch.arange(3 * N_KV).reshape(3, N_KV) % 11

MASK_MODS = {
    "documents_product": lambda b, h, q, kv: (kv <= q) & (DOCUMENTS[q] == DOCUMENTS[kv]) & ((q * kv) % 7 != 0),
    "negative_floor": lambda b, h, q, kv: ((kv - q) // 7 % -5 == -2) | ((q - 2 * kv) % 9 < 4),
    "where_minmax_abs": lambda b, h, q, kv: torch.where(
        q > 100, abs(q - kv) <= 40, torch.minimum(q, kv) > torch.maximum(kv - 60, LIMIT - q)
    ),
    "bool_table_xor": lambda b, h, q, kv: KEEP[kv] & ~KEEP[q] ^ (q // 50 == kv // 30),
    "per_head_tables": lambda b, h, q, kv: (q >= 20) & ((q * kv + h) % MODULI[h] != 0) & (HEAD_OFFSETS[h, kv] < 6),
    "int_result": lambda b, h, q, kv: (q + kv) % 3,
    "methods": lambda b, h, q, kv: (q - kv).abs().lt(30).logical_or(kv.eq(q // 2)),
}


def _torch_counts(predicate, head, origins, side):
    """The reference: torch's eager counter per chunk (the path the planner takes without C)."""
    device = torch.device("cpu")
    return torch.stack(
        [
            cells._edge_counts(predicate.fn, int(q0), int(kv0), side, side, N_Q, N_KV, head, device)
            for q0, kv0 in origins
        ]
    )


@pytest.mark.parametrize("name", list(MASK_MODS))
@pytest.mark.parametrize("head", [0, 2])
def test_compiled_counts_equal_torch_counts_on_ragged_chunks(name, head):
    predicate = Predicate(MASK_MODS[name])
    counter = native.counter(predicate, head, N_Q, N_KV)
    assert counter is not None
    origins = np.array([(i, j) for i in range(0, N_Q, 128) for j in range(0, N_KV, 128)])  # 3 x 2, ragged
    expected = _torch_counts(predicate, head, origins, 128)
    np.testing.assert_array_equal(counter.count(origins, 128, 128).numpy(), expected.numpy())
    assert expected.sum() > 0 and (expected < 256).any()


def test_int32_only_when_every_value_fits():
    """``q * kv`` fits int32 at 16K tokens, not at 64K; a constant of 2^40 never does."""
    product = Predicate(lambda b, h, q, kv: (q * kv) % 65537 == 1)
    assert "const int32_t q" in native.source(product, 0, 1 << 14, 1 << 14)[0]
    assert "const int64_t q" in native.source(product, 0, 1 << 16, 1 << 16)[0]
    large = Predicate(lambda b, h, q, kv: (q + (1 << 40)) % 3 == kv % 3)
    assert "const int64_t q" in native.source(large, 0, 100, 100)[0]
    counter = native.counter(large, 0, N_Q, N_KV)
    origins = np.array([(0, 0), (256, 128)])
    np.testing.assert_array_equal(counter.count(origins, 128, 128).numpy(), _torch_counts(large, 0, origins, 128))


@pytest.mark.parametrize(
    "mask_mod",
    [
        lambda b, h, q, kv: q.float() < kv,  # floats
        lambda b, h, q, kv: (q // kv) > 1,  # kv may be 0
        lambda b, h, q, kv: DOCUMENTS[q] == DOCUMENTS[kv],  # the table is shorter than the canvas (400)
        lambda b, h, q, kv: (q >> 2) == kv,  # shifts
        lambda b, h, q, kv: q < kv if q > 3 else kv < q,  # Python control flow
        lambda b, h, q, kv: (q * kv * (1 << 50)) % 5 == 0,  # beyond int64
    ],
    ids=["float", "division_by_zero", "table_too_short", "shift", "control_flow", "int64_overflow"],
)
def test_what_the_model_leaves_out_gets_no_counter(mask_mod):
    assert native.counter(Predicate(mask_mod), 0, 400, 400) is None


def test_without_a_c_compiler_there_is_no_counter(monkeypatch):
    monkeypatch.setattr(native.COMPILER, "compiler", None)
    monkeypatch.setattr(native.COMPILER, "built", {})
    assert native.counter(Predicate(MASK_MODS["documents_product"]), 0, N_Q, N_KV) is None


@pytest.mark.parametrize("name", ["documents_product", "per_head_tables"])
def test_plans_counted_in_c_give_the_brute_force_tile_classes(name, monkeypatch):
    """Chunks of 128 on the ragged 300 x 250 grid, every chunk through the C counter (no witness pass)."""
    monkeypatch.setattr(cells, "CHUNK", 128)
    monkeypatch.setattr(cells, "COMPILE_ABOVE_PAIRS", 0)
    monkeypatch.setattr(cells, "WITNESS_ABOVE_PAIRS", 1 << 62)
    used = []
    evaluate = cells.ChunkCounts._evaluate_native
    monkeypatch.setattr(cells.ChunkCounts, "_evaluate_native", lambda self, *a: used.append(1) or evaluate(self, *a))
    predicate = Predicate(MASK_MODS[name])
    rows, cols = np.divmod(np.arange(19 * 16), 16)
    kinds = cells.tile_kinds(predicate, N_Q, N_KV, 16, 16, rows, cols, 1)
    cells.chunk_counts.cache_clear()
    allowed = np.zeros((N_Q, N_KV), dtype=bool)
    q, kv = torch.arange(N_Q)[:, None], torch.arange(N_KV)[None, :]
    allowed[:] = torch.as_tensor(predicate.fn(0, 1, q, kv)).numpy()
    tiles = [allowed[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16] for r, c in zip(rows, cols)]
    expected = [EMPTY if not t.any() else FULL if t.all() else PARTIAL for t in tiles]
    np.testing.assert_array_equal(kinds, expected)
    assert used


def test_arithmetic_on_two_bools_is_left_to_torch():
    """torch keeps ``bool + bool`` a bool (an or): ``((q > 5) + (kv > 3)) == 1`` is False where both hold, a
    count of 2 in C; the tracer declines it rather than differ."""
    assert native.counter(Predicate(lambda b, h, q, kv: ((q > 5) + (kv > 3)) == 1), 0, 64, 64) is None


def test_the_build_directory_is_removed_at_exit_by_its_own_process_only(tmp_path):
    """A forked child's exit leaves the parent's directory alone; the parent's exit removes it."""
    native._remove(tmp_path, owner=-1)
    assert tmp_path.is_dir()
    native._remove(tmp_path, owner=os.getpid())
    assert not tmp_path.exists()
