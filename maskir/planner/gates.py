"""Where run-time data can close tiles, decided once at planning time: the gate tree of a pattern and the
tiles of its static subtrees.

A pattern with ``Segments()`` or ``Routing`` is planned as a static superset; per call the runtime closes
the tiles the data leaves empty. ``gate_tree`` says how: the leaves (Segments, Routing) combine through the
pattern, ``&`` ands their flags, ``|`` ors them with the flags of its other side; static top-level
conjuncts are implied by the plan's entries and left out; anything else over run-time data (``~``,
PerHead, a Predicate) closes nothing. A static subtree under ``|`` (``(Routing(128, 8) & Causal()) |
(Blocks(128) & Causal())``: the diagonal blocks are always kept) contributes the tiles its own plan
lists (and, to prove tiles FULL per call, ``full_tree``'s static subtrees, the top-level conjuncts
included): ``list_static_subtrees`` plans each once, at the plan's block sizes in the identity layout, and
stores the table in ``PlanPart.static_tables``, so nothing plans again when kernels are built or called.
"""

from __future__ import annotations

import dataclasses
from functools import reduce

from maskir.ir import And, Or, Pattern, Routing, Segments, is_dynamic
from maskir.planner.affine import rewrite_predicates
from maskir.planner.plan import Plan, PlanPart, TileTable
from maskir.planner.single_part import candidate_plans

Gate = tuple
"""("leaf", Segments | Routing), ("static", pattern), or ("and" | "or", Gate, Gate)."""


def _conjuncts(pattern: Pattern) -> list[Pattern]:
    if isinstance(pattern, And):
        return _conjuncts(pattern.left) + _conjuncts(pattern.right)
    return [pattern]


def _combine(op: str, gates: list[Gate]) -> Gate | None:
    return reduce(lambda a, b: (op, a, b), gates) if gates else None


def _gate(pattern: Pattern) -> Gate | None:
    """The gate of a subtree that reads run-time data; None when it cannot close a tile."""
    if isinstance(pattern, (Segments, Routing)):
        return ("leaf", pattern)
    if isinstance(pattern, (And, Or)):
        sides = [_gate(side) if is_dynamic(side) else ("static", side) for side in (pattern.left, pattern.right)]
        if isinstance(pattern, And):  # a side that cannot close leaves the other one in charge
            return _combine("and", [side for side in sides if side is not None])
        return None if None in sides else ("or", *sides)
    return None


def gate_tree(pattern: Pattern) -> Gate | None:
    """How per-call data can close the tiles of ``pattern``'s plan; None when it cannot."""
    return _combine("and", [g for c in _conjuncts(pattern) if is_dynamic(c) and (g := _gate(c)) is not None])


def full_tree(pattern: Pattern) -> Gate | None:
    """How per-call data can prove a listed tile FULL (every pair allowed, so the kernels skip the
    predicate): the whole pattern as a gate tree, a leaf FULL where the data makes it true on the whole
    tile, a static subtree where its own plan says FULL; ``&`` and ``|`` of FULL are FULL. None when some
    part of the pattern over run-time data (``~``, PerHead, a Predicate) cannot be proven."""
    if isinstance(pattern, (Segments, Routing)):
        return ("leaf", pattern)
    if not is_dynamic(pattern):
        return ("static", pattern)
    if isinstance(pattern, (And, Or)):
        sides = [full_tree(pattern.left), full_tree(pattern.right)]
        return None if None in sides else ("and" if isinstance(pattern, And) else "or", *sides)
    return None


def static_subtrees(gate: Gate) -> list[Pattern]:
    """The static subtrees of a gate tree, left to right."""
    if gate[0] == "static":
        return [gate[1]]
    return [] if gate[0] == "leaf" else static_subtrees(gate[1]) + static_subtrees(gate[2])


def list_static_subtrees(plan: Plan) -> Plan:
    """``plan`` with ``static_tables`` filled on every identity-layout part with a gate tree whose gate tree
    or FULL tree (``full_tree``) has static subtrees: per subtree, the table of its own single-part identity
    plan at ``plan``'s block sizes, or None when that plan differs per head (its tiles then cannot gate every
    head alike). A part without a gate tree (a static pattern) gates nothing and gets none."""
    parts = []
    for part in plan.parts:
        gate = gate_tree(part.pattern) if part.layout.is_identity else None
        trees = (gate, full_tree(part.pattern)) if gate is not None else ()
        subtrees = [sub for tree in trees if tree is not None for sub in static_subtrees(tree)]
        tables = tuple((sub, _own_table(sub, plan)) for sub in dict.fromkeys(subtrees))
        parts.append(dataclasses.replace(part, static_tables=tables) if tables else part)
    return dataclasses.replace(plan, parts=tuple(parts))


def _own_table(sub: Pattern, plan: Plan) -> TileTable | None:
    """The identity-layout tile table of static ``sub`` on ``plan``'s canvases and tiles (one head group)."""
    sub = rewrite_predicates(sub, plan.canvas, plan.kv_canvas)
    args = (plan.canvas, plan.kv_canvas, plan.heads, plan.block_q, plan.block_kv, "identity")
    (own,) = candidate_plans(sub, *args)
    part: PlanPart = own.parts[0]
    return part.tables[0] if len(part.tables) == 1 else None
