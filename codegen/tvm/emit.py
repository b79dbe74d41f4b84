"""Emit one TVMScript ``IRModule`` for a plan: per part ``fwd_<i>``, ``dq_<i>`` and ``dkdv_<i>`` prim_funcs
(and for ``llvm``, unless a score_mod trains tensors, the fused backward ``bwd_<i>``).

The plan is lowered once (:func:`maskir.codegen.common.lowered.lower_plan`, the same expressions the
Triton backend renders); each part's predicate and the score_mod are rendered as TVMScript statements
(:func:`render_tvm`) into the kernel texts: the tile kernels of :mod:`maskir.codegen.tvm.tile_template` for
``llvm``, the row kernels of :mod:`maskir.codegen.tvm.template` for ``cuda``. The text is the whole
source: ``tvm.script.from_source`` parses it (no imports; it evaluates the expressions in the text), and
``tvm.compile`` builds it for ``llvm`` (CPU, the runtime's ``backend="tvm"``) or ``cuda`` (``sm_90``
source, see ``launch.cuda_source``).

Runtime tensors reach the kernels as buffers named like the tensors, with one symbolic extent per dim,
in the dtypes of ``render.BUFFER_DTYPES``; the launcher converts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maskir.codegen.common.expr import Expr
from maskir.codegen.common.lowered import LoweredPlan, check_kernel_arguments, lower_plan, source_title
from maskir.codegen.common.source_text import comment_lines
from maskir.codegen.common.table_grad import TableGrads
from maskir.codegen.common.template import fill
from maskir.codegen.tvm.render import BUFFER_DTYPES, render_tvm
from maskir.codegen.tvm.template import (
    COMMON_BUFFERS,
    COMMON_PARAMS,
    DKDV,
    DKDV_PAIR,
    DQ,
    DQ_PAIR,
    FORWARD,
    FORWARD_PAIR,
    KV_LIST,
    PAIR_GRADIENT,
    TABLE_BUFFER,
    TABLE_GRAD,
    TABLE_PARAMS,
    WALK,
)
from maskir.codegen.tvm.tile_template import (
    DKDV_UNITS,
    FUSED_UNITS,
    GATE_BUFFER,
    GATE_PARAMS,
    GATE_WALK,
    TILE_DKDV,
    TILE_DQ,
    TILE_FORWARD,
    split_vector_loops,
    tile_blocks,
)
from maskir.planner.plan import Plan

MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 256
TARGETS = ("llvm", "cuda")
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class TvmSource:
    """The TVMScript text, its target, head dim and kv heads, and what a launcher needs: runtime tensors
    in argument order, with their dims
    and the dtype their loads yield (``bool``/``int``/``float``); ``static_tensors`` are passed on every
    call; ``score_mod_text`` is the traced score_mod (a cache key field)."""

    source: str
    target: str
    head_dim: int
    kv_heads: int
    tensor_names: tuple[str, ...]
    tensor_dims: tuple[int, ...]
    tensor_kinds: tuple[str, ...]
    score_mod_text: str | None = None
    static_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    table_grads: TableGrads | None = None


def _check_arguments(plan: Plan, head_dim: int, dtype: torch.dtype, kv_heads: int, target: str) -> None:
    check_kernel_arguments(
        "generate_tvm_source",
        plan,
        head_dim=head_dim,
        head_dims=(MIN_HEAD_DIM, MAX_HEAD_DIM),
        dtype=dtype,
        dtypes=DTYPE_NAMES,
        kv_heads=kv_heads,
    )
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got target={target!r}.")


def _cuda_loops(outer: str, tiles: int, rows: int) -> dict[str, str]:
    """Loop heads of the row kernels over (batch x heads, tiles, rows): CUDA blocks and threads."""
    return {
        "outer": f'T.thread_binding(batch * {outer}, thread="blockIdx.y")',
        "tile": f'T.thread_binding({tiles}, thread="blockIdx.x")',
        "row": f'T.thread_binding({rows}, thread="threadIdx.x")',
    }


def table_rows(target: str, batch_heads: int, n_q_tiles: int, block_q: int) -> int:
    """Rows of a part's dQ table-gradient buffer: one per unit of work that runs alone (a batch x head x
    q tile of the llvm tile kernels, a thread, i.e. a q slot of one batch x head, on cuda)."""
    return batch_heads * n_q_tiles * (block_q if target == "cuda" else 1)


def _table_text(tables: TableGrads | None, target: str, values: dict[str, str]) -> dict[str, str]:
    """Values of the ``$table_*`` placeholders (the dQ kernel's table-gradient statements, or nothing), given
    a part's other ``values``."""
    if tables is None:
        return {"table_params": "", "table_buffer": "", "table_grad": ""}
    row = "(bh * $n_q_tiles + qt) * $block_q + r" if target == "cuda" else "item"
    steps = [
        fill(
            TABLE_GRAD,
            {
                **values,
                "table_weight": _statements(load.weight, f"tw{j}_", f"weight_{j}"),
                "table_entry": _statements(load.entry, f"te{j}_", f"entry_{j}"),
                "weight_name": f"weight_{j}",
                "entry_name": f"entry_{j}",
                "tg_row": row,
            },
        )
        for j, load in enumerate(tables.loads)
    ]
    return {
        "table_params": TABLE_PARAMS,
        "table_buffer": TABLE_BUFFER.replace("$tg_entries", str(tables.entries)),
        "table_grad": "\n".join(steps),
    }


def _walk(token: str, block: int) -> dict[str, str]:
    """Values of the ``$walk`` block over kv tiles (``token`` "kv") or q tiles ("q") of ``block`` slots."""
    side = token.upper()
    return {
        "walk": WALK,
        "walk_block": str(block),
        "walk_token": token,
        "walk_tokens": f"{side}_TOKENS",
        "walk_index": f"{side}_INDEX",
    }


def _tensor_text(lowered: LoweredPlan) -> tuple[str, str]:
    """(``, name_: T.handle`` parameters, buffer declarations) of the runtime tensors."""
    params, lines = [], []
    for name in lowered.tensor_names:
        ref = lowered.refs[name]
        extents = [f"{name}_n{d}" for d in range(ref.ndim)]
        lines += [f"        {extent} = T.int32()" for extent in extents]
        shape = f"({', '.join(extents)}{',' if ref.ndim == 1 else ''})" if extents else "(1,)"  # 0-d: one element
        lines.append(f'        {name} = T.match_buffer({name}_, {shape}, "{BUFFER_DTYPES[ref.dtype]}")')
        params.append(f", {name}_: T.handle")
    return "".join(params), "\n".join(lines)


def _statements(expr: Expr, prefix: str, result: str) -> str:
    """Rendered statements ending in ``result = <expr>`` (a bool result is stored as int32 0/1)."""
    lines, value = render_tvm(expr, prefix)
    value = f'T.Cast("int32", {value})' if expr.dtype == "bool" else value
    return "\n".join([*lines, f"{result} = {value}"])


def _optional(expr: Expr | None, prefix: str, result: str, default: str) -> str:
    """``_statements``, or ``result = default`` when there is no expression (no score_mod)."""
    return f"{result} = {default}" if expr is None else _statements(expr, prefix, result)


def _header(plan: Plan, *, head_dim: int, dtype: torch.dtype, kv_heads: int, target: str) -> str:
    title = source_title(plan, head_dim=head_dim, dtype_name=DTYPE_NAMES[dtype], kv_heads=kv_heads)
    lines = [f"{title}; TVM TensorIR for {target}"]
    for i, part in enumerate(plan.parts):
        lines.append(
            f"# part {i}: {part.pattern}, {plan.block_q}x{plan.block_kv} tiles, {part.layout.name} layout, "
            f"{part.n_q_tiles} q tiles x {part.n_kv_tiles} kv tiles"
        )
    if len(plan.parts) > 1:
        lines.append("# The parts are disjoint; their outputs merge by log-sum-exp (codegen.common.tables).")
    constants = {
        "block_q": plan.block_q,
        "block_kv": plan.block_kv,
        "heads": plan.heads,
        "kv_heads": kv_heads,
        "gqa_group": plan.heads // kv_heads,
        "head_dim": head_dim,
        "n_q": plan.canvas.size,
        "n_kv": plan.kv_canvas.size,
    }
    lines += [
        "# Numbers written into the kernels (TVMScript has no named constants), besides each part's tile counts",
        "#   and slots (tiles x block): " + ", ".join(f"{name} {value}" for name, value in constants.items()) + ".",
    ]
    lines += [
        "#",
        "# Q, K, V: [B, H, N, D] inputs (K, V with the kv heads); O, DQ, DK, DV fp32; LSE [B, H, N_q] natural log",
        "#   (-inf for a row with no allowed key, whose output is 0); DELTA = rowsum(dO * O).",
        "# b, h: batch and head; q, kv: ORIGINAL token indices; Q_TOKENS[slot] / KV_TOKENS[slot] is the token",
        "#   in a layout slot (-1 for padding). KV_START/KV_FULL/KV_INDEX: CSR list of kv tiles per q tile (FULL",
        "#   first); Q_START/Q_FULL/Q_INDEX: the transposed lists. One list per head group, stacked; HEAD_TABLE[h]",
        "#   is the group of head h. score = q.k * scale; s = score_mod(score) (or score); P = exp(s - lse).",
    ]
    return comment_lines(lines)


def generate_tvm_source(
    plan: Plan,
    *,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int | None = None,
    score_mod: Callable | None = None,
    target: str = "llvm",
    vector_lanes: int = 16,
    vector_registers: int = 32,
) -> TvmSource:
    """The TVMScript module for ``plan`` with q/k/v of ``dtype`` and ``head_dim``, ``kv_heads`` kv heads.

    ``target="llvm"``: the tile kernels (:mod:`~maskir.codegen.tvm.tile_template`), shaped for
    ``vector_lanes`` fp32 lanes per vector and ``vector_registers`` registers (the host's: 16 and 32 for
    AVX-512, 8 and 16 for AVX2, 4 and 32 for NEON; any values are correct, only speed differs). ``"cuda"``: the row kernels (:mod:`~maskir.codegen.tvm.template`), one thread
    per query or key row."""
    kv_heads = plan.heads if kv_heads is None else kv_heads
    _check_arguments(plan, head_dim, dtype, kv_heads, target)
    for name, value in (("vector_lanes", vector_lanes), ("vector_registers", vector_registers)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2 (the host's vector width / register count), got {value!r}.")
    lowered = lower_plan(plan, score_mod)
    params, buffers = _tensor_text(lowered)
    functions = []
    for i, (part, predicate) in enumerate(zip(plan.parts, lowered.predicates)):
        q_loops = _cuda_loops(str(plan.heads), part.n_q_tiles, plan.block_q)
        kv_loops = _cuda_loops(str(kv_heads), part.n_kv_tiles, plan.block_kv)
        values = {
            "part": str(i),
            "common_params": COMMON_PARAMS,
            "common_buffers": COMMON_BUFFERS,
            "kv_list": KV_LIST,
            "pair_gradient": PAIR_GRADIENT,
            "tensor_params": params,
            "tensor_buffers": buffers,
            "dtype": DTYPE_NAMES[dtype],
            "heads": str(plan.heads),
            "kv_heads": str(kv_heads),
            "gqa_group": str(plan.heads // kv_heads),
            "n_q": str(plan.canvas.size),
            "n_kv": str(plan.kv_canvas.size),
            "head_dim": str(head_dim),
            "block_q": str(plan.block_q),
            "block_kv": str(plan.block_kv),
            "n_q_tiles": str(part.n_q_tiles),
            "n_kv_tiles": str(part.n_kv_tiles),
            "q_slots": str(part.n_q_tiles * plan.block_q),
            "kv_slots": str(part.n_kv_tiles * plan.block_kv),
            **{f"q_{key}": text for key, text in q_loops.items() if key != "outer"},
            "outer": q_loops["outer"],
            **{f"kv_{key}": text for key, text in kv_loops.items()},
            "allowed": _statements(predicate, "pa", "keep[0]"),
            "score": _optional(lowered.score_mod, "ps", "s", "score"),
            "score_grad": _optional(lowered.score_grad, "pg", "dmod", "T.float32(1)"),
        }
        values.update(_table_text(lowered.table_grads, target, values))
        if target == "llvm":
            blocks = tile_blocks(
                block_q=plan.block_q,
                block_kv=plan.block_kv,
                head_dim=head_dim,
                vector_lanes=vector_lanes,
                vector_registers=vector_registers,
                predicate=predicate,
                score_mod=lowered.score_mod,
                score_grad=lowered.score_grad,
                table_grad=values["table_grad"] or None,
            )
            gates = {
                "gate_params": GATE_PARAMS,
                "gate_buffer": GATE_BUFFER,
                "kv_gate": fill(GATE_WALK, {"n_tiles": str(part.n_q_tiles), "tile": "qt"}),
                "q_gate": fill(GATE_WALK, {"n_tiles": str(part.n_kv_tiles), "tile": "kt"}),
            }
            blocks = {**blocks, **gates}
            kernels = [(TILE_FORWARD, {}), (TILE_DQ, {}), (TILE_DKDV, DKDV_UNITS)]
            kernels += [] if values["table_grad"] else [(TILE_DKDV, FUSED_UNITS)]
            functions += [
                split_vector_loops(fill(kernel, {**values, **blocks, **units}), vector_lanes)
                for kernel, units in kernels
            ]
            continue
        walk_kv, walk_q = _walk("kv", plan.block_kv), _walk("q", plan.block_q)
        functions += [
            fill(FORWARD, {**values, **walk_kv, "pair": FORWARD_PAIR}),
            fill(DQ, {**values, **walk_kv, "pair": DQ_PAIR}),
            fill(DKDV, {**values, **walk_q, "pair": DKDV_PAIR}),
        ]
    header = _header(plan, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, target=target)
    source = header + "\n\n@I.ir_module\nclass Module:\n" + "\n".join(functions)
    return TvmSource(
        source=source,
        target=target,
        head_dim=head_dim,
        kv_heads=kv_heads,
        tensor_names=lowered.tensor_names,
        tensor_dims=lowered.tensor_dims,
        tensor_kinds=tuple(lowered.refs[name].dtype for name in lowered.tensor_names),
        score_mod_text=lowered.score_mod_text,
        static_tensors=lowered.static_tensors,
        table_grads=lowered.table_grads,
    )
