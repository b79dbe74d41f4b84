"""Union decomposition: split an ``Or`` whose terms want different layouts into disjoint parts.

The pattern is read as a union of terms (``disjuncts``: Or flattened, And distributed over Or, e.g.
``(Window(255, 0) | Columns(128, 1)) & Causal()`` -> ``Window & Causal``, ``Columns & Causal``). Each term
is priced alone over the layout candidates; if the terms prefer different layouts, each group of terms A
(with the rest B) gives a two-part plan: part 1 = A in its cheapest layout, part 2 = B & ~A in its own
(e.g. the summary columns gathered into a few contiguous kv tiles; B alone when every term of B has a
conjunct whose negation is one of every term of A, as the two sides of a ``torch.where``, so B & ~A is B).
The parts are disjoint by construction and cover the pattern, so the kernels merge them by log-sum-exp.
The caller keeps a split only when the cost says it wins.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

from maskir.ir import And, Not, Or, Pattern, PerHead
from maskir.planner.layouts import conjuncts
from maskir.planner.plan import Plan
from maskir.planner.single_part import candidate_plans

MAX_TERMS = 8
"""Unions with more terms are planned as one part."""


def disjuncts(pattern: Pattern) -> list[Pattern]:
    """The pattern as a list of terms whose union it is (Or flattened, And distributed over Or)."""
    if isinstance(pattern, Or):
        return disjuncts(pattern.left) + disjuncts(pattern.right)
    if isinstance(pattern, And):
        left, right = disjuncts(pattern.left), disjuncts(pattern.right)
        if len(left) * len(right) > 1:
            return [a & b for a in left for b in right]
    return [pattern]


def _union(terms: list[Pattern]) -> Pattern:
    return reduce(Or, terms)


def disjoint(a: Pattern, b: Pattern) -> bool:
    """True when a conjunct of ``a`` is the negation of one of ``b`` (X and ~X), so no pair is in both: the
    terms of ``torch.where(c, x, y)``, ``c & x`` and ``~c & y``."""
    ours, theirs = conjuncts(a), conjuncts(b)
    return any(Not(x) in theirs or (isinstance(x, Not) and x.inner in theirs) for x in ours)


def split_union(best: Plan, price: Callable[[Plan], float]) -> list[Plan]:
    """Two-part plans of ``best.pattern`` at ``best``'s block sizes, one per group of terms that share a
    preferred layout; empty when the pattern is not a union of terms with different preferences."""
    pattern = best.pattern
    if any(isinstance(node, PerHead) for node in pattern.walk()):
        return []
    terms = disjuncts(pattern)
    if not 2 <= len(terms) <= MAX_TERMS:
        return []

    priced: dict[Pattern, Plan] = {}

    def cheapest(part: Pattern) -> Plan:  # a group of one term is that term again: priced once
        if part not in priced:
            grid = (best.canvas, best.kv_canvas, best.heads, best.block_q, best.block_kv)
            priced[part] = min(candidate_plans(part, *grid, "auto"), key=price)
        return priced[part]

    preferred = [cheapest(term).layout.name for term in terms]
    groups = list(dict.fromkeys(preferred))
    if len(groups) < 2:
        return []
    plans = []
    for group in groups:
        chosen = [t for t, name in zip(terms, preferred) if name == group]
        others = [t for t, name in zip(terms, preferred) if name != group]
        first, rest = _union(chosen), _union(others)
        apart = all(disjoint(a, b) for a in chosen for b in others)  # then rest & ~first is rest
        parts = (cheapest(first).parts[0], cheapest(rest if apart else And(rest, Not(first))).parts[0])
        plans.append(Plan(pattern, best.canvas, best.kv_canvas, best.heads, best.block_q, best.block_kv, parts))
    return plans
