"""Gradients of the floating tensors a score_mod reads (bias tables, slopes), as expressions per pair.

With x(q, kv) the modified score and dS = dL/dx the softmax backward already forms, a tensor T that the
score_mod loads at index i(q, kv) gets

    dT[e] = sum over computed allowed pairs with i(q, kv) = e of dS(q, kv) * dx/d load(q, kv).

Each distinct load of a float ``capture_*`` tensor gives one ``TableLoad``: ``weight`` = dx / d load
(``score_grad.derivative``, forward mode over the traced DAG) and ``entry`` = the flat position of
T[i] in one contiguous buffer holding every such tensor (T's first entry + row-major offset), -1 where
the index falls outside T (the load read 0 there and has no gradient). The backends render both and add
dS * weight into ``entry``; how they add deterministically is theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskir.codegen.common import expr as E  # noqa: N812 (the builders read as E.where, E.eq)
from maskir.codegen.common.expr import Expr, TensorRef, topo
from maskir.codegen.common.score_grad import derivative

TRAINABLE_PREFIX = "capture_"
"""Tensors a score_mod captured (``trace_score_mod`` names them capture_0, capture_1, ...)."""


@dataclass(frozen=True)
class TableLoad:
    """One load of a trainable tensor: its gradient weight dx/d load and flat buffer entry per pair."""

    tensor: str
    weight: Expr
    entry: Expr


@dataclass(frozen=True)
class TableGrads:
    """Every trainable load of a score_mod, and the layout of the one gradient buffer of their tensors:
    ``offsets[name]`` is the first entry of tensor ``name`` (shape ``shapes[name]``), ``entries`` the
    total."""

    loads: tuple[TableLoad, ...]
    offsets: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    entries: int

    def expressions(self) -> list[Expr]:
        return [e for load in self.loads for e in (load.weight, load.entry)]

    def gradient(self, buffer, name: str):
        """Tensor ``name``'s gradient: a copy of its entries of the flat ``buffer``, in its shape (a tensor of
        its own: an op may not return views of one buffer)."""
        first = self.offsets[name]
        return buffer[first : first + math.prod(self.shapes[name])].reshape(self.shapes[name]).clone()


def _flat_entry(ref: TensorRef, indices: tuple[Expr, ...], first: int) -> Expr:
    """first + row-major offset of ``ref[indices]``, or -1 when an index is outside ``ref.shape``."""
    inside, offset = E.const(True), E.const(first)
    for position, (index, extent) in enumerate(zip(indices, ref.shape)):
        inside = inside & (index >= 0) & (index < extent)
        offset = offset + index * math.prod(ref.shape[position + 1 :])
    return E.where(inside, offset, -1)


def table_grads(score_mod: Expr) -> TableGrads | None:
    """The trainable loads of a traced score_mod (float ``capture_*`` tensors with known shape), or None."""
    refs = [r for r in score_mod.tensors() if r.dtype == "float" and r.name.startswith(TRAINABLE_PREFIX)]
    if not refs:
        return None
    offsets, shapes, total = {}, {}, 0
    for ref in refs:
        offsets[ref.name], shapes[ref.name] = total, tuple(ref.shape)
        total += math.prod(ref.shape)
    loads = tuple(
        TableLoad(
            node.value.name, derivative(score_mod, node), _flat_entry(node.value, node.args, offsets[node.value.name])
        )
        for node in topo(score_mod)
        if node.op == "load" and node.value.name in offsets
    )
    return TableGrads(loads, offsets, shapes, total)
