"""Kernel text shared by the forward and backward passes: imports, token lookup, row loads, scores.

``_scores`` is the one place where a raw q.k tile becomes softmax input: scale (and score_mod), log2 units,
and the mask. Every kernel that walks a tile list calls it (the way inductor's templates share
``forward_inner``), with ``IS_FULL_TILE`` as a constexpr so FULL tiles carry no predicate arithmetic.

Placeholders (``string.Template``): ``$tensor_args`` (the runtime tensors the predicate and score_mod
read, each ``T_ptr, T_stride0, ...``, with a leading comma) and ``$score_line`` (how scores are scaled).
"""

PRELUDE = """\
import triton
import triton.language as tl
"""

HELPERS = '''\
# -- shared helpers: token lookup, row loads, scores -------------------------------------------------


@triton.jit
def _tile_tokens(first, n_tokens, TOKENS, SIZE: tl.constexpr, GATHER: tl.constexpr):
    """Original token of each of SIZE positions from ``first`` on, and whether the slot holds one.

    GATHER: read the layout's token table (padding slots hold -1); else position p is token p (< n_tokens).
    """
    pos = first + tl.arange(0, SIZE)
    if GATHER:
        tok = tl.load(TOKENS + pos)
    else:
        tok = tl.where(pos < n_tokens, pos, -1)
    return tok, tok >= 0


@triton.jit
def _list_row(START, INDEX, row, GATE, stride_gb, stride_gh, gate_open_at, b, h, GATED: tl.constexpr):
    """(first entry, end, entry table) of CSR row ``row``: the plan's list or, with GATED, this call's list
    of (b, h) (maskir.runtime.gating.GatedLists): only the entries its data leaves open, packed at the
    row's start in the same order (FULL entries first, never closed)."""
    start = tl.load(START + row)
    if GATED:
        lists = GATE + b.to(tl.int64) * stride_gb + h * stride_gh
        end = start + (tl.load(lists + gate_open_at + row + 1) - tl.load(lists + gate_open_at + row))
        return start, end, lists
    else:
        return start, tl.load(START + row + 1), INDEX


@triton.jit
def _load_rows(base, tok, valid, stride_n):
    """Rows ``tok`` of a [N, HEAD_DIM] matrix as [len(tok), HEAD_DIM_PAD]; padding rows and columns are 0."""
    dim = tl.arange(0, HEAD_DIM_PAD)
    ptrs = base + tok[:, None] * stride_n + dim[None, :]
    if HEAD_DIM == HEAD_DIM_PAD:
        rows = tl.load(ptrs, mask=valid[:, None], other=0.0)
    else:
        rows = tl.load(ptrs, mask=valid[:, None] & (dim[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        rows = rows.to(tl.float32)
    return rows


@triton.jit
def _store_rows(base, tok, valid, stride_n, rows):
    """Write [len(tok), HEAD_DIM_PAD] rows back to rows ``tok`` (padding slots and columns skipped)."""
    dim = tl.arange(0, HEAD_DIM_PAD)
    ptrs = base + tok[:, None] * stride_n + dim[None, :]
    tl.store(ptrs, rows, mask=valid[:, None] & (dim[None, :] < HEAD_DIM))


@triton.jit
def _scores(qk, b, h, q, kv, kv_valid, sm_scale$tensor_args, PART: tl.constexpr,
            IS_FULL_TILE: tl.constexpr, KV_PADDED: tl.constexpr):
    """Softmax input in log2 units, -inf where a pair is not allowed.

    q, kv (original tokens) and kv_valid broadcast against qk in either orientation ([M, N] or [N, M]).
    FULL tiles skip the predicate; padding slots are masked only where there are some (KV_PADDED: the dK/dV
    step passes False, its padding kv rows are never stored).
    """
    $score_line
    if not IS_FULL_TILE:
        allowed = _part_allowed(b, h, q, kv$tensor_args, PART)
        if KV_PADDED:
            allowed = allowed & kv_valid
        s = tl.where(allowed, s, float("-inf"))
    elif KV_PADDED:
        s = tl.where(kv_valid, s, float("-inf"))
    return s
'''

SCORE_PLAIN = "s = qk * (sm_scale * LOG2E)"
SCORE_MODDED = "s = _score_mod(qk * sm_scale, b, h, q, kv$tensor_args) * LOG2E"
