"""Run-time tile gates (maskir.runtime.gating): never close a tile that holds an allowed pair, and close
exactly the empty ones where the gate is exact (contiguous documents; tiles aligned to routing blocks)."""

import dataclasses

import numpy as np
import pytest
import torch

from maskir.canvas import Canvas
from maskir.codegen.common.tables import part_tables
from maskir.ir import Blocks, Causal, Neighborhood, Routing, Segments, Window
from maskir.planner import plan, single_part
from maskir.planner.gates import full_tree, gate_tree
from maskir.reference import reference_mask
from maskir.runtime.gating import ListShape, PartGate, compact
from maskir.runtime.routing import routing_map


def test_gate_trees_follow_and_and_or_and_leave_out_implied_static_conjuncts():
    assert gate_tree(Segments() & Causal()) == ("leaf", Segments())
    assert gate_tree(Causal() & (Routing(16, 2) & Segments())) == (
        "and",
        ("leaf", Routing(16, 2)),
        ("leaf", Segments()),
    )
    # under | a static side keeps the tiles its own plan lists
    assert gate_tree(Segments() | Window(4, 4)) == ("or", ("leaf", Segments()), ("static", Window(4, 4)))
    assert gate_tree(Causal() - Segments()) is None  # ~Segments() closes nothing
    assert gate_tree(Causal()) is None


def test_full_trees_cover_the_whole_pattern_or_nothing():
    """Proving a tile FULL needs every conjunct, the static ones included; a part over run-time data that
    no gate reads (~Segments()) proves nothing."""
    assert full_tree(Segments() & Causal()) == ("and", ("leaf", Segments()), ("static", Causal()))
    assert full_tree((Routing(16, 2) & Causal()) | Blocks(16)) == (
        "or",
        ("and", ("leaf", Routing(16, 2)), ("static", Causal())),
        ("static", Blocks(16)),
    )
    assert full_tree(Causal() - Segments()) is None


def _tile_has_pair(planned, tables, mask, q_tile, kv_tile, every: bool = False) -> np.ndarray:
    """Brute force: whether entry (q_tile[e], kv_tile[e]) holds an allowed pair of ``mask`` [Nq, Nkv]
    (``every``: whether all of its pairs are allowed)."""
    part = planned.parts[0]
    q_tokens = part.layout.q_tokens if part.layout.q_tokens is not None else np.arange(part.n_q_tiles * planned.block_q)
    kv_tokens = (
        part.layout.kv_tokens if part.layout.kv_tokens is not None else np.arange(part.n_kv_tiles * planned.block_kv)
    )
    out = []
    for i, j in zip(q_tile.tolist(), kv_tile.tolist()):
        qs = q_tokens[i * planned.block_q : (i + 1) * planned.block_q]
        ks = kv_tokens[j * planned.block_kv : (j + 1) * planned.block_kv]
        qs, ks = qs[(qs >= 0) & (qs < mask.shape[0])], ks[(ks >= 0) & (ks < mask.shape[1])]
        pairs = mask[np.ix_(qs, ks)]
        out.append(bool(pairs.all() if every else pairs.any()))
    return np.array(out)


def _flags(planned, tensors):
    tables = part_tables(planned, planned.parts[0], "cpu")
    gate = PartGate.build(planned, planned.parts[0], tables)
    forward, backward = gate.flags(tables, tensors)
    return tables, forward, backward


@pytest.mark.parametrize("layout", ["identity", "tiled"])
def test_contiguous_documents_close_exactly_the_empty_tiles(layout):
    canvas = Canvas((16, 16))
    pattern = Segments() & Neighborhood(5)
    planned = plan(pattern, canvas, heads=1, block_q=16, block_kv=16, layout=layout)
    ids = torch.repeat_interleave(torch.arange(4), torch.tensor([40, 100, 16, 100]))[None].to(torch.int32)
    tables, forward, backward = _flags(planned, {"segments_q": ids, "segments_kv": ids})
    mask = reference_mask(pattern, canvas, segments=ids)
    segments_only = reference_mask(Segments(), canvas, segments=ids)
    got = forward[0, 0].numpy() != 0
    assert not (_tile_has_pair(planned, tables, mask, tables.kv_rows, tables.kv_index) & ~got).any()  # sound
    if layout == "identity":  # runs of tokens: the document ranges are exact
        want = _tile_has_pair(planned, tables, segments_only, tables.kv_rows, tables.kv_index)
        assert np.array_equal(got, want) and not got.all()
    back = backward[0, 0].numpy() != 0
    assert not (_tile_has_pair(planned, tables, mask, tables.q_index, tables.q_rows) & ~back).any()


def test_a_union_with_a_static_side_keeps_that_sides_tiles_open():
    """The suite's routing entry: chosen blocks, or the diagonal block (both causal)."""
    canvas = Canvas(256)
    pattern = (Routing(32, 2) & Causal()) | (Blocks(32) & Causal())
    planned = plan(pattern, canvas, heads=2, block_q=32, block_kv=32, layout="identity")
    q = torch.randn(1, 2, 256, 8)
    indices = torch.randint(0, 8, (1, 2, 8, 2))
    tables, forward, backward = _flags(planned, {"routing_map": routing_map(q, q, Routing(32, 2), indices)})
    for head in range(2):
        mask = reference_mask(pattern, canvas, head=head, routing=indices)
        want = _tile_has_pair(planned, tables, mask, tables.kv_rows, tables.kv_index)
        assert np.array_equal(forward[0, head].numpy() != 0, want) and not want.all()
        want_back = _tile_has_pair(planned, tables, mask, tables.q_index, tables.q_rows)
        assert np.array_equal(backward[0, head].numpy() != 0, want_back)


@pytest.mark.parametrize("routed", [False, True], ids=["documents", "routing"])
def test_flags_prove_full_exactly_the_tiles_whose_every_pair_is_allowed(routed):
    """Flag 2 (FULL: the kernels skip the predicate) on contiguous documents and on tiles aligned to
    routing blocks: exactly the listed tiles whose every pair the data allows, in both directions."""
    canvas = Canvas(256)
    if routed:
        pattern = (Routing(32, 2) & Causal()) | (Blocks(32) & Causal())
        q = torch.randn(1, 2, 256, 8)
        indices = torch.randint(0, 8, (1, 2, 8, 2))
        tensors, data = {"routing_map": routing_map(q, q, Routing(32, 2), indices)}, {"routing": indices}
    else:
        pattern = Segments() & Causal()
        ids = torch.repeat_interleave(torch.arange(4), torch.tensor([40, 88, 64, 64]))[None].to(torch.int32)
        tensors, data = {"segments_q": ids, "segments_kv": ids}, {"segments": ids}
    planned = plan(pattern, canvas, heads=2, block_q=16, block_kv=32, layout="identity")
    tables, forward, backward = _flags(planned, tensors)
    for head in range(2):
        mask = reference_mask(pattern, canvas, head=head, **data)
        want = _tile_has_pair(planned, tables, mask, tables.kv_rows, tables.kv_index, every=True)
        assert np.array_equal(forward[0, min(head, forward.shape[1] - 1)].numpy() == 2, want) and want.any()
        want_back = _tile_has_pair(planned, tables, mask, tables.q_index, tables.q_rows, every=True)
        assert np.array_equal(backward[0, min(head, backward.shape[1] - 1)].numpy() == 2, want_back)


def test_the_planner_pre_lists_static_subtrees_and_gates_plan_nothing(monkeypatch):
    """plan() stores the tiles of the static side of a union (the diagonal blocks) once; building the gate
    and its per-call flags then never calls the planner."""
    canvas = Canvas(256)
    pattern = (Routing(32, 2) & Causal()) | (Blocks(32) & Causal())
    planned = plan(pattern, canvas, heads=2, block_q=32, block_kv=32, layout="identity")
    listed = dict(planned.parts[0].static_tables)
    # the routing's causal side, the diagonal (both gate open tiles and prove FULL ones)
    assert list(listed) == [Causal(), Blocks(32) & Causal()]
    assert sorted(zip(*listed[Blocks(32) & Causal()].pairs()[:2])) == [(i, i) for i in range(8)]
    assert len(listed[Causal()].pairs()[0]) == 8 * 9 // 2

    def no_planning(*args, **kwargs):
        raise AssertionError("planned while building the gate")

    monkeypatch.setattr(single_part, "plan_part", no_planning)
    indices = torch.randint(0, 8, (1, 2, 8, 2))
    q = torch.zeros(1, 2, 256, 8)
    tables, forward, _ = _flags(planned, {"routing_map": routing_map(q, q, Routing(32, 2), indices)})
    assert forward.shape == (1, 2, tables.kv_index.numel())


def test_a_part_without_pre_listed_static_subtrees_is_not_gated():
    planned = plan((Routing(32, 2) & Causal()) | (Blocks(32) & Causal()), Canvas(256), block_q=32, block_kv=32)
    bare = dataclasses.replace(planned, parts=(dataclasses.replace(planned.parts[0], static_tables=()),))
    assert PartGate.build(bare, bare.parts[0], part_tables(bare, bare.parts[0], "cpu")) is None


def test_routing_closes_exactly_the_unchosen_aligned_tiles():
    canvas = Canvas(256)
    pattern = Routing(32, 2) & Causal()
    planned = plan(pattern, canvas, heads=2, block_q=32, block_kv=32)
    q = torch.randn(1, 2, 256, 8)
    indices = torch.randint(0, 8, (1, 2, 8, 2))
    tables, forward, backward = _flags(planned, {"routing_map": routing_map(q, q, Routing(32, 2), indices)})
    for head in range(2):
        chosen = reference_mask(Routing(32, 2), canvas, head=head, routing=indices)
        mask = reference_mask(pattern, canvas, head=head, routing=indices)
        want = _tile_has_pair(planned, tables, chosen, tables.kv_rows, tables.kv_index)
        assert np.array_equal(forward[0, head].numpy() != 0, want)
        got_back = backward[0, head].numpy() != 0
        assert not (_tile_has_pair(planned, tables, mask, tables.q_index, tables.q_rows) & ~got_back).any()


def test_compiled_attention_reports_the_tiles_a_call_runs(monkeypatch):
    """``CompiledAttention.tile_gates``: per part, the lists a call builds before its launches."""
    import maskir

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    compiled = maskir.compile(
        Segments() & Causal(),
        256,
        heads=2,
        head_dim=16,
        dtype=torch.float32,
        device="cpu",
        block_q=64,
        block_kv=64,
        backend="triton",
    )
    q = torch.randn(1, 2, 256, 16)
    documents = torch.arange(256, dtype=torch.int32)[None] // 64  # four documents, one per tile
    ((forward, backward),) = compiled.tile_gates(q, q, segments=documents, backward=True)
    assert compiled.plan.tile_counts.tiles == 2 * 10  # the static plan: causal tiles, both heads
    assert forward.open_tiles.tolist() == backward.open_tiles.tolist() == [[4]]  # the diagonal, any head
    assert forward.full_tiles.tolist() == [[0]]  # causal within each tile
    ((one_document,),) = compiled.tile_gates(q, q, segments=torch.zeros(1, 256, dtype=torch.int32))
    assert one_document.open_tiles.tolist() == [[10]]
    assert one_document.full_tiles.tolist() == [[6]]  # the tiles below the diagonal
    with pytest.raises(ValueError, match="segments"):
        compiled.tile_gates(q, q)
    static = maskir.compile(
        Causal(), 256, heads=2, head_dim=16, dtype=torch.float32, device="cpu", block_q=64, backend="triton"
    )
    assert static.tile_gates(q, q) == [None]
    reference = maskir.compile(Causal(), 256, heads=2, head_dim=16, dtype=torch.float32, backend="reference")
    with pytest.raises(ValueError, match="walk per-call lists"):
        reference.tile_gates(q, q)


def test_compact_packs_each_rows_open_entries_at_its_start_full_ones_first_in_order():
    # two head groups of two rows each: group 0 rows [0, 3) [3, 5), group 1 rows [5, 6) [6, 9)
    starts = [np.array([0, 3, 5]), np.array([0, 1, 4])]  # per group, as in TileTable
    full_counts = [np.array([1, 0]), np.array([0, 2])]  # the first entry of row 0, two of the last row
    start = torch.tensor([0, 3, 5, 5, 6, 9], dtype=torch.int32)  # stacked, as in PartTables
    index = torch.tensor([7, 1, 2, 4, 5, 6, 3, 8, 9], dtype=torch.int32)
    shape = ListShape.build(start, index, starts, full_counts)
    flags = torch.tensor(
        [[[0, 1, 0, 0, 1, 0, 0, 0, 1]], [[1, 1, 1, 1, 1, 1, 1, 1, 1]], [[1, 1, 2, 2, 1, 0, 0, 1, 1]]], dtype=torch.int8
    )  # flag 2: this call's data proves the tile FULL
    gated = compact(flags, shape)
    rows = [0, 1, 3, 4]  # stacked row pointers that open a row (2 is group 0's end)
    for b, (want, want_full) in enumerate(
        [
            ([[7, 1], [5], [], [3, 8, 9]], [1, 0, 0, 2]),  # FULL entries 7, 3, 8 stay; open PARTIAL 1, 5, 9 follow
            ([[7, 1, 2], [4, 5], [6], [3, 8, 9]], [1, 0, 0, 2]),
            ([[7, 2, 1], [4, 5], [], [3, 8, 9]], [2, 1, 0, 2]),  # proven FULL 2 and 4 lead their rows
        ]
    ):
        opened = gated.buffer[b, 0, gated.open_at : gated.full_at]  # open entries before each row pointer
        full = gated.buffer[b, 0, gated.full_at :]  # FULL ones
        ends = [int(start[row] + opened[row + 1] - opened[row]) for row in rows]
        assert [gated.buffer[b, 0, start[row] : end].tolist() for row, end in zip(rows, ends)] == want, b
        assert [int(full[row + 1] - full[row]) for row in rows] == want_full, b
    assert gated.open_tiles.tolist() == [[6], [9], [8]]
    assert gated.full_tiles.tolist() == [[3], [3], [5]]


def test_a_call_reuses_the_lists_of_the_call_before_on_the_same_unchanged_data(monkeypatch):
    """The backward reuses its forward's lists, and layers sharing a CompiledAttention and one batch of
    documents build them once; new or changed (in place) segment ids rebuild them."""
    import maskir

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    compiled = maskir.compile(
        Segments() & Causal(), 128, heads=2, head_dim=16, dtype=torch.float32, device="cpu", backend="triton"
    )
    built = []
    lists = PartGate.lists
    monkeypatch.setattr(
        PartGate, "lists", lambda self, *a, **kw: built.append(kw["directions"]) or lists(self, *a, **kw)
    )
    q, k, v = (torch.randn(1, 2, 128, 16, requires_grad=True) for _ in range(3))
    documents = torch.arange(128, dtype=torch.int32)[None] // 48
    for _ in range(2):  # two layers
        out = compiled(q, k, v, segments=documents)
        out.sum().backward()
    assert built == [(0,), (1,)]  # forward lists once, dK/dV lists once
    documents[0, 100:] = 7  # in place: the version counter moves
    compiled(q, k, v, segments=documents)
    compiled(q, k, v, segments=documents.clone())
    assert built == [(0,), (1,), (0,), (0,)]
    want = maskir.attention(q, k, v, Segments() & Causal(), backend="reference", segments=documents)
    torch.testing.assert_close(compiled(q, k, v, segments=documents), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["dq-then-dkdv", "fused"])
def test_tvm_kernels_walk_the_lists_a_calls_documents_leave_open(monkeypatch, fused):
    """The TVM backend's kernels get this call's gated lists (``gated`` = 1, their last scalar) and, on
    documents that cut across tiles, match the float64 reference forward and backward."""
    pytest.importorskip("tvm")
    import maskir
    from maskir.codegen.tvm.launch import TvmAttention

    compiled = maskir.compile(
        Segments() & Causal(), 256, heads=2, head_dim=16, dtype=torch.float32, device="cpu",
        block_q=64, block_kv=64, backend="tvm",
    )  # fmt: skip
    compiled.kernels.fused_backward = fused
    gated = []
    call = TvmAttention._call
    monkeypatch.setattr(
        TvmAttention, "_call", lambda self, name, *a: gated.append((name[:3], a[-1])) or call(self, name, *a)
    )
    q, k, v = (torch.randn(2, 2, 256, 16, requires_grad=True) for _ in range(3))
    documents = torch.stack([torch.arange(256) // 40, torch.arange(256) // 128]).to(torch.int32)
    out = compiled(q, k, v, segments=documents)
    out.square().sum().backward()
    assert {flag for _, flag in gated} == {1} and {name for name, _ in gated} == (
        {"fwd", "bwd"} if fused else {"fwd", "dq_", "dkd"}
    )
    ((forward, _),) = compiled.tile_gates(q, k, segments=documents, backward=True)
    assert forward.open_tiles.max() < compiled.plan.tile_counts.tiles // 2  # fewer than the causal tiles
    assert forward.full_tiles.tolist() == [[0], [2]]  # proven FULL: run without the predicate
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]  # the reference computes in float64
    want = maskir.attention(*leaves, Segments() & Causal(), backend="reference", segments=documents)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, atol=2e-5, rtol=0)
    for got, ref in zip((q, k, v), leaves):
        torch.testing.assert_close(got.grad, ref.grad, atol=1e-4, rtol=0)
