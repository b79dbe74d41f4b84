"""Emit one readable Triton module for a plan: header, constexprs, predicate/score_mod functions, kernels.

Pipeline (top-down): lower each part's pattern to an ``Expr`` (``lower_predicate``) and trace the
score_mod (``trace_score_mod``); render them with ``render_triton_function``; choose a ``KernelConfig``;
fill the kernel templates (``template_common``, ``template_fwd``, ``template_bwd``). The module holds:

- the plan's constants as named constexprs (``BLOCK_M``, ``BLOCK_N``, ``HEAD_DIM``, ...),
- ``_allowed`` (one per part, ``_allowed_<i>`` when the plan has several) and ``_part_allowed``, which picks
  the part's predicate by the ``PART`` constexpr; ``_score_mod`` and ``_score_mod_grad`` when given,
- the kernels ``_fwd``, ``_bwd_preprocess``, ``_bwd_dq``, ``_bwd_dkdv`` and their shared step helpers,
- ``LAUNCH_OPTIONS`` (plain Python: num_warps/num_stages per kernel) for ``launch.TritonAttention``.

Runtime tensors (segment ids, the routing map, tensors captured by a score_mod) reach the kernels as
``T_ptr, T_stride0, ...`` arguments, in the order ``GeneratedSource.tensor_names``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from maskir.codegen.common.expr import Expr, TensorRef, topo
from maskir.codegen.common.lowered import check_kernel_arguments, lower_plan, source_title
from maskir.codegen.common.source_text import comment_lines
from maskir.codegen.common.table_grad import TableGrads
from maskir.codegen.common.template import fill
from maskir.codegen.triton.configs import DTYPE_NAMES, KernelConfig, choose_config
from maskir.codegen.triton.render import render_triton_function
from maskir.codegen.triton.template_bwd import (
    BACKWARD,
    SCORE_GRAD,
    TABLE_ARGS,
    TABLE_GRAD,
    TABLE_HELPERS,
    TABLE_PASS,
    TABLE_PROGRAM,
)
from maskir.codegen.triton.template_common import HELPERS, PRELUDE, SCORE_MODDED, SCORE_PLAIN
from maskir.codegen.triton.template_fwd import FORWARD
from maskir.ir import is_dynamic
from maskir.planner.plan import Plan, TileKind

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
ENTRY_CHUNK, ENTRY_CHUNK_INTERPRETED = 8, 256
"""Table entries per one-hot step of the table-gradient accumulation: few on a GPU (a [rows, chunk, entries]
temporary lives in registers), many in the interpreter (its cost is per operation: a full [N, N] bias at N = 64
and 128 tokens took 13 s and 29 s with 16, 7 s and 3.5 s with 256)."""


@dataclass(frozen=True)
class GeneratedSource:
    """The module text and what a launcher needs to call it.

    ``tensor_names``: runtime tensors the kernels read, in argument order, with ``tensor_dims`` index dims
    each. ``static_tensors``: those captured by the score_mod (name -> tensor), passed on every call.
    ``score_mod_text``: the traced score_mod as text (a cache key field), None without one.
    ``table_grads``: the layout of the table-gradient buffer when the score_mod reads float tensors.
    ``config``: the training kernels' configuration; None for a decode module (``emit_decode``), whose
    launch options are its ``LAUNCH_OPTIONS``.
    """

    source: str
    tensor_names: tuple[str, ...]
    tensor_dims: tuple[int, ...]
    config: KernelConfig | None
    score_mod_text: str | None = None
    static_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    table_grads: TableGrads | None = None


@dataclass(frozen=True)
class RenderedFunctions:
    """Rendered ``@triton.jit`` texts: one predicate per part, and the score_mod with its derivative."""

    allowed: tuple[str, ...]
    score_mod: str | None
    score_mod_grad: str | None
    score_mod_text: str | None
    tensor_names: tuple[str, ...]
    tensor_dims: tuple[int, ...]
    static_tensors: dict[str, torch.Tensor]
    pair_loads: int
    pair_ops: int
    table_functions: str | None = None
    table_grads: TableGrads | None = None


def _check_arguments(plan: Plan, head_dim: int, dtype: torch.dtype, kv_heads: int) -> None:
    check_kernel_arguments(
        "generate_source",
        plan,
        head_dim=head_dim,
        head_dims=(MIN_HEAD_DIM, MAX_HEAD_DIM),
        dtype=dtype,
        dtypes=DTYPE_NAMES,
        kv_heads=kv_heads,
    )
    for name, block in (("block_q", plan.block_q), ("block_kv", plan.block_kv)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"The Triton kernels need power-of-two tiles >= 16, got plan.{name}={block}.")


def _check_config(plan: Plan, config: KernelConfig) -> None:
    for name, chunk, block in (
        ("fwd_chunk_n", config.fwd_chunk_n, plan.block_kv),
        ("dq_chunk_n", config.dq_chunk_n, plan.block_kv),
        ("dkdv_chunk_m", config.dkdv_chunk_m, plan.block_q),
        ("fwd_rows", config.fwd_rows, plan.block_q),
        ("dq_rows", config.dq_rows, plan.block_q),
        ("dkdv_rows", config.dkdv_rows, plan.block_kv),
    ):
        if chunk < 16 or block % chunk:
            raise ValueError(f"config.{name}={chunk} must be >= 16 and divide the plan's tile of {block}.")


def _pointer_args(ref: TensorRef) -> tuple[str, ...]:
    return (f"{ref.name}_ptr", *(f"{ref.name}_stride{d}" for d in range(ref.ndim)))


def _pair_work(expr: Expr) -> tuple[int, int]:
    """(loads, operations) whose inputs read both q and kv: each is a [rows, cols] tensor in the kernel."""
    reads: dict[Expr, frozenset[str]] = {}
    loads = operations = 0
    for node in topo(expr):
        own = frozenset([node.value]) if node.op == "var" else frozenset()
        reads[node] = own.union(*(reads[a] for a in node.args))
        if node.args and {"q", "kv"} <= reads[node]:
            operations += 1
            loads += node.op == "load"
    return loads, operations


def render_functions(plan: Plan, score_mod: Callable | None) -> RenderedFunctions:
    """Lower the plan (``lower_plan``) and render its predicates and score_mod over one argument list.

    Every rendered function takes every runtime tensor (the union over parts and score_mod, by name), so
    the kernels thread one argument list through all of them.
    """
    lowered = lower_plan(plan, score_mod)
    names = lowered.tensor_names
    pointers = tuple(arg for name in names for arg in _pointer_args(lowered.refs[name]))
    predicates = lowered.predicates
    allowed_names = ["_allowed"] if len(predicates) == 1 else [f"_allowed_{i}" for i in range(len(predicates))]
    allowed = tuple(
        render_triton_function(name, expr, ("b", "h", "q", "kv", *pointers))
        for name, expr in zip(allowed_names, predicates)
    )
    score_args = ("score", "b", "h", "q", "kv", *pointers)
    pair_work = [_pair_work(expr) for expr in lowered.expressions()]
    scored = lowered.score_mod is not None
    return RenderedFunctions(
        allowed=allowed,
        score_mod=render_triton_function("_score_mod", lowered.score_mod, score_args) if scored else None,
        score_mod_grad=render_triton_function("_score_mod_grad", lowered.score_grad, score_args) if scored else None,
        score_mod_text=lowered.score_mod_text,
        tensor_names=names,
        tensor_dims=lowered.tensor_dims,
        static_tensors=lowered.static_tensors,
        pair_loads=sum(loads for loads, _ in pair_work),
        pair_ops=max(operations for _, operations in pair_work),
        table_functions=_table_functions(lowered.table_grads, score_args, pointers),
        table_grads=lowered.table_grads,
    )


def _table_functions(tables: TableGrads | None, score_args: tuple[str, ...], pointers: tuple[str, ...]) -> str | None:
    """``_table_weight_<j>`` / ``_table_entry_<j>`` per trainable load and ``_table_grads``, which adds
    dS * weight into each load's entries (``_accumulate``); None when the score_mod reads no float tensor."""
    if tables is None:
        return None
    texts, calls = [TABLE_HELPERS], []
    for j, load in enumerate(tables.loads):
        texts.append(render_triton_function(f"_table_weight_{j}", load.weight, score_args))
        texts.append(render_triton_function(f"_table_entry_{j}", load.entry, score_args))
        args = ", ".join(score_args)
        calls.append(f"    _accumulate(TG, _table_entry_{j}({args}), ds * _table_weight_{j}({args}), valid)")
    header = [
        "@triton.jit",
        f"def _table_grads(TG, ds, valid, {', '.join(score_args)}):",
        f'    """dT[e] += dS * d score_mod / d T[e] for the {len(tables.loads)} load(s) of float tensors '
        'the score_mod reads."""',
    ]
    return "\n\n".join([*(text.rstrip("\n") for text in texts), "\n".join([*header, *calls])]) + "\n"


def generate_source(
    plan: Plan,
    *,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int | None = None,
    score_mod: Callable | None = None,
    interpret: bool = False,
    capability: tuple[int, int] = (9, 0),
    shared_memory_per_block: int | None = None,
    config: KernelConfig | None = None,
) -> GeneratedSource:
    """The Triton module for ``plan`` with q/k/v of ``dtype`` and ``head_dim``, ``kv_heads`` (GQA) kv heads.

    ``interpret``: the source runs under ``TRITON_INTERPRET=1`` (casts 16-bit tiles to fp32 before ``tl.dot``,
    whole-tile steps). ``capability`` and ``shared_memory_per_block`` (bytes; None: the capability's limit in
    ``maskir.sim.target.ARCHES``) pick GPU launch options (ignored when interpreting); ``config``
    overrides ``choose_config``'s choice (its chunks must divide the plan's tiles).
    """
    kv_heads = plan.heads if kv_heads is None else kv_heads
    _check_arguments(plan, head_dim, dtype, kv_heads)
    functions = render_functions(plan, score_mod)
    head_dim_pad = max(MIN_HEAD_DIM, 1 << (head_dim - 1).bit_length())
    config = config or choose_config(
        plan.block_q,
        plan.block_kv,
        head_dim_pad,
        dtype,
        interpret=interpret,
        capability=capability,
        shared_memory_per_block=shared_memory_per_block,
        pair_loads=functions.pair_loads,
        pair_ops=functions.pair_ops,
        table_grads=functions.table_grads is not None,
    )
    _check_config(plan, config)
    source = assemble_source(
        plan, functions, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, interpret=interpret, config=config
    )
    return GeneratedSource(
        source,
        functions.tensor_names,
        functions.tensor_dims,
        config,
        functions.score_mod_text,
        functions.static_tensors,
        functions.table_grads,
    )


# -- assembly --------------------------------------------------------------------------------------


def _tile_counts(plan: Plan, part_index: int) -> tuple[int, int, int]:
    """(full, partial, empty) tile pairs of one part, summed over heads (per head when one table)."""
    part = plan.parts[part_index]
    heads = np.bincount(part.head_table, minlength=len(part.tables)) if len(part.tables) > 1 else [1]
    full = sum(int(count) * table.runs.tiles(TileKind.FULL) for table, count in zip(part.tables, heads))
    partial = sum(int(count) * table.runs.tiles(TileKind.PARTIAL) for table, count in zip(part.tables, heads))
    total = int(sum(heads)) * part.n_q_tiles * part.n_kv_tiles
    return full, partial, total - full - partial


def _header(plan: Plan, *, head_dim: int, dtype: torch.dtype, kv_heads: int, config: KernelConfig, interpret) -> str:
    lines = [source_title(plan, head_dim=head_dim, dtype_name=DTYPE_NAMES[dtype], kv_heads=kv_heads)]
    for i, part in enumerate(plan.parts):
        full, partial, empty = _tile_counts(plan, i)
        per = "per head" if len(part.tables) == 1 else f"over {plan.heads} heads ({len(part.tables)} head groups)"
        name = "plan" if len(plan.parts) == 1 else f"plan part {i} ({part.pattern})"
        lines.append(
            f"# {name}: {plan.block_q}x{plan.block_kv} tiles, {part.layout.name} layout, {part.n_q_tiles} q tiles "
            f"x {part.n_kv_tiles} kv tiles; kv tiles {per}: {full} full, {partial} partial, {empty} empty"
        )
    if not is_dynamic(plan.pattern):
        lines.append(f"# tile efficiency {plan.stats.efficiency:.2f} (allowed pairs / computed pairs).")
    if len(plan.parts) > 1:
        lines.append("# The parts are disjoint; their outputs merge by log-sum-exp (launch.TritonAttention).")
    lines += [
        f"# target: {'Triton interpreter (CPU)' if interpret else 'GPU'}; rows x steps per program: "
        f"fwd {config.fwd_rows} q x {config.fwd_chunk_n} kv, dQ {config.dq_rows} q x {config.dq_chunk_n} kv, "
        f"dK/dV {config.dkdv_rows} kv x {config.dkdv_chunk_m} q{' (swapAB)' if config.dkdv_swap_ab else ''}.",
        "#",
        "# Sub notation for this kernel:",
        "#   Q, K, V: [B, H, N, D] inputs (K, V with N_KV_HEADS heads); O: output; LSE: [B, H, N_q] log-sum-exp",
        "#     (natural log; -inf for a row with no allowed key, whose output row is 0).",
        "#   b, h: batch and head; q, kv: ORIGINAL token indices (row-major over the canvas); a position is a",
        "#     slot in the layout: Q_TOKENS[pos] / KV_TOKENS[pos] is its token, -1 for a padding slot.",
        "#   KV_START/KV_FULL/KV_INDEX: CSR list of kv tiles per q tile (FULL tiles first, then PARTIAL);",
        "#   Q_START/Q_FULL/Q_INDEX: the transposed lists (q tiles per kv tile) for dK/dV. One list per head",
        "#     group, stacked; HEAD_TABLE[h] is the group of head h.",
        "#   s: scores in log2 units, s = q.k * scale * log2(e) (+ score_mod), so exp2 replaces exp.",
    ]
    return comment_lines(lines)


def _table_constexprs(tables: TableGrads | None, interpret: bool) -> list[tuple[str, int, str]]:
    if tables is None:
        return []
    chunk = ENTRY_CHUNK_INTERPRETED if interpret else ENTRY_CHUNK
    return [
        ("TG_ENTRIES", tables.entries, "entries of the float tensors the score_mod reads: " + _table_layout(tables)),
        ("ENTRY_CHUNK", chunk, "table entries per one-hot step of _accumulate"),
    ]


def _table_layout(tables: TableGrads) -> str:
    return ", ".join(f"{name} {list(shape)} at {tables.offsets[name]}" for name, shape in tables.shapes.items())


def _constexprs(plan: Plan, *, head_dim: int, dtype: torch.dtype, kv_heads: int, interpret, config, tables=None) -> str:
    head_dim_pad = max(MIN_HEAD_DIM, 1 << (head_dim - 1).bit_length())
    values = [
        ("BLOCK_M", plan.block_q, "q positions per tile"),
        ("BLOCK_N", plan.block_kv, "kv positions per tile"),
        ("HEAD_DIM", head_dim, ""),
        ("HEAD_DIM_PAD", head_dim_pad, "power of two >= HEAD_DIM; loads mask the rest"),
        ("N_HEADS", plan.heads, ""),
        ("N_KV_HEADS", kv_heads, ""),
        ("GQA_GROUP", plan.heads // kv_heads, "query heads per kv head: head h reads kv head h // GQA_GROUP"),
        ("FWD_CHUNK_N", config.fwd_chunk_n, "kv positions per forward step (divides BLOCK_N)"),
        ("FWD_CHUNKS", plan.block_kv // config.fwd_chunk_n, "forward steps per kv tile"),
        ("DQ_CHUNK_N", config.dq_chunk_n, "kv positions per dQ step"),
        ("DQ_CHUNKS", plan.block_kv // config.dq_chunk_n, "dQ steps per kv tile"),
        ("DKDV_CHUNK_M", config.dkdv_chunk_m, "q positions per dK/dV step (divides BLOCK_M)"),
        ("DKDV_CHUNKS", plan.block_q // config.dkdv_chunk_m, "dK/dV steps per q tile"),
        ("FWD_ROWS", config.fwd_rows, "q rows per forward program"),
        ("FWD_SPLIT", plan.block_q // config.fwd_rows, "forward programs per q tile"),
        ("DQ_ROWS", config.dq_rows, "q rows per dQ program"),
        ("DQ_SPLIT", plan.block_q // config.dq_rows, "dQ programs per q tile"),
        ("DKDV_ROWS", config.dkdv_rows, "kv rows per dK/dV program"),
        ("DKDV_SPLIT", plan.block_kv // config.dkdv_rows, "dK/dV programs per kv tile"),
        ("DKDV_SWAP_AB", config.dkdv_swap_ab, "dK/dV on [q, kv] tiles, accumulating dK^T, dV^T (M >= 64)"),
        ("PREPROCESS_ROWS", config.preprocess_rows, "rows per program of _bwd_preprocess"),
        ("UPCAST", interpret and dtype != torch.float32, "cast tiles to fp32 before tl.dot (interpreter only)"),
        (
            "DOT_PRECISION",
            "tf32x3" if dtype == torch.float32 else "tf32",
            "fp32 inputs: 3xTF32, about fp32 accuracy on tensor cores; 16-bit inputs ignore it",
        ),
        ("LOG2E", math.log2(math.e), ""),
        ("LN2", math.log(2.0), ""),
        *_table_constexprs(tables, interpret),
    ]
    lines = [f"{name} = tl.constexpr({value!r})" + (f"  # {note}" if note else "") for name, value, note in values]
    return "\n".join(lines) + "\n"


def _launch_options(config: KernelConfig) -> str:
    """``LAUNCH_OPTIONS``: plain Python, read by ``launch.TritonAttention`` (not by the kernels)."""
    rows = [f"    {name!r}: {options!r}," for name, options in config.launch_options().items()]
    return "LAUNCH_OPTIONS = {  # num_warps / num_stages per kernel\n" + "\n".join(rows) + "\n}\n"


def _dispatch(n_parts: int, tensor_args: str) -> str:
    """``_part_allowed``: the predicate of part PART (a constexpr, so only one branch is compiled)."""
    lines = [
        "@triton.jit",
        f"def _part_allowed(b, h, q, kv{tensor_args}, PART: tl.constexpr):",
        '    """The allowed(b, h, q, kv) predicate of plan part PART."""',
    ]
    if n_parts == 1:
        lines.append(f"    return _allowed(b, h, q, kv{tensor_args})")
    else:
        for i in range(n_parts - 1):
            lines.append(f"    {'if' if i == 0 else 'elif'} PART == {i}:")
            lines.append(f"        return _allowed_{i}(b, h, q, kv{tensor_args})")
        lines.append("    else:")
        lines.append(f"        return _allowed_{n_parts - 1}(b, h, q, kv{tensor_args})")
    return "\n".join(lines) + "\n"


def _tensor_args(names: tuple[str, ...], dims: tuple[int, ...]) -> str:
    """``, T_ptr, T_stride0, ...`` for every runtime tensor (the argument list the templates thread through)."""
    return "".join(f", {name}_ptr" + "".join(f", {name}_stride{i}" for i in range(d)) for name, d in zip(names, dims))


def assemble_source(
    plan: Plan,
    functions: RenderedFunctions,
    *,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int,
    interpret: bool,
    config: KernelConfig,
) -> str:
    """The module text from rendered functions and the kernel templates."""
    tensor_args = _tensor_args(functions.tensor_names, functions.tensor_dims)
    tables = functions.table_functions is not None
    values = {
        "tensor_args": tensor_args,
        "score_line": SCORE_MODDED if functions.score_mod else SCORE_PLAIN,
        "score_grad": SCORE_GRAD if functions.score_mod else "",
        "table_args": TABLE_ARGS if tables else "",
        "table_pass": TABLE_PASS if tables else "",
        "table_program": TABLE_PROGRAM if tables else "",
        "table_grad": TABLE_GRAD if tables else "",
    }
    section = "# -- {} " + "-" * 80
    blocks = [
        _header(plan, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, config=config, interpret=interpret),
        PRELUDE,
        _constexprs(
            plan,
            head_dim=head_dim,
            dtype=dtype,
            kv_heads=kv_heads,
            interpret=interpret,
            config=config,
            tables=functions.table_grads,
        ),
        _launch_options(config),
        section.format("predicate (lowered from the pattern) and score_mod")[:104] + "\n",
        *functions.allowed,
        _dispatch(len(functions.allowed), tensor_args),
        *([functions.score_mod, functions.score_mod_grad] if functions.score_mod else []),
        *([functions.table_functions] if tables else []),
        fill(HELPERS, values),
        fill(FORWARD, values),
        fill(BACKWARD, values),
    ]
    return "\n\n".join(block.rstrip("\n") for block in blocks) + "\n"
