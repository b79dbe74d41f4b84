"""The expression DAG: structural identity, folding (before/after), types, printing, the division pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskir.codegen.common import expr as E  # noqa: N812
from maskir.codegen.common.division import lower_division
from maskir.codegen.common.evaluate import evaluate
from maskir.codegen.common.expr import Expr, TensorRef
from maskir.codegen.common.simplify import simplified

B, H, Q, KV, SCORE = (E.var(name) for name in ("b", "h", "q", "kv", "score"))


def test_equal_expressions_built_twice_are_equal_and_hash_alike():
    first = E.eq(Q // 8, KV // 8) & (KV <= Q + 3)
    second = E.eq(Q // 8, KV // 8) & (KV <= Q + 3)
    assert first is not second and first == second and hash(first) == hash(second)
    assert {first: 1}[second] == 1


def test_constants_of_different_dtypes_differ():
    assert len({E.const(1), E.const(True), E.const(1.0)}) == 3


def test_an_expression_has_no_truth_value():
    with pytest.raises(TypeError, match="no truth value"):
        bool(Q < KV)


def test_expressions_are_immutable():
    with pytest.raises(AttributeError, match="immutable"):
        Q.op = "var"


@pytest.mark.parametrize(
    ("built", "text"),
    [
        (Q + 0, "q"),
        (Q * 1, "q"),
        (Q * 0, "0"),
        (SCORE * 1, "score"),
        (SCORE * 0, "score * 0"),  # NaN * 0 is NaN: not folded for floats
        ((Q + 2) - 3, "q - 1"),
        (5 + Q - 5, "q"),
        (Q // 4 // 2, "q // 8"),
        (Q % 1, "0"),
        (E.const(2) * 3 + 1, "7"),
        (E.logical_and(True, Q < KV), "q < kv"),
        (E.logical_or(Q < KV, True), "True"),
        (~~(Q < KV), "q < kv"),
        (~(Q < KV), "q >= kv"),
        (~(SCORE < 0.0), "~(score < 0.0)"),  # NaN: not flipped for floats
        (abs(Q % 3), "q % 3"),
        (abs(Q - KV), "abs(q - kv)"),
        (Q >= 0, "True"),
        (Q < 0, "False"),
        (abs(Q - KV) >= -1, "True"),
        (E.where(True, Q, KV), "q"),
        (E.where(Q < KV, H, H), "h"),
        (E.where(Q < KV, True, False), "q < kv"),
        (E.where(Q < KV, False, True), "q >= kv"),
        (E.eq(Q, Q), "True"),
        (E.eq(Q < KV, False), "q >= kv"),
        (E.neg(-Q), "q"),
        (E.exp(0), "1.0"),
        (E.minimum(Q, Q), "q"),
        (E.truediv(Q, 1), "to_float(q)"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_builders_fold(built, text):
    assert str(built) == text


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Q & KV, TypeError, "and .* takes bool operands, got a int"),
        (lambda: Q + (Q < KV), TypeError, "add takes int or float operands, got a bool"),
        (lambda: SCORE // 2, TypeError, "floordiv takes int operands, got a float"),
        (lambda: E.floordiv(Q, 0), ValueError, "floordiv by the constant 0"),
        (lambda: E.where(Q < KV, Q < 3, Q), TypeError, "two bool branches or two numeric"),
        (lambda: E.var("x"), ValueError, "Unknown variable 'x'"),
        (lambda: E.const("1"), TypeError, "bool, int or float, got str"),
        (lambda: E.load(TensorRef("t", "float", (4, 4)), Q), ValueError, "needs 2 indices"),
        (lambda: E.load(TensorRef("t", "float", (4,)), SCORE), TypeError, "load index of 't' takes int"),
        (lambda: TensorRef("1t", "float", (4,)), ValueError, "identifier"),
        (lambda: TensorRef("t", "half", (4,)), ValueError, "dtype must be one of"),
    ],
)
def test_builders_reject_ill_typed_operands(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_tensors_lists_each_tensor_once_sorted_by_name():
    table, ids = TensorRef("table", "float", (8,)), TensorRef("ids", "int", (None, 16))
    built = E.load(table, Q % 8) + E.load(table, KV % 8) + E.to_float(E.load(ids, B, Q))
    assert built.tensors() == (ids, table)


def test_tensors_rejects_two_tensors_with_one_name():
    built = E.load(TensorRef("t", "float", (8,)), Q) + E.load(TensorRef("t", "float", (9,)), KV)
    with pytest.raises(ValueError, match="both named 't'"):
        built.tensors()


def test_load_outside_the_shape_reads_zero():
    ref = TensorRef("t", "float", (3,), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(evaluate(E.load(ref, Q - 1), {"q": np.arange(5)}), [0.0, 1.0, 2.0, 3.0, 0.0])


# -- printing: the text is Python that means the same ----------------------------------------------


def _int_exprs() -> st.SearchStrategy[Expr]:
    leaves = st.sampled_from([Q, KV, H]) | st.integers(-9, 9).map(E.const)
    unary = [abs, E.neg]
    binary = [E.add, E.sub, E.mul, E.minimum, E.maximum]
    by_constant = [E.floordiv, E.mod]

    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from(unary), inner).map(lambda t: t[0](t[1])),
            st.tuples(st.sampled_from(binary), inner, inner).map(lambda t: t[0](t[1], t[2])),
            st.tuples(st.sampled_from(by_constant), inner, st.integers(1, 7)).map(lambda t: t[0](t[1], t[2])),
        )

    return st.recursive(leaves, extend, max_leaves=8)


def _bool_exprs() -> st.SearchStrategy[Expr]:
    comparisons = [E.lt, E.le, E.gt, E.ge, E.eq, E.ne]
    leaves = st.tuples(st.sampled_from(comparisons), _int_exprs(), _int_exprs()).map(lambda t: t[0](t[1], t[2]))

    def extend(inner):
        return st.one_of(
            inner.map(E.logical_not),
            st.tuples(st.sampled_from([E.logical_and, E.logical_or]), inner, inner).map(lambda t: t[0](t[1], t[2])),
            st.tuples(inner, inner, inner).map(lambda t: E.where(*t)),
        )

    return st.recursive(leaves, extend, max_leaves=5)


ENV = {"q": np.arange(-6, 6)[:, None], "kv": np.arange(-5, 5)[None, :], "h": 3}
PYTHON = {**ENV, "min": np.minimum, "max": np.maximum, "abs": np.abs, "where": np.where}


@given(st.one_of(_int_exprs(), _bool_exprs()))
def test_printed_text_evaluates_as_python_to_the_same_value(built):
    expected = evaluate(built, ENV)
    np.testing.assert_array_equal(np.broadcast_to(eval(str(built), dict(PYTHON)), np.shape(expected) or ()), expected)


# -- the division pass -----------------------------------------------------------------------------


@given(_int_exprs(), st.integers(-7, 7).filter(bool))
def test_lower_division_keeps_python_semantics_with_c_division(dividend, divisor):
    for op in (E.floordiv, E.mod):
        original = op(dividend - 4, divisor)
        lowered = lower_division(original)
        np.testing.assert_array_equal(evaluate(lowered, ENV), evaluate(original, ENV))
        for node in E.topo(lowered):
            if node.op in ("floordiv", "mod"):
                assert node.args[0].nonnegative and node.args[1].nonnegative, node


def test_truncating_division_rounds_toward_zero():
    env = {"q": np.array([-7, -7, 7, 7]), "kv": np.array([2, -2, 2, -2])}
    np.testing.assert_array_equal(evaluate(E.tdiv(Q, KV), env), [-3, 3, 3, -3])
    np.testing.assert_array_equal(evaluate(E.trem(Q, KV), env), [-1, -1, 1, 1])
    assert str(E.tdiv(-7, 2)) == "-3" and str(E.trem(-7, 2)) == "-1"


def test_rewrite_rules_return_an_argument_or_build_through_the_given_constructor():
    """simplify reads nodes and builds only through ``make``: an identity returns its argument untouched,
    a gathered constant builds new nodes, and no rule leaves the raw node."""
    built = []

    def make(op, args, dtype, value=None):
        built.append(op)
        return E.make(op, args, dtype, value)

    assert simplified("add", (Q, E.const(0)), "int", make) is Q and built == []
    assert simplified("sub", (Q + 2, E.const(3)), "int", make) == Q - 1 and built == ["const", "sub"]
    assert simplified("lt", (Q, KV), "bool", make).op == "lt" and built[-1] == "lt"
