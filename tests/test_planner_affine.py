"""Affine mask_mods are recognised and rewritten to IR nodes (``maskir.planner.affine``).

Property: for random mask_mods built from affine comparisons of q and kv (bands, kv ranges, // and % by
constants, abs, min/max, torch.where, & | ~), the recognised pattern exists, and both its dense mask and
the plan of the Predicate equal the mask_mod evaluated on every (q, kv) pair by torch. Mask_mods that are
only partly affine plan as ``superset & predicate``, exactly.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskir.canvas import Canvas
from maskir.ir import And, Blocks, Causal, Columns, Not, Predicate, Prefix, Strided, Window
from maskir.planner import plan
from maskir.planner.affine import analyse, recognise
from maskir.reference import reference_mask

OPS = ["<", "<=", ">", ">=", "==", "!="]
TABLE = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)


def _compare(x, op: str, y):
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y, "!=": x != y}[op]


@st.composite
def atoms(draw):
    """(text, mask_mod(q, kv) -> bool) for one affine comparison."""
    c = draw(st.integers(-40, 40))
    k = draw(st.integers(-40, 40))
    s = draw(st.integers(1, 9))
    op = draw(st.sampled_from(OPS))
    kind = draw(st.sampled_from(["band", "kv", "rev", "blocks", "strided", "columns", "abs", "where", "div", "min"]))
    if kind == "band":
        return f"q - kv + {c} {op} {k}", lambda q, kv: _compare(q - kv + c, op, k)
    if kind == "kv":
        return f"kv + {c} {op} {k}", lambda q, kv: _compare(kv + c, op, k)
    if kind == "rev":
        return f"{k} {op} kv - q", lambda q, kv: _compare(k, op, kv - q)
    if kind == "blocks":
        o = draw(st.integers(0, 20))
        return f"(q + {o}) // {s} {op} (kv + {o}) // {s}", lambda q, kv: _compare((q + o) // s, op, (kv + o) // s)
    if kind == "strided":
        r = draw(st.integers(-2, 10))
        return f"(q - kv + {c}) % {s} {op} {r}", lambda q, kv: _compare((q - kv + c) % s, op, r)
    if kind == "columns":
        return f"({c} - kv) % {s} {op} {k % 10}", lambda q, kv: _compare((c - kv) % s, op, k % 10)
    if kind == "abs":
        return f"abs(q - kv + {c}) {op} {k}", lambda q, kv: _compare(abs(q - kv + c), op, k)
    if kind == "where":
        return (
            f"where(q >= kv, q - kv, {s} * (kv - q)) {op} {k}",
            lambda q, kv: _compare(torch.where(q >= kv, q - kv, s * (kv - q)), op, k),
        )
    if kind == "div":
        return f"(kv - {c}) // {s} {op} {k}", lambda q, kv: _compare((kv - c) // s, op, k)
    return (
        f"maximum(q - kv, kv - q + {c}) {op} {k}",
        lambda q, kv: _compare(torch.maximum(q - kv, kv - q + c), op, k),
    )


@st.composite
def mask_mods(draw, depth: int = 2):
    if depth == 0 or draw(st.booleans()):
        return draw(atoms())
    how = draw(st.sampled_from(["&", "|", "~", "where"]))
    a_text, a = draw(mask_mods(depth - 1))
    if how == "~":
        return f"~({a_text})", lambda q, kv: ~a(q, kv)
    b_text, b = draw(mask_mods(depth - 1))
    if how == "&":
        return f"({a_text}) & ({b_text})", lambda q, kv: a(q, kv) & b(q, kv)
    if how == "|":
        return f"({a_text}) | ({b_text})", lambda q, kv: a(q, kv) | b(q, kv)
    c_text, c = draw(mask_mods(depth - 1))
    return f"where({a_text}, {b_text}, {c_text})", lambda q, kv: torch.where(a(q, kv), b(q, kv), c(q, kv))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_mods(), st.integers(10, 90), st.integers(10, 90), st.sampled_from([(16, 16), (32, 16), (None, None)]))
def test_recognised_mask_mod_plans_equal_brute_force(mask_mod, nq, nkv, blocks):
    text, fn = mask_mod
    predicate = Predicate(lambda b, h, q, kv: fn(q, kv))
    canvas, kv_canvas = Canvas((nq,)), Canvas((nkv,))
    expected = reference_mask(predicate, canvas, kv_canvas)
    rewritten = recognise(predicate, canvas, kv_canvas)
    assert rewritten is not None, text
    np.testing.assert_array_equal(
        reference_mask(rewritten, canvas, kv_canvas), expected, err_msg=f"{text} -> {rewritten}"
    )
    planned = plan(predicate, canvas, kv_canvas, block_q=blocks[0], block_kv=blocks[1])
    np.testing.assert_array_equal(planned.to_mask(0), expected, err_msg=text)


def test_causal_window_lambda_is_window_and_plans_identically():
    canvas = Canvas((16384,))
    predicate = Predicate(lambda b, h, q, kv: (q - kv < 1024) & (kv <= q))
    assert recognise(predicate, canvas, canvas) == Window(1023, 0)
    planned, window = plan(predicate, canvas), plan(Window(1023, 0), canvas)
    assert planned.pattern == window.pattern
    assert (planned.block_q, planned.block_kv, planned.parts[0].layout.name) == (
        window.block_q,
        window.block_kv,
        window.parts[0].layout.name,
    )
    for mine, theirs in zip(planned.parts[0].tables, window.parts[0].tables):
        assert mine.runs.equals(theirs.runs)


def test_causal_window_lambda_plans_a_million_tokens_in_well_under_a_second():
    canvas = Canvas((1 << 20,))
    started = time.perf_counter()
    planned = plan(Predicate(lambda b, h, q, kv: (q - kv < 1024) & (kv <= q)), canvas)
    assert time.perf_counter() - started < 1.0
    assert planned.pattern == Window(1023, 0)


@pytest.mark.parametrize(
    ("mask_mod", "expected"),
    [
        (lambda b, h, q, kv: kv <= q, Causal()),
        (lambda b, h, q, kv: (kv <= q) | (kv < 4), Prefix(4) | Causal()),
        (lambda b, h, q, kv: q // 16 == kv // 16, Blocks(16)),
        (lambda b, h, q, kv: (q - kv) % 4 == 1, Strided(4, 1)),
        (lambda b, h, q, kv: kv % 8 >= 6, Columns(8, 2)),
        (lambda b, h, q, kv: abs(q - kv) <= 3, Window(3, 3)),
        (lambda b, h, q, kv: kv > q, Not(Causal())),
        (lambda b, h, q, kv: torch.tensor(5) > kv, Prefix(5)),
    ],
    ids=["causal", "prefix_lm", "blocks", "strided", "columns", "abs_window", "anti_causal", "captured_0d_tensor"],
)
def test_common_mask_mods_become_their_ir_nodes(mask_mod, expected):
    canvas = Canvas((256,))
    assert recognise(Predicate(mask_mod), canvas, canvas) == expected


@pytest.mark.parametrize(
    "mask_mod",
    [
        lambda b, h, q, kv: q > 3,  # q alone has no IR node
        lambda b, h, q, kv: (h == 0) | (kv <= q),  # the head index
        lambda b, h, q, kv: q * kv < 50,  # a product of indices
        lambda b, h, q, kv: torch.tensor([0, 1, 1, 2] * 16)[q] == torch.tensor([0, 1, 1, 2] * 16)[kv],  # a table
        lambda b, h, q, kv: torch.eye(4, dtype=torch.bool)[q // 16, kv // 16],  # a 2-D table, a tuple index
    ],
    ids=["q_alone", "head", "product", "table", "table_2d"],
)
def test_non_affine_mask_mods_are_not_recognised_and_still_plan_exactly(mask_mod):
    canvas = Canvas((64,))
    predicate = Predicate(mask_mod)
    assert recognise(predicate, canvas, canvas) is None
    expected = reference_mask(predicate, canvas)
    np.testing.assert_array_equal(plan(predicate, canvas, block_q=16, block_kv=16).to_mask(0), expected)


def test_python_control_flow_is_not_recognised():
    canvas = Canvas((64,))
    assert recognise(Predicate(lambda b, h, q, kv: (kv <= q) if q > 0 else False), canvas, canvas) is None


@pytest.mark.parametrize(
    "mask_mod",
    [
        lambda b, h, q, kv: (kv <= q) & (TABLE[q] == TABLE[kv]),
        lambda b, h, q, kv: (q - kv < 10) & (kv <= q) & ((q * kv) % 3 != 0),
        lambda b, h, q, kv: ((kv <= q) | (h == 1)) & (q > 5),
        lambda b, h, q, kv: torch.where(TABLE[q] > 0, kv <= q, kv >= q),
        lambda b, h, q, kv: ~((q * kv) % 3 == 0) | (abs(q - kv) < 3),
    ],
    ids=["causal_documents", "window_product", "head", "where_table", "not_product"],
)
def test_partly_affine_mask_mods_plan_exactly_within_their_affine_superset(mask_mod):
    """Where the fragment cannot follow (tables, q * kv, h), the affine parts still bound the predicate:
    the planner plans ``superset & predicate``, equal to the mask on every head."""
    canvas = Canvas((100,))
    predicate = Predicate(mask_mod)
    found = analyse(predicate, canvas, canvas)
    assert found is not None and not found[1]
    for head in range(2):
        assert (reference_mask(found[0], canvas) >= reference_mask(predicate, canvas, head=head)).all()
    planned = plan(predicate, canvas, heads=2, block_q=16, block_kv=16)
    for head in range(2):
        np.testing.assert_array_equal(planned.to_mask(head), reference_mask(predicate, canvas, head=head))


def test_a_causal_mask_mod_with_a_table_plans_as_causal_and_the_predicate():
    predicate = Predicate(lambda b, h, q, kv: (kv <= q) & (TABLE[q] == TABLE[kv]))
    assert plan(predicate, 100, block_q=16, block_kv=16).pattern == And(Causal(), predicate)
