"""The flex emission of the shared lowering: a pattern as a FlexAttention ``mask_mod``.

``to_mask_mod(pattern, canvas)`` lowers the pattern once with ``lower_predicate`` (the same ``Expr`` the
Triton and TVM kernels render) and returns ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` that walks
that expression with torch operators. Nothing here knows what a node means: each ``Expr`` op maps to the
torch spelling of its documented semantics (``maskir.codegen.common.expr``), so a pattern gives the same
allowed set on flex_attention as on maskir's kernels.

The mask_mod works where flex calls one: under ``vmap`` (``create_mask``, ``create_block_mask``),
inside ``torch.compile``'d flex kernels, and on broadcast index tensors
(``mask_mod(b[:, None, None, None], h[None, :, None, None], q[..., :, None], kv[..., None, :])``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from maskir.canvas import Canvas
from maskir.codegen.common.expr import Expr, TensorRef, numbered
from maskir.codegen.common.lower import lower_predicate
from maskir.ir import Pattern

Value = torch.Tensor | bool | int | float
"""What an expression node evaluates to: a tensor, or a Python scalar for a constant."""


def _where(condition: torch.Tensor, a: Value, b: Value) -> torch.Tensor:
    return torch.where(condition, a, b)


def _tdiv(a: Value, b: Value) -> Value:
    """C division: |a| // |b| with the sign of a * b (truncation toward zero)."""
    return torch.where((a < 0) == (b < 0), abs(a) // abs(b), -(abs(a) // abs(b)))


TORCH_OPS: dict[str, Callable[..., Value]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
    "floordiv": lambda a, b: a // b,  # torch's // and % floor, as Python's do
    "mod": lambda a, b: a % b,
    "tdiv": _tdiv,
    "trem": lambda a, b: a - b * _tdiv(a, b),
    "min": lambda a, b: _where(a <= b, a, b),
    "max": lambda a, b: _where(a >= b, a, b),
    "neg": lambda a: -a,
    "abs": abs,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "not": lambda a: ~a,
    "where": _where,
    "exp": torch.exp,
    "exp2": torch.exp2,
    "log": torch.log,
    "tanh": torch.tanh,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "to_float": lambda a: a.to(torch.float32),
}
"""Each op with arguments, in torch. The builders fold constant-only nodes, so every op here gets at least
one tensor (the variables and loads are tensors) and Python scalars mix in through torch's operators.
``evaluate_torch`` converts to its ``float_dtype`` instead of float32."""

_ZERO = {"bool": False, "int": 0, "float": 0.0}


def _load(data: torch.Tensor, ref: TensorRef, indices: list[Value], float_dtype: torch.dtype) -> torch.Tensor:
    """``data[indices]`` as ``ref.dtype`` (floats as ``float_dtype``); 0 where an index falls outside
    ``ref.shape`` (None: in range)."""
    inside: Value = True
    clamped = []
    for index, extent in zip(indices, ref.shape):
        if extent is not None:
            inside = inside & (index >= 0) & (index < extent)
            index = min(max(index, 0), extent - 1) if isinstance(index, int) else index.clamp(0, extent - 1)
        clamped.append(index)
    value = data[tuple(clamped)]
    if ref.dtype == "bool":
        value = value != 0 if value.dtype != torch.bool else value
    elif ref.dtype == "float":
        value = value.to(float_dtype)
    return value if inside is True else torch.where(inside, value, _ZERO[ref.dtype])


def evaluate_torch(
    expr: Expr,
    env: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    float_dtype: torch.dtype = torch.float32,
) -> Value:
    """The value of ``expr`` with variables from ``env`` (b, h, q, kv, score) and loads from ``tensors``
    (by name), floats in ``float_dtype``. Shared nodes are computed once; differentiable in the float
    tensors (a load is a gather), which is how the float64 reference differentiates a traced score_mod."""
    return _evaluate(numbered(expr), env, tensors, float_dtype)


def _evaluate(
    steps: list[tuple[Expr, tuple[int, ...]]],
    env: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    float_dtype: torch.dtype = torch.float32,
) -> Value:
    values: list[Value] = []
    for node, positions in steps:
        args = [values[i] for i in positions]
        if node.op == "const":
            values.append(node.value)
        elif node.op == "var":
            values.append(env[node.value])
        elif node.op == "load":
            values.append(_load(tensors[node.value.name], node.value, args, float_dtype))
        elif node.op == "to_float":
            values.append(args[0].to(float_dtype))
        else:
            values.append(TORCH_OPS[node.op](*args))
    return values[-1]


def _as_canvas(value, name: str) -> Canvas:
    if isinstance(value, Canvas):
        return value
    if isinstance(value, (int, tuple, list)) and not isinstance(value, bool):
        return Canvas(value)
    raise TypeError(f"to_mask_mod argument {name} must be a Canvas, an int or a tuple of ints, got {value!r}.")


def to_mask_mod(
    pattern: Pattern,
    canvas: Canvas | int | tuple[int, ...],
    kv_canvas: Canvas | int | tuple[int, ...] | None = None,
    *,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A flex_attention ``mask_mod(b, h, q_idx, kv_idx)`` allowing exactly ``pattern``'s pairs.

    ``tensors`` supplies the run-time data the pattern reads, by the lowering's names: ``segments_q`` and
    ``segments_kv`` (int ids [B, N] for ``Segments``), ``routing_map`` (int8 [B, H, q_blocks, kv_blocks],
    1 where the kv block is routed, for ``Routing``). They must be on the device flex runs on. Tensors
    the lowering captured itself (a ``Predicate``'s tables) move to the device of ``q_idx``.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"to_mask_mod needs a maskir Pattern, got {type(pattern).__name__}.")
    canvas = _as_canvas(canvas, "canvas")
    kv_canvas = canvas if kv_canvas is None else _as_canvas(kv_canvas, "kv_canvas")
    expr = lower_predicate(pattern, canvas, kv_canvas)
    given = dict(tensors or {})
    missing = [ref.name for ref in expr.tensors() if ref.data is None and ref.name not in given]
    if missing:
        raise ValueError(f"{pattern} reads run-time tensors {missing}: pass tensors={{name: tensor}} to to_mask_mod.")
    captured = {ref.name: torch.as_tensor(ref.data) for ref in expr.tensors() if ref.data is not None}
    steps = numbered(expr)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        loaded = {**given, **{name: data.to(q_idx.device) for name, data in captured.items()}}
        allowed = _evaluate(steps, {"b": b, "h": h, "q": q_idx, "kv": kv_idx}, loaded)
        if isinstance(allowed, torch.Tensor):
            return allowed
        return q_idx.new_full((), allowed, dtype=torch.bool)

    mask_mod.__name__ = mask_mod.__qualname__ = "maskir_mask_mod"
    mask_mod.__doc__ = f"allowed(b, h, q, kv) of {pattern} on {canvas} (kv {kv_canvas}): {expr}"
    return mask_mod
