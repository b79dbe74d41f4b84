"""Emit the Triton decode module for a decode plan (``maskir.planner.decode``): header, constexprs, the
pattern's predicate and score_mod (rendered as for the training kernels, ``emit.render_functions``), the
shared helpers (``_scores``) and the decode kernel (``template_decode``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from maskir.codegen.common.lowered import source_title
from maskir.codegen.common.template import fill
from maskir.codegen.triton.configs import DTYPE_NAMES, SHARED_MEMORY_BYTES, LaunchOptions
from maskir.codegen.triton.emit import (
    MIN_HEAD_DIM,
    GeneratedSource,
    _check_arguments,
    _dispatch,
    _tensor_args,
    render_functions,
)
from maskir.codegen.triton.template_common import HELPERS, PRELUDE, SCORE_MODDED, SCORE_PLAIN
from maskir.codegen.triton.template_decode import DECODE, MERGE
from maskir.planner.decode import DECODE_BLOCK_KV, DECODE_BLOCK_Q, decode_rows, head_pack
from maskir.planner.plan import Plan

DECODE_CHUNK_N = 64
"""kv positions per decode step on a GPU (a 64 x D tile of K and of V); the interpreter takes whole tiles."""
MERGE_ROWS = 16
"""Rows of [B * H * N_Q] per program of the merge kernel."""


MAX_DECODE_STAGES = 3
"""Deepest K/V pipeline of the decode kernel (sm_90 with the suite's head dim 128 bf16: 3 stages fit)."""


def decode_launch_options(
    head_dim_pad: int,
    dtype: torch.dtype,
    interpret: bool,
    *,
    chunk: int = DECODE_CHUNK_N,
    rows: int = 16,
    capability: tuple[int, int] = (9, 0),
    shared_memory_per_block: int | None = None,
) -> LaunchOptions:
    """Warps and stages of the decode kernel: 4 warps stream K/V tiles; fp32 or head dim 256 take 8.

    Stages are priced from the target's shared memory: each stage buffers a ``chunk`` x ``head_dim_pad``
    tile of K and of V, beside the program's ``rows`` x ``head_dim_pad`` queries, so the deepest pipeline
    with ``stages * 2 * chunk * D * bytes + rows * D * bytes <= shared_memory_per_block`` is taken (at most
    ``MAX_DECODE_STAGES``; 1, no pipelining, when two do not fit). Head dim 128 bf16: 3 stages need
    102,400 B, over sm_86/sm_89's 101,376 B, so those take 2. ``shared_memory_per_block`` None: the
    capability's limit (``ARCHES``).
    """
    if interpret:
        return LaunchOptions(num_warps=4, num_stages=1)
    if shared_memory_per_block is None:
        if tuple(capability) not in SHARED_MEMORY_BYTES:
            raise ValueError(
                f"No shared memory limit known for capability={capability}: pass shared_memory_per_block "
                f"(known capabilities: {', '.join(map(str, SHARED_MEMORY_BYTES))})."
            )
        shared_memory_per_block = SHARED_MEMORY_BYTES[tuple(capability)]
    element = 4 if dtype == torch.float32 else 2
    heavy = head_dim_pad * element >= 512
    stage_bytes, query_bytes = 2 * chunk * head_dim_pad * element, rows * head_dim_pad * element
    fitting = (shared_memory_per_block - query_bytes) // stage_bytes
    return LaunchOptions(num_warps=8 if heavy else 4, num_stages=int(max(1, min(MAX_DECODE_STAGES, fitting))))


def generate_decode_source(
    plan: Plan,
    *,
    n_q: int,
    head_dim: int,
    dtype: torch.dtype,
    kv_heads: int,
    score_mod: Callable | None = None,
    interpret: bool = False,
    capability: tuple[int, int] = (9, 0),
    shared_memory_per_block: int | None = None,
) -> GeneratedSource:
    """The decode module for ``plan`` (a ``decode_plan``), ``n_q`` queries per head, q/k/v of ``dtype``.

    ``capability`` and ``shared_memory_per_block`` (a ``KernelSpec``'s) price the launch options
    (``decode_launch_options``); ignored when ``interpret``."""
    if (plan.block_q, plan.block_kv, len(plan.parts)) != (DECODE_BLOCK_Q, DECODE_BLOCK_KV, 1):
        raise ValueError(
            f"generate_decode_source needs a decode plan (maskir.planner.decode.decode_plan: one part, "
            f"{DECODE_BLOCK_Q}x{DECODE_BLOCK_KV} tiles), got {len(plan.parts)} parts of {plan.block_q}x{plan.block_kv}."
        )
    _check_arguments(plan, head_dim, dtype, kv_heads)
    functions = render_functions(plan, score_mod)
    head_dim_pad = max(MIN_HEAD_DIM, 1 << (head_dim - 1).bit_length())
    pack = head_pack(plan, kv_heads)
    rows, row_blocks = decode_rows(n_q, pack)
    chunk = plan.block_kv if interpret else min(DECODE_CHUNK_N, plan.block_kv)
    options = decode_launch_options(
        head_dim_pad,
        dtype,
        interpret,
        chunk=chunk,
        rows=rows,
        capability=capability,
        shared_memory_per_block=shared_memory_per_block,
    )
    values = [
        ("BLOCK_M", plan.block_q, "q positions per tile of the decode plan"),
        ("BLOCK_N", plan.block_kv, "kv positions per tile"),
        ("HEAD_DIM", head_dim, ""),
        ("HEAD_DIM_PAD", head_dim_pad, "power of two >= HEAD_DIM; loads mask the rest"),
        ("N_HEADS", plan.heads, ""),
        ("N_KV_HEADS", kv_heads, ""),
        ("GQA_GROUP", plan.heads // kv_heads, "query heads per kv head: head h reads kv head h // GQA_GROUP"),
        ("PACK", pack, "query heads per program (their kv head's K/V read once)"),
        ("HEAD_PACKS", plan.heads // pack, ""),
        ("N_Q", n_q, "queries per head"),
        ("DECODE_ROWS", rows, "packed rows per program: row r = query r // PACK of head h0 + r % PACK"),
        ("ROW_BLOCKS", row_blocks, "programs over the packed rows of one head pack"),
        ("DECODE_CHUNK_N", chunk, "kv positions per step (divides BLOCK_N)"),
        ("DECODE_CHUNKS", plan.block_kv // chunk, "steps per kv tile"),
        ("MERGE_ROWS", MERGE_ROWS, "rows per program of _merge"),
        ("UPCAST", interpret and dtype != torch.float32, "cast tiles to fp32 before tl.dot (interpreter only)"),
        ("DOT_PRECISION", "tf32x3" if dtype == torch.float32 else "tf32", "fp32 inputs: 3xTF32"),
        ("LOG2E", math.log2(math.e), ""),
        ("LN2", math.log(2.0), ""),
    ]
    constexprs = "\n".join(
        f"{name} = tl.constexpr({value!r})" + (f"  # {note}" if note else "") for name, value, note in values
    )
    header = "\n".join(
        [
            source_title(plan, head_dim=head_dim, dtype_name=DTYPE_NAMES[dtype], kv_heads=kv_heads),
            f"# decode plan: the pattern on the square canvas of {plan.canvas.size} absolute positions, "
            f"{plan.block_q}x{plan.block_kv} identity tiles;",
            "# a call walks the rows of the q tiles its queries fall in (maskir.planner.decode.decode_lists).",
            f"# target: {'Triton interpreter (CPU)' if interpret else 'GPU'}; {rows} packed rows x {chunk} kv per step.",
            "#",
            "# Sub notation for this kernel:",
            "#   Q: [B, H, N_Q, D]; K, V: a cache (contiguous [B, Hkv, S, D] or a paged pool [pages, PAGE_SIZE, Hkv, D]",
            "#     read through BLOCK_TABLE [B, max_pages]); O_PART, LSE_PART: one partial per (split, slot).",
            "#   b, h: batch and head; q, kv: ABSOLUTE positions (q = Q_OFFSETS[b] + i; kv < KV_LENS[b]).",
            "#   LIST_START/LIST_FULL/LIST_INDEX: this call's CSR lists of kv tiles (FULL first, then PARTIAL).",
            "#   s: scores in log2 units, s = q.k * scale * log2(e) (+ score_mod), so exp2 replaces exp.",
        ]
    )
    tensor_args = _tensor_args(functions.tensor_names, functions.tensor_dims)
    fills = {"tensor_args": tensor_args, "score_line": SCORE_MODDED if functions.score_mod else SCORE_PLAIN}
    launch = (
        f"LAUNCH_OPTIONS = {{'_decode': {{'num_warps': {options.num_warps}, 'num_stages': {options.num_stages}}}, "
        "'_merge': {'num_warps': 4, 'num_stages': 1}}"
    )
    blocks = [
        header,
        PRELUDE,
        constexprs,
        launch,
        *functions.allowed,
        _dispatch(len(functions.allowed), tensor_args),
        *([functions.score_mod] if functions.score_mod else []),
        fill(HELPERS, fills),
        fill(DECODE, fills),
        MERGE,
    ]
    source = "\n\n".join(block.rstrip("\n") for block in blocks) + "\n"
    return GeneratedSource(
        source,
        functions.tensor_names,
        functions.tensor_dims,
        None,
        functions.score_mod_text,
        functions.static_tensors,
    )
