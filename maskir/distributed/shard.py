"""``shard``: a plan's q tiles balanced over ranks by computed work, and the key/value rows each rank fetches.

Every q token and every k/v token is held by exactly one rank (no copies, no padding). A rank holds whole
q tiles of the plan's main layout (``plan.parts[0]``), in layout order; for self-attention its k/v tokens
are its q tokens (a model computes q, k and v from the same hidden states), for cross-attention each k/v
tile of the main layout goes to the rank that reads most of it (at most ceil(tiles / ranks) per rank).

Rank r's **sub-plan** is the plan restricted to r's q tiles: per part, local q tile j lists every kv tile
that some part tile meeting j's tokens lists, FULL only where FULL for all of them (so every allowed pair
of r's queries is in a listed tile, and FULL tiles stay exact). Its q layout holds r's tokens (padding
slots as in the plan); its kv layouts are the plan's. ``maskir.distributed.compact`` re-addresses it to
compact buffers (r's rows and the rows it fetched) before the runtime's kernels run it (``attention``).

Rank r **fetches** from rank s the k/v tokens that s holds and r's sub-plan lists, in s's local order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from maskir.canvas import Canvas
from maskir.distributed.balance import candidates, imbalance, refine
from maskir.ir import Pattern, Routing, Segments
from maskir.planner import Layout, Plan, PlanPart, TileKind, TileTable, plan
from maskir.planner.runs import ragged_arange

BALANCE_GOAL = 1.05
GOAL_SLACK = 0.02
"""The ceiling on a split's imbalance: BALANCE_GOAL (or GOAL_SLACK above the best imbalance found, when no
split reaches the goal), and never above torch's PTRR or HeadTail split on the same measure."""
TILES_PER_RANK = 16
FINER_BLOCKS = (64, 32)
"""q tile sizes that also compete when the planner's tiles are too few for the ranks (see ``_plans``)."""


def _slots(order: np.ndarray | None, size: int, n_tiles: int, block: int) -> np.ndarray:
    """[n_tiles, block] original token per slot of one side's layout (-1: padding)."""
    if order is None:
        slots = np.arange(n_tiles * block)
        return np.where(slots < size, slots, -1).reshape(n_tiles, block)
    return np.asarray(order, dtype=np.int64).reshape(n_tiles, block)


def _tile_of_token(slots: np.ndarray, size: int) -> np.ndarray:
    """[size] tile of every token (-1 for a token the layout does not hold)."""
    tile = np.full(size, -1, dtype=np.int64)
    rows, cols = np.nonzero(slots >= 0)
    tile[slots[rows, cols]] = rows
    return tile


def _part_sides(plan: Plan, part: PlanPart) -> tuple[np.ndarray, np.ndarray]:
    q_slots = _slots(part.layout.q_tokens, plan.canvas.size, part.n_q_tiles, plan.block_q)
    kv_slots = _slots(part.layout.kv_tokens, plan.kv_canvas.size, part.n_kv_tiles, plan.block_kv)
    return q_slots, kv_slots


def tile_work(plan: Plan) -> np.ndarray:
    """Computed token pairs per q tile of the main layout, exactly as a rank holding the tile computes them
    (int64 [n_q_tiles]): tile j's row of ``sub_plan(plan, all tiles)``, valid q tokens times valid k/v tokens
    of each listed kv tile, over heads and parts. A rank's sub-plan lists, per local tile, what that tile
    alone needs, so ``ContextParallelPlan.computed_pairs(r)`` is the sum over r's tiles: balancing this
    vector balances ``.balance`` itself."""
    whole = sub_plan(plan, np.arange(plan.parts[0].n_q_tiles), "all tiles")
    work = np.zeros(plan.parts[0].n_q_tiles, dtype=np.int64)
    for part in whole.parts:
        q_sizes, kv_sizes = whole.tile_sizes(part, "q"), whole.tile_sizes(part, "kv")
        kv_cum = np.concatenate([[0], np.cumsum(kv_sizes, dtype=np.int64)])
        for group, table in enumerate(part.tables):
            heads_in_group = int((part.head_table[: plan.heads] == group).sum())
            row, first, stop, _ = table.runs.listed()
            pairs = np.asarray(q_sizes, dtype=np.int64)[row] * (kv_cum[stop] - kv_cum[first])
            work += heads_in_group * np.bincount(row, weights=pairs, minlength=work.size).astype(np.int64)
    return work


def _rank_part_tiles(part_tile: np.ndarray, q_owner: np.ndarray, n_part_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (rank, part tile) pairs of the tokens a part's layout holds."""
    held = part_tile >= 0
    keys = np.unique(q_owner[held] * n_part_tiles + part_tile[held])
    return keys // n_part_tiles, keys % n_part_tiles


def _listed_by(table: TileTable, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in ``rows``, kv tile, kind) of every entry of the listed rows of a CSR table."""
    start = table.kv_start.astype(np.int64)
    count = (start[rows + 1] - start[rows]).astype(np.int64)
    entries = ragged_arange(start[rows], count).astype(np.int64)
    which = np.repeat(np.arange(rows.size), count)
    return which, table.kv_index[entries].astype(np.int64), table.kv_kind[entries]


def needed_kv(plan: Plan, q_owner: np.ndarray, ranks: int) -> np.ndarray:
    """bool [ranks, N_kv]: the k/v tokens each rank's queries' listed kv tiles hold (any part, any head)."""
    needed = np.zeros((ranks, plan.kv_canvas.size), dtype=bool)
    for part in plan.parts:
        q_slots, kv_slots = _part_sides(plan, part)
        rank, part_tile = _rank_part_tiles(_tile_of_token(q_slots, plan.canvas.size), q_owner, part.n_q_tiles)
        for table in part.tables:
            which, kv_tile, _ = _listed_by(table, part_tile)
            keys = np.unique(rank[which] * part.n_kv_tiles + kv_tile)
            tokens = kv_slots[keys % part.n_kv_tiles]
            rows = np.broadcast_to((keys // part.n_kv_tiles)[:, None], tokens.shape)
            valid = tokens >= 0
            needed[rows[valid], tokens[valid]] = True
    return needed


def _place_kv(plan: Plan, needed: np.ndarray, ranks: int) -> np.ndarray:
    """Cross-attention: each kv tile of the main layout to the rank that reads most of its tokens, at most
    ceil(tiles / ranks) tiles per rank (heaviest demand placed first); tokens the main layout does not
    hold go with the tile-less ranks in order."""
    _, kv_slots = _part_sides(plan, plan.parts[0])
    n_tiles = kv_slots.shape[0]
    capacity = math.ceil(n_tiles / ranks)
    safe = np.where(kv_slots >= 0, kv_slots, 0)
    demand = (needed[:, safe] & (kv_slots >= 0)[None]).sum(axis=2)  # [ranks, tiles]
    held = np.zeros(ranks, dtype=np.int64)
    tile_owner = np.empty(n_tiles, dtype=np.int64)
    for tile in np.argsort(-demand.max(axis=0), kind="stable"):
        order = np.lexsort((held, -demand[:, tile]))  # most demand first, then fewest tiles held
        rank = next(int(r) for r in order if held[r] < capacity)
        tile_owner[tile] = rank
        held[rank] += 1
    owner = np.full(plan.kv_canvas.size, -1, dtype=np.int64)
    valid = kv_slots >= 0
    owner[kv_slots[valid]] = np.broadcast_to(tile_owner[:, None], kv_slots.shape)[valid]
    loose = np.flatnonzero(owner < 0)
    owner[loose] = np.arange(loose.size) * ranks // max(loose.size, 1)
    return owner


def _local_order(owner: np.ndarray, order: np.ndarray, ranks: int) -> list[np.ndarray]:
    """Per rank, the tokens it owns in the order ``order`` visits them."""
    visited = order[owner[order] >= 0] if order.size else order
    return [visited[owner[visited] == r] for r in range(ranks)]


def _sub_table(table: TileTable, mapping: tuple[np.ndarray, np.ndarray], n_local: int, n_kv_tiles: int) -> TileTable:
    """The table of local q tiles, local tile j listing the union of the lists of the part tiles mapped to
    j (``mapping`` = (local tile, part tile) pairs); FULL only when every one of them lists it FULL."""
    local, part_tile = mapping
    which, kv_tile, kind = _listed_by(table, part_tile)
    keys = local[which] * n_kv_tiles + kv_tile
    unique, inverse = np.unique(keys, return_inverse=True)
    full = np.bincount(inverse, weights=kind == TileKind.FULL, minlength=unique.size)
    mapped = np.bincount(local, minlength=n_local)
    kinds = np.where(full == mapped[unique // n_kv_tiles], TileKind.FULL, TileKind.PARTIAL)
    return TileTable.from_pairs(unique // n_kv_tiles, unique % n_kv_tiles, kinds, n_local, n_kv_tiles)


def sub_plan(plan: Plan, tiles: np.ndarray, name: str) -> Plan:
    """``plan`` restricted to the main layout's q tiles ``tiles`` (local tile j = tiles[j]); see the module.
    A rank without tiles gets one tile of padding slots and no entries (a plan has at least one q tile)."""
    main_slots, _ = _part_sides(plan, plan.parts[0])
    local_slots = main_slots[tiles] if tiles.size else np.full((1, plan.block_q), -1, dtype=np.int64)
    tokens = local_slots[local_slots >= 0]
    local_of_token = np.repeat(np.arange(local_slots.shape[0]), (local_slots >= 0).sum(axis=1))
    parts = []
    for part in plan.parts:
        q_slots, _ = _part_sides(plan, part)
        part_tile = _tile_of_token(q_slots, plan.canvas.size)[tokens]
        keys = np.unique(local_of_token * part.n_q_tiles + part_tile)
        mapping = (keys // part.n_q_tiles, keys % part.n_q_tiles)
        tables = tuple(_sub_table(t, mapping, local_slots.shape[0], part.n_kv_tiles) for t in part.tables)
        layout = Layout(f"{name}: {part.layout.name}", local_slots.reshape(-1), part.layout.kv_tokens)
        parts.append(dataclasses.replace(part, layout=layout, tables=tables, n_q_tiles=local_slots.shape[0]))
    return dataclasses.replace(plan, parts=tuple(parts))


@dataclass(frozen=True, eq=False)
class ContextParallelPlan:
    """Who holds which tokens, what each rank computes, and what it fetches (see the module docstring).

    ``q_owner`` / ``kv_owner``: int [N_q] / [N_kv], the rank of each token; ``rank_tiles[r]``: r's q tiles
    of the main layout; ``sub_plans[r]``: r's sub-plan; ``received[r][s]``: the original k/v tokens r
    fetches from s, in s's local order (empty for s == r); ``strategy``: the balancer that won;
    ``segments``: the ids it was sharded for (None: the static superset, any ids).
    """

    plan: Plan
    world_size: int
    self_attention: bool
    q_owner: np.ndarray = field(repr=False)
    kv_owner: np.ndarray = field(repr=False)
    rank_tiles: tuple[np.ndarray, ...] = field(repr=False)
    q_tokens: tuple[np.ndarray, ...] = field(repr=False)
    kv_tokens: tuple[np.ndarray, ...] = field(repr=False)
    sub_plans: tuple[Plan, ...] = field(repr=False)
    received: tuple[tuple[np.ndarray, ...], ...] = field(repr=False)
    strategy: str = ""
    segments: torch.Tensor | None = field(default=None, repr=False)

    def _rank(self, rank: int) -> int:
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be an int in [0, {self.world_size}), got rank={rank!r}.")
        return rank

    def token_indices(self, rank: int):
        """LongTensor of the original flat q token indices rank ``rank`` holds, in the order it holds them."""
        import torch

        return torch.as_tensor(self.q_tokens[self._rank(rank)], dtype=torch.long)

    def kv_token_indices(self, rank: int):
        """LongTensor of the original flat k/v token indices rank ``rank`` holds (its q tokens for
        self-attention), in the order it holds them."""
        import torch

        return torch.as_tensor(self.kv_tokens[self._rank(rank)], dtype=torch.long)

    def received_tokens(self, rank: int) -> dict[int, np.ndarray]:
        """{source rank: the original k/v tokens ``rank`` fetches from it}, sources with nothing to send left out."""
        return {s: tokens for s, tokens in enumerate(self.received[self._rank(rank)]) if tokens.size}

    @cached_property
    def _kv_position(self) -> np.ndarray:
        """[N_kv] position of every k/v token in its owner's local order."""
        position = np.empty(self.plan.kv_canvas.size, dtype=np.int64)
        for tokens in self.kv_tokens:
            position[tokens] = np.arange(tokens.size)
        return position

    def send_positions(self, rank: int) -> list[np.ndarray]:
        """Per peer s, the positions in ``rank``'s local k/v of the rows s fetches from ``rank``."""
        rank = self._rank(rank)
        return [self._kv_position[self.received[s][rank]] for s in range(self.world_size)]

    def received_tiles(self, rank: int) -> dict[int, np.ndarray]:
        """{source rank: the kv tiles of the main layout that ``rank`` fetches rows of from it}."""
        _, kv_slots = _part_sides(self.plan, self.plan.parts[0])
        tile = _tile_of_token(kv_slots, self.plan.kv_canvas.size)
        return {s: np.unique(tile[tokens][tile[tokens] >= 0]) for s, tokens in self.received_tokens(rank).items()}

    def computed_pairs(self, rank: int) -> int:
        """Token pairs in the tiles rank ``rank``'s kernels visit, summed over heads."""
        return self.sub_plans[self._rank(rank)].tile_counts.computed_pairs

    @property
    def balance(self) -> float:
        """max / mean computed pairs over ranks (1.0: perfectly balanced)."""
        pairs = np.array([self.computed_pairs(r) for r in range(self.world_size)], dtype=np.float64)
        return float(pairs.max() / pairs.mean()) if pairs.sum() else 1.0

    def row_bytes(self, head_dim: int, dtype, *, kv_heads: int | None = None, batch: int = 1) -> int:
        """Bytes of one token's k and v rows over the batch and kv heads (default: the plan's heads)."""
        import torch

        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * batch * (kv_heads or self.plan.heads) * head_dim * itemsize

    def bytes_received(self, rank: int, head_dim: int, dtype, *, kv_heads: int | None = None, batch: int = 1) -> int:
        """Bytes of k and v rank ``rank`` fetches per forward (the backward sends as many dK/dV bytes back)."""
        rows = sum(tokens.size for tokens in self.received[self._rank(rank)])
        return rows * self.row_bytes(head_dim, dtype, kv_heads=kv_heads, batch=batch)

    def bytes_moved(self, head_dim: int, dtype, *, kv_heads: int | None = None, batch: int = 1) -> int:
        """Bytes of k and v all ranks fetch per forward."""
        return sum(
            self.bytes_received(r, head_dim, dtype, kv_heads=kv_heads, batch=batch) for r in range(self.world_size)
        )

    def all_gather_bytes(self, head_dim: int, dtype, *, kv_heads: int | None = None, batch: int = 1) -> int:
        """Bytes a plain ring all-gather of K/V moves: every rank receives every other rank's k/v rows."""
        return (
            (self.world_size - 1)
            * self.plan.kv_canvas.size
            * self.row_bytes(head_dim, dtype, kv_heads=kv_heads, batch=batch)
        )

    def describe(self) -> str:
        """Per rank: tokens, tiles, computed pairs and rows fetched; then balance and traffic."""
        lines = [
            f"context-parallel plan of {self.plan.pattern} on {self.plan.canvas} over {self.world_size} ranks "
            f"({'self' if self.self_attention else 'cross'}-attention, balancer {self.strategy}: "
            f"{self.plan.parts[0].n_q_tiles} q tiles, layout {self.plan.layout.name})"
        ]
        for r in range(self.world_size):
            fetched = self.received_tokens(r)
            lines.append(
                f"  rank {r}: {self.q_tokens[r].size} q / {self.kv_tokens[r].size} kv tokens, "
                f"{self.rank_tiles[r].size} q tiles, {self.computed_pairs(r):,} computed pairs, fetches "
                f"{sum(t.size for t in fetched.values())} kv rows from {len(fetched)} rank(s)"
            )
        rows = sum(t.size for r in range(self.world_size) for t in self.received[r])
        lines.append(
            f"  balance {self.balance:.3f} (max / mean computed pairs); {rows} kv rows fetched in all, "
            f"{rows / max(1, (self.world_size - 1) * self.plan.kv_canvas.size):.1%} of a ring all-gather"
        )
        return "\n".join(lines)


def _fetched_bytes(needed: np.ndarray, kv_owner: np.ndarray) -> int:
    """k/v tokens the ranks need but do not hold."""
    return int((needed & (kv_owner[None, :] != np.arange(needed.shape[0])[:, None])).sum())


def shard(
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...],
    world_size: int,
    *,
    heads: int = 1,
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    segments=None,
    **plan_options,
) -> ContextParallelPlan:
    """Plan ``pattern`` and split its q tiles over ``world_size`` ranks by computed work.

    The balancers of ``maskir.distributed.balance`` (LPT, PTRR's snake, contiguous chains, LPT over runs
    of tiles), on the planner's q tiles and, when those are fewer than 16 per rank, on finer ones, are
    scored by imbalance of computed pairs (over all heads: a token's heads stay on one rank) and by k/v
    rows fetched. Imbalance is that of ``.balance``: computed pairs of the ranks' sub-plans (``tile_work``).
    Splits within 1.05 (within 0.02 of the best found when the tiles allow no 1.05) and no worse than
    torch's balancers compete on k/v rows fetched; the fewest wins
    (ties: the better balanced). torch's own PTRR and HeadTail splits (``torch_balancers``, each tile to
    the rank holding most of its tokens) and they improved by moves and swaps are among the splits, and a
    split is allowed only if no worse than the better of them on its own plan (``token_split_balance``,
    the measure of ``.balance``); where torch's chunks cut every tile so that no split is allowed,
    token-order plans with tiles nested in its 128-token blocks join (there its PTRR split is exact), so
    the winner is never worse than torch's PTRR. Where torch refuses the size, and for
    cross-attention, the snake (PTRR's rule on maskir's tiles) stands in. ``plan_options`` go to ``maskir.plan`` (block_q,
    block_kv, layout). Patterns with ``Segments`` are sharded by their static superset, or, given
    ``segments`` (the ids [B, N] of the batch, as ``attention`` will get them), by only the tiles those ids
    open in some batch row (per-batch balance: shard again for other ids). ``Routing`` (chosen from all
    tokens' pooled q.k at run time) is refused.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got world_size={world_size!r}.")
    if any(isinstance(node, Routing) for node in pattern.walk()):
        raise ValueError(
            f"shard cannot split {pattern}: Routing picks kv blocks from every token's pooled q.k at run time. "
            "Shard a pattern without Routing (e.g. its Blocks/Causal parts)."
        )
    self_attention = kv_canvas is None
    torch_splits = _torch_tokens(pattern, canvas, heads, world_size, segments) if self_attention else {}

    def scored_on(plans: list[Plan]) -> list:
        return [
            split
            for full in plans
            for split in _scored_splits(full if segments is None else opened_by(full, segments), world_size,
                                        self_attention, torch_splits)
        ]  # fmt: skip

    def within(scored: list) -> list:
        goal = max(BALANCE_GOAL, min(score[0] for score, *_ in scored) + GOAL_SLACK)
        return [s for s in scored if s[0][0] <= min(goal, s[1]) * (1 + 1e-12)]

    scored = scored_on(_plans(pattern, canvas, kv_canvas, heads, world_size, plan_options))
    allowed = within(scored)
    if not allowed and torch_splits and "layout" not in plan_options:
        # torch's chunks cut the planner's tiles: on token-order tiles nested in them, its split is a candidate
        scored += scored_on(_identity_plans(pattern, canvas, heads, plan_options))
        allowed = within(scored)
    _, _, _, chosen = min(allowed, key=lambda s: (s[0][1], s[0][0])) if allowed else min(scored, key=lambda s: s[0])
    full, name, tile_owner, q_owner, kv_owner = chosen
    cp = _build(full, world_size, self_attention, name, tile_owner, q_owner, kv_owner)
    return cp if segments is None else dataclasses.replace(cp, segments=segments.detach().cpu().clone())


def opened_by(full: Plan, segments) -> Plan:
    """``full`` with only the tiles the segment ids [B, N] open in some batch row (the runtime's per-call gate, maskir.runtime.gating:
    a tile pair stays when the id ranges of its q and kv tokens overlap)."""
    from maskir.runtime.checks import check_segments
    from maskir.runtime.gating import gated_plan

    if not any(isinstance(node, Segments) for node in full.pattern.walk()):
        raise ValueError(f"segments were given but {full.pattern} has no Segments() node.")
    if not isinstance(segments, torch.Tensor) or segments.dim() != 2:
        raise ValueError(
            f"segments must be the ids [B, N] of the batch, got {getattr(segments, 'shape', type(segments))}."
        )
    batch = segments.shape[0]
    q_ids, kv_ids = check_segments(segments.cpu(), batch, full.canvas.size, full.kv_canvas.size, torch.device("cpu"))
    opened = [gated_plan(full, {"segments_q": q_ids, "segments_kv": kv_ids}, batch=b) for b in range(batch)]
    parts = []
    for index, part in enumerate(full.parts):
        tables = []
        for group in range(len(part.tables)):
            pairs = [p.parts[index].tables[group].pairs() for p in opened]
            keys, first = np.unique(np.concatenate([q * part.n_kv_tiles + kv for q, kv, _ in pairs]), return_index=True)
            kinds = np.concatenate([kind for _, _, kind in pairs])[first]
            tables.append(
                TileTable.from_pairs(
                    keys // part.n_kv_tiles, keys % part.n_kv_tiles, kinds, part.n_q_tiles, part.n_kv_tiles
                )
            )
        parts.append(dataclasses.replace(part, tables=tuple(tables)))
    return dataclasses.replace(full, parts=tuple(parts))


def _torch_tokens(pattern, canvas, heads: int, ranks: int, segments) -> dict[str, np.ndarray]:
    """{name: token owners} of torch's own balancers, PTRR (on the 128-block mask of the token order,
    opened by ``segments`` when given) and HeadTail, leaving out those that refuse the size."""
    from maskir.distributed.torch_balancers import FLEX_BLOCK, head_tail_owner, ptrr_owner, token_plan

    size = math.prod(canvas.shape) if isinstance(canvas, Canvas) else math.prod(np.atleast_1d(canvas).tolist())
    if size % FLEX_BLOCK and size % (2 * ranks):
        return {}  # both refuse: no token-order plan to build
    blocks = token_plan(pattern, canvas, heads=heads)
    blocks = blocks if segments is None else opened_by(blocks, segments)
    owners = {"ptrr": ptrr_owner(blocks, ranks), "headtail": head_tail_owner(blocks.canvas.size, ranks)}
    return {name: owner for name, owner in owners.items() if owner is not None}


def _scored_splits(full: Plan, ranks: int, self_attention: bool, torch_splits: dict[str, np.ndarray]) -> list:
    """((imbalance, k/v rows fetched), reference, name, split) of every candidate split of ``full``'s q tiles;
    reference: the best imbalance of torch's splits on ``full`` (``token_split_balance``), or of the snake
    when torch refuses the size."""
    main_slots, _ = _part_sides(full, full.parts[0])
    work = tile_work(full)
    splits = list(candidates(work, ranks))
    if torch_splits:
        reference = min(token_split_balance(full, owner, ranks, work) for owner in torch_splits.values())
    else:  # PTRR's rule on these tiles stands in
        reference = imbalance(work, dict(splits)["snake"], ranks)
    for name, owner in torch_splits.items():
        rule = _majority_owner(main_slots, owner, ranks)
        splits += [(name, rule), (f"{name}+swaps", refine(work, rule, ranks))]
    scored = []
    for name, tile_owner in splits:
        q_owner = _token_owner(main_slots, tile_owner, full.canvas.size)
        needed = needed_kv(full, q_owner, ranks)
        kv_owner = q_owner if self_attention else _place_kv(full, needed, ranks)
        score = (imbalance(work, tile_owner, ranks), _fetched_bytes(needed, kv_owner))
        scored.append(
            (score, reference, name, (full, f"{name}, q tiles of {full.block_q}", tile_owner, q_owner, kv_owner))
        )
    return scored


def _identity_plans(pattern, canvas, heads: int, options: dict) -> list[Plan]:
    """Token-order plans whose q tiles nest in torch's 128-token blocks (128, 64 and 32 tokens)."""
    from maskir.distributed.torch_balancers import FLEX_BLOCK

    blocks = [b for b in (FLEX_BLOCK, *FINER_BLOCKS) if FLEX_BLOCK % b == 0]
    if "block_q" in options:
        blocks = [options["block_q"]] if FLEX_BLOCK % options["block_q"] == 0 else []
    rest = {key: value for key, value in options.items() if key != "block_q"}
    return [plan(pattern, canvas, heads=heads, layout="identity", block_q=b, **rest) for b in blocks]


def token_split_balance(plan: Plan, token_owner: np.ndarray, ranks: int, work: np.ndarray | None = None) -> float:
    """Imbalance of a split of the q tokens on the measure of ``ContextParallelPlan.balance``: each token
    carries an equal share of its main-layout tile's computed pairs (``tile_work``), so a split of whole
    tiles scores exactly as ``.balance`` does, and a split that cuts tiles (torch's chunks against a
    tiled layout) is charged the pairs maskir's kernels compute for its tokens."""
    main_slots, _ = _part_sides(plan, plan.parts[0])
    work = tile_work(plan) if work is None else work
    valid = main_slots >= 0
    share = np.broadcast_to((work / np.maximum(valid.sum(axis=1), 1))[:, None], main_slots.shape)
    load = np.bincount(token_owner[main_slots[valid]], weights=share[valid], minlength=ranks)
    return float(load.max() / load.mean()) if load.sum() else 1.0


def _majority_owner(main_slots: np.ndarray, token_owner: np.ndarray, ranks: int) -> np.ndarray:
    """Per q tile of the main layout, the rank owning most of its tokens (ties: the lowest rank); a tile of
    padding only goes to rank 0. Exactly ``token_owner`` where tiles nest in its chunks."""
    valid = main_slots >= 0
    rows = np.broadcast_to(np.arange(main_slots.shape[0])[:, None], main_slots.shape)[valid]
    counts = np.zeros((main_slots.shape[0], ranks), dtype=np.int64)
    np.add.at(counts, (rows, token_owner[main_slots[valid]]), 1)
    return counts.argmax(axis=1)


def _plans(pattern, canvas, kv_canvas, heads: int, ranks: int, options: dict) -> list[Plan]:
    """The planner's plan and, when its q tiles give a rank fewer than ``TILES_PER_RANK`` and the caller
    chose no ``block_q``, plans with the finer q tiles of ``FINER_BLOCKS``."""
    plans = [plan(pattern, canvas, kv_canvas, heads=heads, **options)]
    for block in FINER_BLOCKS if "block_q" not in options else ():
        if plans[-1].parts[0].n_q_tiles >= TILES_PER_RANK * ranks or block >= plans[-1].block_q:
            continue
        plans.append(plan(pattern, canvas, kv_canvas, heads=heads, block_q=block, **options))
    return plans


def _token_owner(main_slots: np.ndarray, tile_owner: np.ndarray, size: int) -> np.ndarray:
    owner = np.full(size, -1, dtype=np.int64)
    valid = main_slots >= 0
    owner[main_slots[valid]] = np.broadcast_to(tile_owner[:, None], main_slots.shape)[valid]
    return owner


def _build(
    full: Plan, ranks: int, self_attention: bool, name: str, tile_owner, q_owner, kv_owner
) -> ContextParallelPlan:
    main_slots, main_kv_slots = _part_sides(full, full.parts[0])
    rank_tiles = tuple(np.flatnonzero(tile_owner == r) for r in range(ranks))
    q_tokens = tuple(main_slots[t][main_slots[t] >= 0] for t in rank_tiles)
    if self_attention:
        kv_tokens = q_tokens
    else:
        visit = np.concatenate([main_kv_slots.reshape(-1), np.arange(full.kv_canvas.size)])
        visit = visit[visit >= 0]
        _, first = np.unique(visit, return_index=True)
        kv_tokens = tuple(_local_order(kv_owner, visit[np.sort(first)], ranks))
    position = np.empty(full.kv_canvas.size, dtype=np.int64)
    for tokens in kv_tokens:
        position[tokens] = np.arange(tokens.size)
    subs = tuple(sub_plan(full, rank_tiles[r], f"cp rank {r}/{ranks}") for r in range(ranks))
    needed = needed_kv(full, q_owner, ranks)
    received = []
    for r in range(ranks):
        wanted = np.flatnonzero(needed[r] & (kv_owner != r))
        wanted = wanted[np.lexsort((position[wanted], kv_owner[wanted]))]
        source = kv_owner[wanted]
        received.append(tuple(wanted[source == s] for s in range(ranks)))
    return ContextParallelPlan(
        full, ranks, self_attention, q_owner, kv_owner, rank_tiles, q_tokens, kv_tokens, subs, tuple(received), name
    )
