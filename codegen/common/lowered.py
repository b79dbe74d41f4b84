"""What every backend renders for one plan: the parts' predicates, the score_mod and its derivative.

``lower_plan(plan, score_mod)`` is the one lowering step the backends share; they differ only in how they
print these expressions and the kernels around them. Runtime tensors (segment ids, the routing map,
tables a predicate or score_mod reads) are collected by name over all expressions, so every kernel of a
plan takes one argument list, in the sorted order of ``tensor_names``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

import maskir
from maskir.codegen.common.expr import Expr, TensorRef
from maskir.codegen.common.lower import lower_predicate
from maskir.codegen.common.score_grad import score_derivative
from maskir.codegen.common.score_mod import trace_score_mod
from maskir.codegen.common.source_text import check_identifier, comment_text
from maskir.codegen.common.table_grad import TableGrads, table_grads
from maskir.planner.plan import Plan


@dataclass(frozen=True)
class LoweredPlan:
    """``predicates[i]``: allowed(b, h, q, kv) of plan part i; ``score_mod``: the traced score_mod (a float
    Expr over ``score``, b, h, q, kv) and ``score_grad`` its d/d score, both None without one; ``table_grads``:
    the gradients of the float tensors it reads (``table_grad``), None when it reads none; ``refs``: the
    tensors they read, by name."""

    predicates: tuple[Expr, ...]
    score_mod: Expr | None
    score_grad: Expr | None
    refs: dict[str, TensorRef]
    table_grads: TableGrads | None = None

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Runtime tensor names in argument order."""
        return tuple(sorted(self.refs))

    @property
    def tensor_dims(self) -> tuple[int, ...]:
        return tuple(self.refs[name].ndim for name in self.tensor_names)

    @property
    def static_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors known at lowering (captured by a score_mod, static index tables): passed on every call."""
        return {name: ref.data for name, ref in sorted(self.refs.items()) if ref.data is not None}

    @property
    def score_mod_text(self) -> str | None:
        """The traced score_mod as text (a cache key field)."""
        return None if self.score_mod is None else str(self.score_mod)

    def expressions(self) -> list[Expr]:
        """Every expression a kernel evaluates: the predicates, then score_mod and its derivative."""
        scored = [self.score_mod, self.score_grad] if self.score_mod is not None else []
        return [*self.predicates, *scored]


def check_kernel_arguments(
    caller: str,
    plan: Plan,
    *,
    head_dim: int,
    head_dims: tuple[int, int],
    dtype: torch.dtype,
    dtypes: Collection[torch.dtype],
    kv_heads: int,
) -> None:
    """TypeError/ValueError naming the argument unless ``plan`` is a Plan, ``head_dim`` an int within
    ``head_dims`` (inclusive), ``dtype`` one of ``dtypes`` and ``kv_heads`` divides the plan's heads."""
    if not isinstance(plan, Plan):
        raise TypeError(f"{caller} needs a maskir Plan, got {type(plan).__name__}.")
    low, high = head_dims
    if not isinstance(head_dim, int) or not low <= head_dim <= high:
        raise ValueError(f"head_dim must be an int in [{low}, {high}], got head_dim={head_dim!r}.")
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(map(str, dtypes))}, got dtype={dtype}.")
    if not isinstance(kv_heads, int) or kv_heads < 1 or plan.heads % kv_heads:
        raise ValueError(
            f"Key/value heads must evenly divide query heads, got heads_q={plan.heads}, heads_kv={kv_heads!r}."
        )


def source_title(plan: Plan, *, head_dim: int, dtype_name: str, kv_heads: int) -> str:
    """The first line of a generated module: maskir's version, the pattern on its canvases, dtype, head
    dim and heads (each backend appends what it needs), escaped to one line of printable ASCII."""
    heads = f"{plan.heads} heads" + (f" ({kv_heads} kv heads)" if kv_heads != plan.heads else "")
    kv_canvas = f" x kv {plan.kv_canvas}" if plan.kv_canvas != plan.canvas else ""
    return comment_text(
        f"# maskir {maskir.__version__.rsplit('.', 1)[0]} -- {plan.pattern} on {plan.canvas}{kv_canvas}, "
        f"{dtype_name}, head_dim {head_dim}, {heads}"
    )


def lower_plan(plan: Plan, score_mod: Callable | None = None) -> LoweredPlan:
    """Lower every part's pattern and trace ``score_mod``; ValueError if two tensors share a name."""
    predicates = tuple(lower_predicate(part.pattern, plan.canvas, plan.kv_canvas) for part in plan.parts)
    score = trace_score_mod(score_mod) if score_mod is not None else None
    grad = score_derivative(score) if score is not None else None
    tables = table_grads(score) if score is not None else None
    refs: dict[str, TensorRef] = {}
    for expr in [*predicates, *([score, grad] if score is not None else [])]:
        for ref in expr.tensors():
            check_identifier(ref.name, "a tensor name")
            if refs.setdefault(ref.name, ref) != ref:
                raise ValueError(f"Two different tensors are both named {ref.name!r}: {refs[ref.name]} and {ref}.")
    return LoweredPlan(predicates, score, grad, refs, tables)
