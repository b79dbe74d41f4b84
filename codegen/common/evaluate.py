"""Evaluate an Expr with numpy: the executable meaning of every op (ints in int64, floats in float64).

``env`` maps the variables the expression uses (``b``, ``h``, ``q``, ``kv``, ``score``) to scalars or
broadcastable arrays, e.g. ``q = arange(Nq)[:, None]`` and ``kv = arange(Nkv)[None, :]``, and may map a
tensor name to an array; a load from a tensor that ``env`` does not name reads the ``TensorRef``'s data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from maskir.codegen.common.expr import Expr, TensorRef, topo

_DTYPE = {"bool": np.bool_, "int": np.int64, "float": np.float64}


def _tdiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) == (b < 0), quotient, -quotient)


_OPS: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "truediv": np.true_divide,
    "floordiv": np.floor_divide,
    "mod": np.mod,
    "tdiv": _tdiv,
    "trem": lambda a, b: a - b * _tdiv(a, b),
    "min": np.minimum,
    "max": np.maximum,
    "neg": np.negative,
    "abs": np.abs,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "and": np.logical_and,
    "or": np.logical_or,
    "not": np.logical_not,
    "where": np.where,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "to_float": lambda a: np.asarray(a, dtype=np.float64),
}


def _table(ref: TensorRef, env: Mapping[str, Any]) -> np.ndarray:
    data = env[ref.name] if ref.name in env else ref.data
    if data is None:
        raise ValueError(f"The expression loads from {ref.name!r}: pass it in env (its shape is {ref.shape}).")
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        data = data.double() if data.is_floating_point() else data
        data = data.numpy()
    data = np.asarray(data)
    if data.ndim != ref.ndim:
        raise ValueError(f"Tensor {ref.name!r} must have {ref.ndim} dims (shape {ref.shape}), got {data.shape}.")
    return data


def _load(ref: TensorRef, table: np.ndarray, indices: list[np.ndarray]) -> np.ndarray:
    """table[indices] where every index lies in [0, extent) of ``ref.shape``, else 0."""
    indices = [np.asarray(i, dtype=np.int64) for i in np.broadcast_arrays(*indices)]
    inside = np.ones(indices[0].shape if indices else (), dtype=bool)
    for i, extent in zip(indices, ref.shape):
        if extent is not None:
            inside &= (i >= 0) & (i < extent)
    safe = tuple(np.where(inside, i, 0) for i in indices)
    return np.where(inside, table[safe], 0).astype(_DTYPE[ref.dtype])


def evaluate(expr: Expr, env: Mapping[str, Any]) -> np.ndarray:
    """The value of ``expr`` under ``env``, broadcast over the arrays in env."""
    values: dict[Expr, np.ndarray] = {}
    with np.errstate(all="ignore"):
        for node in topo(expr):
            if node.op == "const":
                value = np.asarray(node.value, dtype=_DTYPE[node.dtype])
            elif node.op == "var":
                if node.value not in env:
                    raise ValueError(f"The expression uses the variable {node.value!r}: pass it in env.")
                value = np.asarray(env[node.value], dtype=_DTYPE[node.dtype])
            elif node.op == "load":
                value = _load(node.value, _table(node.value, env), [values[a] for a in node.args])
            elif node.op == "in_range":
                offset = values[node.args[0]] - values[node.args[1]]
                value = (offset >= 0) & (offset <= node.value)
            else:
                value = np.asarray(_OPS[node.op](*(values[a] for a in node.args)), dtype=_DTYPE[node.dtype])
            values[node] = value
    return values[expr]
