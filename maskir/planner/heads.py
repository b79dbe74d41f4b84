"""Head groups: ``PerHead`` resolved per head, heads with the same resolved pattern share one tile table."""

from __future__ import annotations

import numpy as np

from maskir.ir import Not, Pattern, PerHead, Predicate, Routing


def for_head(pattern: Pattern, head: int) -> Pattern:
    """The pattern head ``head`` uses: every ``PerHead`` replaced by its entry for that head."""
    if isinstance(pattern, PerHead):
        return for_head(pattern.patterns[head % len(pattern.patterns)], head)
    if not any(isinstance(node, PerHead) for node in pattern.walk()):
        return pattern
    if isinstance(pattern, Not):
        return Not(for_head(pattern.inner, head))
    return type(pattern)(for_head(pattern.left, head), for_head(pattern.right, head))


def head_groups(pattern: Pattern, heads: int) -> tuple[list[tuple[Pattern, int]], np.ndarray]:
    """([(resolved pattern, first head using it)], head_table[heads]).

    A ``Predicate`` may read the head index and ``Routing`` reads per-head indices, so heads whose pattern
    holds one are never merged here (the planner shares their tables when they come out equal).
    """
    groups: list[tuple[Pattern, int]] = []
    keys: dict[tuple, int] = {}
    table = np.zeros(heads, dtype=np.int64)
    for head in range(heads):
        resolved = for_head(pattern, head)
        reads_head = any(isinstance(node, (Predicate, Routing)) for node in resolved.walk())
        key = (resolved, head if reads_head else None)
        if key not in keys:
            keys[key] = len(groups)
            groups.append((resolved, head))
        table[head] = keys[key]
    return groups, table
