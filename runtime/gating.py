"""Per-call planning of data-dependent patterns: per call, lists of only the tiles its data leaves open.

A plan of a pattern with ``Segments()`` or ``Routing`` holds a static superset: every tile the rest of the
pattern allows is PARTIAL, whatever the documents or the routing choice. Per call, from the run-time
tensors, each list entry (q tile, kv tile) gets an int8 flag, 0 only where the data proves the tile empty:

- ``Segments()``: the tile's segment ids span [min, max] on each side (padding slots left out); the
  ranges of the two tiles must overlap. Exact for contiguous documents, a superset otherwise.
- ``Routing(block, k)``: the tile's tokens touch routing blocks [min, max] (``token // block``) on each
  side; some block pair in that rectangle must be chosen, read from 2-D prefix sums of the block map.

The leaves combine through the pattern (``maskir.planner.gates.gate_tree``): ``&`` ands their flags,
``|`` ors them with the flags of its other side; a static subtree under ``|`` (``(Routing(128, 8) &
Causal()) | (Blocks(128) & Causal())``: the diagonal blocks are always kept) contributes the tiles the
planner pre-listed for it (``PlanPart.static_tables``, identity layouts only; a part without them is not
gated); static top-level conjuncts are implied by the plan's entries and left out; anything else over
run-time data (``~``, PerHead, a Predicate) closes nothing. Flags are [B, H, entries],
H being 1 (broadcast) when no leaf depends on the head.

The same data also proves tiles FULL (flag 2; ``maskir.planner.gates.full_tree``): a Segments leaf where
both tiles hold one and the same segment, a Routing leaf where every block pair the tiles touch is chosen,
a static subtree (the top-level conjuncts included) where its own plan lists the tile FULL; ``&`` and ``|``
of FULL are FULL. The kernels run those tiles without the predicate, as they run the plan's FULL tiles
(a documents plan lists every causal tile PARTIAL; inside one document most are FULL).

``compact`` then packs each CSR row's open entries at the row's start, FULL ones first (``GatedLists``),
so a kernel walks only the open tiles of its row: skipping closed entries one by one would cost a dependent load per
listed tile (a documents plan lists every causal tile, most of them closed). The per-call cost is
O(N + entries + routing blocks) torch operations on the device: no host work, no synchronisation.
``CallGates`` keeps a compiled plan's gates and the latest call's lists; ``GatedKernels`` hands them to
kernels that walk gated lists (``walks_gated_lists``: the Triton and TVM backends') on every forward and backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from maskir.codegen.common.tables import PartTables, identity_tokens, part_tables
from maskir.ir import Pattern, Segments
from maskir.planner.gates import Gate, full_tree, gate_tree, static_subtrees
from maskir.planner.kinds import FULL
from maskir.planner.plan import Plan, PlanPart, TileTable

_FAR = 2**30
"""Beyond any segment id or block index: the range of a tile with no token is [_FAR, -_FAR] (empty)."""


def _listed(table: TileTable, n_kv_tiles: int, q_tile: np.ndarray, kv_tile: np.ndarray) -> tuple[np.ndarray, ...]:
    """Whether each (q_tile, kv_tile) is listed by ``table`` (a static subtree's, same tiles), and whether
    it is listed FULL."""
    listed_q, listed_kv, kind = table.pairs()
    keys, wanted = listed_q * n_kv_tiles + listed_kv, q_tile.astype(np.int64) * n_kv_tiles + kv_tile
    return np.isin(wanted, keys), np.isin(wanted, keys[kind == FULL])


def tile_ranges(values: torch.Tensor, tokens: torch.Tensor | None, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) [B, tiles]: min and max of ``values`` [B, N] over each tile's tokens (padding slots, -1,
    left out; a tile without tokens gets lo > hi). ``tokens`` None: slot p is token p and N is a whole
    number of tiles (one reduction, no gather)."""
    if tokens is None:  # amin and amax: torch 2.13's CPU aminmax of int32 tiles takes ~2,000x longer
        tiles = values.view(values.shape[0], -1, block)
        return tiles.amin(-1), tiles.amax(-1)
    valid = tokens >= 0
    gathered = values.to(torch.int64).index_select(1, tokens.clamp(min=0).to(torch.int64))
    lo = torch.where(valid, gathered, _FAR).view(values.shape[0], -1, block).amin(-1)
    hi = torch.where(valid, gathered, -_FAR).view(values.shape[0], -1, block).amax(-1)
    return lo, hi


def _segments_gate(segments_q, segments_kv, q_side, kv_side, q_tile, kv_tile) -> tuple[torch.Tensor, torch.Tensor]:
    """(open, full) [B, 1, entries]: the ranges overlap; both tiles hold one and the same segment."""
    q_lo, q_hi = tile_ranges(segments_q, *q_side)
    kv_lo, kv_hi = tile_ranges(segments_kv, *kv_side)
    q_lo, q_hi = q_lo.index_select(1, q_tile), q_hi.index_select(1, q_tile)
    kv_lo, kv_hi = kv_lo.index_select(1, kv_tile), kv_hi.index_select(1, kv_tile)
    opened = (q_lo <= kv_hi) & (kv_lo <= q_hi) & (q_lo <= q_hi) & (kv_lo <= kv_hi)
    return opened[:, None], ((q_lo == q_hi) & (kv_lo == kv_hi) & (q_lo == kv_lo))[:, None]


def _routing_gate(block_map, routing_block, q_side, kv_side, q_tile, kv_tile) -> tuple[torch.Tensor, torch.Tensor]:
    """(open, full) [B, H, entries]: some / every routing block pair the two tiles touch is chosen."""
    batch, heads, q_blocks, kv_blocks = block_map.shape
    ranges = []
    for (tokens, block), n_blocks, tile in ((q_side, q_blocks, q_tile), (kv_side, kv_blocks, kv_tile)):
        if tokens is None:  # tile t holds tokens [t * block, (t + 1) * block)
            lo, hi = tile * block // routing_block, (tile * block + block - 1) // routing_block
        else:
            lo, hi = tile_ranges((tokens.clamp(min=0).to(torch.int64) // routing_block)[None], tokens, block)
            lo, hi = lo[0].index_select(0, tile), hi[0].index_select(0, tile)
        ranges.append((lo.clamp(0, n_blocks - 1), hi.clamp(0, n_blocks - 1), lo <= hi))
    (q_lo, q_hi, q_ok), (kv_lo, kv_hi, kv_ok) = ranges
    prefix = torch.zeros(batch, heads, q_blocks + 1, kv_blocks + 1, dtype=torch.int32, device=block_map.device)
    prefix[:, :, 1:, 1:] = block_map.to(torch.int32).cumsum(2).cumsum(3)
    corners = prefix.view(batch, heads, -1)  # one index_select per corner (indexing two dims at once: ~100x slower)

    def corner(q_at: torch.Tensor, kv_at: torch.Tensor) -> torch.Tensor:
        return corners.index_select(-1, q_at * (kv_blocks + 1) + kv_at)

    chosen = corner(q_hi + 1, kv_hi + 1) - corner(q_lo, kv_hi + 1) - corner(q_hi + 1, kv_lo) + corner(q_lo, kv_lo)
    ok = q_ok & kv_ok
    return (chosen > 0) & ok, (chosen == (q_hi - q_lo + 1) * (kv_hi - kv_lo + 1)) & ok


def _host_entries(part: PlanPart) -> list[tuple[np.ndarray, np.ndarray]]:
    """(q tile, kv tile) of every entry of the part's stacked forward lists and of its dK/dV lists, in the
    order of ``PartTables.kv_index`` and ``PartTables.q_index``."""
    forward = [t.pairs()[:2] for t in part.tables]
    backward = [(t.q_index, np.repeat(np.arange(part.n_kv_tiles), np.diff(t.q_start))) for t in part.tables]
    return [tuple(np.concatenate(side) for side in zip(*entries)) for entries in (forward, backward)]


@dataclass(frozen=True)
class ListShape:
    """One direction's stacked CSR lists as ``compact`` needs them: ``start`` (row pointers, every head
    group's rows), ``index`` (the entries), ``row_start[e]`` and ``row_end[e]`` (the bounds of entry e's
    row) and ``full[e]`` (entry e is a FULL tile, which the kernels run without a gate), on one device."""

    start: torch.Tensor  # int64
    index: torch.Tensor  # int32
    row_start: torch.Tensor  # int64
    row_end: torch.Tensor  # int64
    full: torch.Tensor | None  # bool, None when the lists hold no FULL entry

    @classmethod
    def build(
        cls, start: torch.Tensor, index: torch.Tensor, starts: list[np.ndarray], full_counts: list[np.ndarray]
    ) -> ListShape:
        """From one direction's stacked device arrays (``PartTables``: ``start``, ``index``) and the head
        groups' host CSR arrays (row pointers and FULL counts per row, as in ``TileTable``)."""
        row_start, row_end, full, offset = [], [], [], 0
        for pointers, counts in zip(starts, full_counts):
            lengths = np.diff(pointers)
            row_start.append(np.repeat(pointers[:-1].astype(np.int64) + offset, lengths))
            row_end.append(np.repeat(pointers[1:].astype(np.int64) + offset, lengths))
            full.append(np.arange(lengths.sum()) - np.repeat(pointers[:-1], lengths) < np.repeat(counts, lengths))
            offset += int(pointers[-1])
        row_start, row_end, full = np.concatenate(row_start), np.concatenate(row_end), np.concatenate(full)
        device = index.device
        return cls(
            start.to(torch.int64),
            index[: row_start.size],
            torch.as_tensor(row_start, device=device),
            torch.as_tensor(row_end, device=device),
            torch.as_tensor(full, device=device) if full.any() else None,
        )


@dataclass(frozen=True)
class GatedLists:
    """One direction's lists for one call, as the kernels read them (``GATED``): ``buffer`` int32
    [B, H or 1, entries + 1 + 2 * pointers] holds, per (b, h), each CSR row's open entries packed at the
    row's start, the FULL ones first (the plan's and those this call's data proves FULL), each kind in
    list order; then from ``open_at`` on the running count of open entries before each row pointer, and
    from ``full_at`` on that of FULL ones: row r runs entries [start[r], start[r] + open[r + 1] - open[r]),
    the first full[r + 1] - full[r] of them without the predicate. The kernels then walk only the tiles
    this call's data leaves open. (A kernel that reads only ``open_at`` and the plan's FULL counts stays
    exact: the plan's FULL entries lead the row's FULL ones.)"""

    buffer: torch.Tensor
    open_at: int
    full_at: int

    @property
    def open_tiles(self) -> torch.Tensor:
        """[B, H or 1]: the open entries of all rows."""
        return self.buffer[..., self.full_at - 1]

    @property
    def full_tiles(self) -> torch.Tensor:
        """[B, H or 1]: the open entries of all rows that run without the predicate."""
        return self.buffer[..., -1]


def compact(flags: torch.Tensor, lists: ListShape) -> GatedLists:
    """``GatedLists`` from ``flags`` [B, H or 1, entries] (0: closed, 1: open, 2: open and FULL): O(entries)
    torch ops, no sync (gathers are ``index_select``: on a CPU, advanced indexing of a last dim costs
    far more).

    With f and p the exclusive running counts of FULL and of other open entries, a FULL entry e goes to
    ``row_start[e] + f[e] - f[row_start[e]]``, another open one after its row's FULL ones, to
    ``row_start[e] + (f[row_end[e]] - f[row_start[e]]) + p[e] - p[row_start[e]]``; closed entries go to a
    spare slot past the entries."""
    n_entries = lists.row_start.numel()
    full = flags == 2 if lists.full is None else (flags == 2) | lists.full
    partial = (flags != 0) & ~full
    counts = []
    for kind in (full, partial):
        before = torch.nn.functional.pad(kind.to(torch.int32).cumsum(-1, dtype=torch.int32), (1, 0))
        counts.append((before, before[..., :-1] - before.index_select(-1, lists.row_start)))
    (full_before, full_rank), (partial_before, partial_rank) = counts
    row_full = full_before.index_select(-1, lists.row_end) - full_before.index_select(-1, lists.row_start)
    position = lists.row_start + torch.where(full, full_rank, row_full + partial_rank)
    pointers = lists.start.numel()
    buffer = torch.empty((*flags.shape[:2], n_entries + 1 + 2 * pointers), dtype=torch.int32, device=flags.device)
    spare = torch.where(full | partial, position, n_entries)
    buffer[..., : n_entries + 1].scatter_(-1, spare, lists.index.expand(*flags.shape[:2], -1))
    open_at, full_at = n_entries + 1, n_entries + 1 + pointers
    full_counts = full_before.index_select(-1, lists.start)
    buffer[..., open_at:full_at] = full_counts + partial_before.index_select(-1, lists.start)
    buffer[..., full_at:] = full_counts
    return GatedLists(buffer, open_at, full_at)


@dataclass(frozen=True)
class PartGate:
    """The gate of one plan part on one device: its tree, its FULL tree (``planner.gates.full_tree``;
    None when the data cannot prove a tile FULL), each static subtree's (listed, listed FULL) flags per list
    entry (forward/dQ lists, dK/dV lists) and the lists' shapes for ``compact``. ``build`` returns None
    when the part cannot be gated."""

    tree: Gate
    proof: Gate | None
    static: dict[Pattern, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]
    shapes: tuple[ListShape, ListShape]
    blocks: tuple[int, int]  # the plan's (q, kv) tile sizes
    sizes: tuple[int, int]  # its (q, kv) token counts

    @classmethod
    def build(cls, plan: Plan, part: PlanPart, tables: PartTables) -> PartGate | None:
        tree = gate_tree(part.pattern)
        if tree is None:
            return None
        listed = dict(part.static_tables)  # pre-listed by the planner (planner.gates): nothing plans here

        def has_tables(gate: Gate) -> bool:
            subs = static_subtrees(gate)
            return not subs or (part.layout.is_identity and all(listed.get(sub) is not None for sub in subs))

        if not has_tables(tree):
            return None
        proof = full_tree(part.pattern)
        proof = proof if proof is not None and has_tables(proof) else None
        static = {}
        lists = _host_entries(part)
        for sub in dict.fromkeys(static_subtrees(tree) + (static_subtrees(proof) if proof else [])):
            static[sub] = tuple(
                tuple(torch.as_tensor(f, device=tables.kv_index.device)[None, None] for f in flags)
                for flags in (_listed(listed[sub], part.n_kv_tiles, q, kv) for q, kv in lists)
            )
        shapes = (
            ListShape.build(
                tables.kv_start, tables.kv_index, [t.kv_start for t in part.tables], [t.kv_full for t in part.tables]
            ),
            ListShape.build(
                tables.q_start, tables.q_index, [t.q_start for t in part.tables], [t.q_full for t in part.tables]
            ),
        )
        blocks, sizes = (plan.block_q, plan.block_kv), (plan.canvas.size, plan.kv_canvas.size)
        return cls(tree, proof, static, shapes, blocks, sizes)

    def lists(
        self, tables: PartTables, tensors: Mapping[str, torch.Tensor], *, directions: tuple[int, ...] = (0, 1)
    ) -> tuple[GatedLists, ...]:
        """This call's ``GatedLists`` of each of ``directions`` (as in ``flags``)."""
        flags = self.flags(tables, tensors, directions=directions)
        return tuple(compact(f, self.shapes[d]) for f, d in zip(flags, directions))

    def flags(
        self, tables: PartTables, tensors: Mapping[str, torch.Tensor], *, directions: tuple[int, ...] = (0, 1)
    ) -> tuple[torch.Tensor, ...]:
        """int8 [B, H or 1, entries] per direction: 0 the forward/dQ lists (entries of ``kv_index``), 1 the
        dK/dV lists (entries of ``q_index``); 0 where this call's data proves the entry's tile empty, 2
        where it proves the tile FULL, else 1. ``tensors``: the run-time tensors by name."""
        (block_q, block_kv), (n_q, n_kv) = self.blocks, self.sizes
        device = tables.kv_index.device
        sides = tuple(
            (gathered if gather else None if n % block == 0 else identity_tokens(n_tiles, block, n, device), block)
            for gathered, gather, n_tiles, block, n in (
                (tables.q_tokens, tables.q_gather, tables.n_q_tiles, block_q, n_q),
                (tables.kv_tokens, tables.kv_gather, tables.n_kv_tiles, block_kv, n_kv),
            )
        )
        lists = [(tables.kv_rows, tables.kv_index), (tables.q_index, tables.q_rows)]
        out = []
        for which in directions:
            leaves: dict[Pattern, tuple[torch.Tensor, torch.Tensor]] = {}  # each leaf evaluated once per call
            entries = [t.to(torch.int64) for t in lists[which]]
            opened = self._evaluate(self.tree, tensors, sides, *entries, which, leaves)[0]
            if self.proof is None:
                out.append(opened.to(torch.int8))
                continue
            full = self._evaluate(self.proof, tensors, sides, *entries, which, leaves)[1]
            out.append(opened.to(torch.int8) + (opened & full).to(torch.int8))
        return tuple(out)

    def _evaluate(self, gate: Gate, tensors, sides, q_tile, kv_tile, which: int, leaves: dict):
        """(open, full) flags of ``gate`` per entry: some / every pair of the tile may be allowed."""
        kind = gate[0]
        if kind == "static":
            return self.static[gate[1]][which]
        if kind == "leaf":
            node = gate[1]
            if node not in leaves:
                if isinstance(node, Segments):
                    leaves[node] = _segments_gate(
                        tensors["segments_q"], tensors["segments_kv"], *sides, q_tile, kv_tile
                    )
                else:
                    leaves[node] = _routing_gate(tensors["routing_map"], node.block, *sides, q_tile, kv_tile)
            return leaves[node]
        (left_open, left_full), (right_open, right_full) = (
            self._evaluate(g, tensors, sides, q_tile, kv_tile, which, leaves) for g in gate[1:]
        )
        if kind == "and":
            return left_open & right_open, left_full & right_full
        return left_open | right_open, left_full | right_full


def gated_plan(plan: Plan, tensors: Mapping[str, torch.Tensor], *, batch: int = 0, head: int = 0) -> Plan:
    """``plan`` with only the list entries the gates leave open for (``batch``, ``head``): the tiles the
    kernels run for this data (what the simulator should price; the tiles the data proves FULL keep the
    plan's kind, as the Triton kernels still evaluate the predicate there). Parts without a gate are kept as they
    are; heads share the chosen head's gates (a routing choice has the same number of blocks per head)."""
    cpu = {name: t.cpu() for name, t in tensors.items()}
    parts = []
    for part in plan.parts:
        tables = part_tables(plan, part, "cpu")
        gate = PartGate.build(plan, part, tables) if any(t.kv_index.size for t in part.tables) else None
        if gate is None:
            parts.append(part)
            continue
        (flags,) = gate.flags(tables, cpu, directions=(0,))
        keep = flags[batch, min(head, flags.shape[1] - 1)].numpy() != 0
        gated, offset = [], 0
        for table in part.tables:
            q_tile, kv_tile, kind = table.pairs()
            chosen = keep[offset : offset + q_tile.size]
            offset += q_tile.size
            gated.append(
                TileTable.from_pairs(q_tile[chosen], kv_tile[chosen], kind[chosen], part.n_q_tiles, part.n_kv_tiles)
            )
        parts.append(dataclasses.replace(part, tables=tuple(gated)))
    return dataclasses.replace(plan, parts=tuple(parts))


class CallGates:
    """The per-call planning of one compiled plan: each part's ``PartGate`` per device (built once from the
    plan and the part's tables) and the lists of the latest call.

    Lists are kept for the run-time tensors of the latest call (held, so no other tensor can take their
    identity; keyed on their identity and version counter, so an in-place change rebuilds them): the
    backward reuses its forward's lists, and layers sharing one CompiledAttention and one batch of
    documents build them once per step."""

    def __init__(self, plan: Plan, tensor_names: Sequence[str]):
        self.plan, self.tensor_names = plan, tuple(tensor_names)
        self._part_gates: dict[tuple[str, int | None, int], PartGate | None] = {}
        self._recent: tuple[tuple, tuple[torch.Tensor, ...], dict] = ((), (), {})

    def lists(
        self, parts: Sequence[PartTables], tensors: Sequence[torch.Tensor], *, backward: bool, fresh: bool = False
    ) -> list[tuple[GatedLists, ...] | None]:
        """Per part (``parts``: the kernels' tables on the call's device), this call's lists for the
        forward/dQ and, with ``backward``, the dK/dV direction; None for a part without a gate. ``fresh``:
        build them anew and keep nothing (what timing the per-call planning needs)."""
        data = tuple((id(t), t._version) for t in tensors)
        recent = self._recent  # read once: another thread may replace it with its own call's lists
        if not fresh and recent[0] != data:
            recent = (data, tuple(tensors), {})
            self._recent = recent
        memo = {} if fresh else recent[2]
        named = dict(zip(self.tensor_names, tensors))
        wanted = (0, 1) if backward else (0,)
        out = []
        for index, tables in enumerate(parts):
            key = (tables.kv_index.device.type, tables.kv_index.device.index, index)
            if key not in self._part_gates:
                self._part_gates[key] = PartGate.build(self.plan, self.plan.parts[index], tables)
            gate = self._part_gates[key]
            if gate is None:
                out.append(None)
                continue
            missing = tuple(d for d in wanted if (key, d) not in memo)
            if missing:
                built = gate.lists(tables, named, directions=missing)
                memo.update({(key, d): lists for d, lists in zip(missing, built)})
            out.append(tuple(memo[key, d] for d in wanted))
        return out


class GatedKernels:
    """Kernels that walk gated lists (``walks_gated_lists``), with this call's lists planned first: the
    ``maskir.runtime.ops.Kernels`` the runtime registers for a data-dependent plan."""

    def __init__(self, kernels, gates: CallGates):
        self.kernels, self.gates = kernels, gates

    def forward(self, q, k, v, *, scale: float, tensors: list[torch.Tensor]):
        lists = self.gates.lists(self.kernels.tables(q.device), tensors, backward=False)
        return self.kernels.forward(q, k, v, scale=scale, tensors=tensors, lists=lists)

    def backward(
        self, q, k, v, out, lse, dout, *, scale: float, tensors: list[torch.Tensor], trained: Sequence[int] = ()
    ):
        lists = self.gates.lists(self.kernels.tables(q.device), tensors, backward=True)
        return self.kernels.backward(
            q, k, v, out, lse, dout, scale=scale, tensors=tensors, trained=trained, lists=lists
        )
