"""Tile-level TensorIR kernels for CPUs (``llvm``): forward, dQ and dK/dV of one plan part.

One unit of parallel work is a (batch, head, q tile) of the forward and dQ, or a (batch, kv head, kv tile)
of dK/dV: ``WORK[w]`` names it (-1: none), in the order the launcher balances by the plan's tile lists
(:func:`maskir.codegen.tvm.balance.work_order`). A unit gathers its rows once into fp32 tiles (``QS``
[block_q, D], the transposed ``KT`` [D, block_kv], ...) and walks its CSR tile list. Per tile pair:

- scores ``S = QS @ KT * scale``: a blocked product whose inner loop over kv (or q) positions is
  ``T.vectorized``, so LLVM splits it into the target's vector registers (AVX-512, AVX2, NEON);
- padding slots (token -1) score -inf; a PARTIAL pair evaluates the lowered predicate per element, once
  per tile pair (FULL pairs never do); a score_mod rewrites each allowed score;
- forward: online softmax per row: m' = max(m, max_j S), P = exp(S - m'), l' = l exp(m - m') + sum_j P,
  acc' = acc exp(m - m') + P @ V; the row max and sum reduce over ``$lanes`` vector lanes;
- dQ: P = exp(s - lse), dP = dO @ V^T, dS = P (dP - delta) (times d score_mod / d score), dQ += dS @ K;
- dK/dV (rows are keys): P^T, dV += P^T @ dO, dS^T, dK += dS^T @ Q, over the GQA group's query heads.
  Rows with no allowed key (lse -inf) and padding rows read lse as +inf, so their P is exactly 0.

``exp`` of a tile row is :func:`exp_row`, a polynomial that vectorises (LLVM's ``expf`` is a scalar call).
Values are bound with ``let`` only outside ``T.vectorized`` loops: TVM 0.27 vectorises a ``let`` inside
one with the wrong lanes.

Placeholders (``string.Template``, blocks keep their indentation): the row kernels' ``$common_params``,
``$common_buffers``, ``$kv_list``, tensor parameters and plan numbers, and the blocks built here by
:func:`tile_blocks`.
"""

from __future__ import annotations

_EXP_POLY = (1.0, 1.0, 0.5, 1 / 6, 1 / 24, 1 / 120, 1 / 720)
"""Taylor coefficients of e^r on |r| <= ln(2)/2: relative error < 3e-7 (fp32 rounding dominates)."""

NEG_INF = 'T.float32("-inf")'


def exp_row(row: str, cols: int) -> str:
    """``S[row, :] = exp(S[row, :])`` for fp32 arguments <= 0 (softmax), in three vectorised passes
    (``EXPN``, ``EXPR`` scratch rows): x = n ln2 + r with n = round(x / ln2) (ln2 in two parts,
    Cody-Waite), e^x = 2^n p(r), 2^n built from exponent bits. x < -87 (and -inf) gives exactly 0, so
    masked scores contribute nothing. (One nested expression would take TVMScript's parser seconds.)"""
    x = f"S[{row}, c]"
    poly = f"T.float32({_EXP_POLY[-1]!r})"
    for coefficient in reversed(_EXP_POLY[:-1]):
        poly = f"(T.float32({coefficient!r}) + EXPR[c] * {poly})"
    scale = 'T.reinterpret("float32", T.shift_left(T.Cast("int32", EXPN[c]) + 127, 23))'
    return (
        f"for c in T.vectorized({cols}):\n"
        f"    EXPN[c] = T.floor(T.max({x}, T.float32(-88.0)) * T.float32(1.4426950408889634) + T.float32(0.5))\n"
        f"for c in T.vectorized({cols}):\n"
        f"    EXPR[c] = {x} - EXPN[c] * T.float32(0.693145751953125) - EXPN[c] * T.float32(1.428606765330187e-06)\n"
        f"for c in T.vectorized({cols}):\n"
        f"    {x} = T.if_then_else({x} < T.float32(-87.0), T.float32(0), {poly} * {scale})"
    )


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


def load_rows(tokens: str, tile: str, block: int, token_buffer: str, loads: list[tuple[str, str, str]], dim: int):
    """Gather one tile's rows: ``token_buffer[r]`` = the token in slot r of ``tile``, and for each
    (source, head, tile buffer) of ``loads`` ``buffer[r, :] = source[b, head, token, :]`` in fp32 (0 for
    padding slots)."""
    present = "\n".join(
        f'for d in T.vectorized({dim}):\n    {buffer}[r, d] = T.Cast("float32", {source}[b, {head}, tok, d])'
        for source, head, buffer in loads
    )
    absent = "\n".join(f"for d in T.vectorized({dim}):\n    {buffer}[r, d] = T.float32(0)" for *_, buffer in loads)
    head = f"for r in T.serial({block}):\n    tok = {tokens}[{tile} * {block} + r]\n    {token_buffer}[r] = tok\n"
    return head + f"    if tok >= 0:\n{_indent(present, 8)}\n    else:\n{_indent(absent, 8)}"


def transpose(source: str, target: str, rows: int, dim: int) -> str:
    """``target[d, r] = source[r, d]``: a [rows, D] tile in the [D, rows] layout a product over rows reads."""
    return f"for d in T.serial({dim}):\n    for r in T.vectorized({rows}):\n        {target}[d, r] = {source}[r, d]"


def product(out: str, left: str, right_t: str, rows: int, cols: int, inner: int, *, accumulate: bool = False) -> str:
    """``out[r, c] (+)= sum_k left[r, k] * right_t[k, c]``: r outer, k middle, c vectorised."""
    zero = "" if accumulate else f"    for c in T.vectorized({cols}):\n        {out}[r, c] = T.float32(0)\n"
    return (
        f"for r in T.serial({rows}):\n{zero}"
        f"    for k in T.serial({inner}):\n        for c in T.vectorized({cols}):\n"
        f"            {out}[r, c] = {out}[r, c] + {left}[r, k] * {right_t}[k, c]"
    )


def scores(rows: int, cols: int, dim: int, row_tile: str, col_tile: str, col_tokens: str) -> str:
    """``S = row_tile @ col_tile * sm_scale``, -inf where the column's token is padding (-1)."""
    return (
        product("S", row_tile, col_tile, rows, cols, dim)
        + f"\nfor r in T.serial({rows}):\n    for c in T.vectorized({cols}):\n"
        f"        S[r, c] = T.if_then_else({col_tokens}[c] >= 0, S[r, c] * sm_scale, {NEG_INF})"
    )


def _pairs(rows: int, cols: int, row: tuple[str, str], col: tuple[str, str], body: str) -> str:
    """Loop over the (r, c) elements of a tile pair with the row's and column's tokens bound (``row`` and
    ``col``: (variable, token buffer)), running ``body`` where both are tokens (not padding)."""
    (row_var, row_tokens), (col_var, col_tokens) = row, col
    return (
        f"for r in T.serial({rows}):\n    {row_var} = {row_tokens}[r]\n    for c in T.serial({cols}):\n"
        f"        {col_var} = {col_tokens}[c]\n        if {row_var} >= 0 and {col_var} >= 0:\n{_indent(body, 12)}"
    )


def _lane_reduce(rows_var: str, cols: int, lanes: int, stat: str, start: str, init: str, combine: str) -> str:
    """``STAT[stat] = combine(start, S[row, :])`` through ``lanes`` vector lanes (``combine(a, b)`` text)."""
    fold = combine.format(a="LANE[l]", b=f"S[{rows_var}, c0 * {lanes} + l]")
    return (
        f"for l in T.vectorized({lanes}):\n    LANE[l] = {init}\n"
        f"for c0 in T.serial({cols // lanes}):\n    for l in T.vectorized({lanes}):\n        LANE[l] = {fold}\n"
        f"STAT[{stat}] = {start}\nfor l in T.serial({lanes}):\n"
        f"    STAT[{stat}] = {combine.format(a=f'STAT[{stat}]', b='LANE[l]')}"
    )


def _softmax_inputs(rows: int, cols: int, bias: str) -> str:
    """``S = exp(S - bias)`` per element (``bias`` text in r: the row max, or lse per row/column)."""
    return (
        f"for r in T.serial({rows}):\n    for c in T.vectorized({cols}):\n        S[r, c] = S[r, c] - {bias}\n"
        + _indent(exp_row("r", cols), 4)
    )


def _gradient_scores(rows: int, cols: int, delta: str, dmod: bool) -> str:
    """``DP = S * (DP - delta) (* DMOD)``: dS from P (in S) and dP."""
    factor = " * DMOD[r, c]" if dmod else ""
    return (
        f"for r in T.serial({rows}):\n    for c in T.vectorized({cols}):\n"
        f"        DP[r, c] = S[r, c] * (DP[r, c] - {delta}){factor}"
    )


def _statistics(block_q: int, lse: str, delta: str) -> str:
    """Per q row of a backward tile: lse (+inf for padding and rows with no allowed key, so P = 0) and delta."""
    return (
        f"for i in T.serial({block_q}):\n    q = QTOK[i]\n    {lse} = T.float32(\"inf\")\n    {delta} = T.float32(0)\n"
        f"    if q >= 0:\n        {delta} = DELTA[b, h, q]\n        if LSE[b, h, q] > {NEG_INF}:\n"
        f"            {lse} = LSE[b, h, q]"
    )


def tile_blocks(
    *,
    block_q: int,
    block_kv: int,
    head_dim: int,
    lanes: int,
    allowed: str,
    score: str | None,
    score_grad: str | None,
) -> dict[str, str]:
    """The blocks of the three tile kernels for one part: loads, products, masks, softmax steps.

    ``allowed`` sets ``keep[0]`` from ``b, h, q, kv``; ``score`` sets ``s`` from ``score`` and
    ``score_grad`` sets ``dmod`` (None without a score_mod). ``lanes`` divides ``block_kv`` and ``block_q``."""
    bq, bkv, dim = block_q, block_kv, head_dim
    q_side, kv_side = ("q", "QTOK"), ("kv", "KVTOK")
    mask = f"{allowed}\nif keep[0] == 0:\n    S[r, c] = {NEG_INF}"

    def score_mod(rows: int, cols: int, row, col, gradient: bool) -> str:
        if score is None:
            return ""
        body = f"score = S[r, c]\nif score > {NEG_INF}:\n{_indent(score, 4)}\n    S[r, c] = s"
        if gradient:
            body += f"\n{_indent(score_grad, 4)}\n    DMOD[r, c] = dmod"
        return _pairs(rows, cols, row, col, body)

    def tile_buffers(shapes: dict[str, tuple]) -> str:
        return "\n".join(
            f'{name} = T.decl_buffer({shape}, "{dtype}", scope="local")' for name, (shape, dtype) in shapes.items()
        )

    f32, i32 = "float32", "int32"
    q_rows = {"QS": ((bq, dim), f32), "QTOK": ((bq,), i32)}
    kv_rows = {"KS": ((bkv, dim), f32), "VS": ((bkv, dim), f32), "KVTOK": ((bkv,), i32)}
    scratch = ((max(bq, bkv),), f32)
    common = {"LANE": ((lanes,), f32), "STAT": ((2,), f32), "EXPN": scratch, "EXPR": scratch, "keep": ((1,), i32)}
    dmod = {"DMOD": ((bq, bkv), f32)} if score is not None else {}
    dmod_t = {"DMOD": ((bkv, bq), f32)} if score is not None else {}
    return {
        "lanes": str(lanes),
        "fwd_buffers": tile_buffers(
            {**q_rows, **kv_rows, "KT": ((dim, bkv), f32), "S": ((bq, bkv), f32), "ACC": ((bq, dim), f32),
             "ROW": ((bq, 2), f32), **common}  # fmt: skip
        ),
        "dq_buffers": tile_buffers(
            {**q_rows, "DOS": ((bq, dim), f32), **kv_rows, "KT": ((dim, bkv), f32), "VT": ((dim, bkv), f32),
             "S": ((bq, bkv), f32), "DP": ((bq, bkv), f32), **dmod, "GRAD": ((bq, dim), f32), "ROW": ((bq, 2), f32),
             **common}  # fmt: skip
        ),
        "dkdv_buffers": tile_buffers(
            {**kv_rows, **q_rows, "DOS": ((bq, dim), f32), "QT": ((dim, bq), f32), "DOT": ((dim, bq), f32),
             "S": ((bkv, bq), f32), "DP": ((bkv, bq), f32), **dmod_t, "GK": ((bkv, dim), f32),
             "GV": ((bkv, dim), f32), "COL": ((2, bq), f32), **common}  # fmt: skip
        ),
        "load_q": load_rows("Q_TOKENS", "qt", bq, "QTOK", [("Q", "h", "QS")], dim),
        "load_q_do": load_rows("Q_TOKENS", "qt", bq, "QTOK", [("Q", "h", "QS"), ("DO", "h", "DOS")], dim),
        "load_kv": load_rows("KV_TOKENS", "kt", bkv, "KVTOK", [("K", "kvh", "KS"), ("V", "kvh", "VS")], dim),
        "row_statistics": _statistics(bq, "ROW[i, 0]", "ROW[i, 1]"),
        "column_statistics": _statistics(bq, "COL[0, i]", "COL[1, i]"),
        "transpose_k": transpose("KS", "KT", bkv, dim),
        "transpose_kv": transpose("KS", "KT", bkv, dim) + "\n" + transpose("VS", "VT", bkv, dim),
        "transpose_q_do": transpose("QS", "QT", bq, dim) + "\n" + transpose("DOS", "DOT", bq, dim),
        "q_scores": scores(bq, bkv, dim, "QS", "KT", "KVTOK"),
        "kv_scores": scores(bkv, bq, dim, "KS", "QT", "QTOK"),
        "q_mask": "if e >= full_end:\n" + _indent(_pairs(bq, bkv, q_side, kv_side, mask), 4),
        "kv_mask": "if e >= full_end:\n" + _indent(_pairs(bkv, bq, kv_side, q_side, mask), 4),
        "fwd_score_mod": score_mod(bq, bkv, q_side, kv_side, False),
        "dq_score_mod": score_mod(bq, bkv, q_side, kv_side, True),
        "dkdv_score_mod": score_mod(bkv, bq, kv_side, q_side, True),
        "row_max": _lane_reduce("i", bkv, lanes, "0", "ROW[i, 0]", NEG_INF, "T.max({a}, {b})"),
        "row_sum": _lane_reduce("i", bkv, lanes, "1", "T.float32(0)", "T.float32(0)", "{a} + {b}"),
        "exp_row": exp_row("i", bkv),
        "dq_p": _softmax_inputs(bq, bkv, "ROW[r, 0]"),
        "dkdv_p": _softmax_inputs(bkv, bq, "COL[0, c]"),
        "dq_dp": product("DP", "DOS", "VT", bq, bkv, dim),
        "dkdv_dp": product("DP", "VS", "DOT", bkv, bq, dim),
        "dq_ds": _gradient_scores(bq, bkv, "ROW[r, 1]", score is not None),
        "dkdv_ds": _gradient_scores(bkv, bq, "COL[1, c]", score is not None),
        "dq_grad": product("GRAD", "DP", "KS", bq, dim, bkv, accumulate=True),
        "dv_grad": product("GV", "S", "DOS", bkv, dim, bq, accumulate=True),
        "dk_grad": product("GK", "DP", "QS", bkv, dim, bq, accumulate=True),
    }


TILE_FORWARD = """\
    @T.prim_func
    def fwd_$part($common_params, o_: T.handle, kv_start_: T.handle, kv_full_: T.handle,
            kv_index_: T.handle, work_: T.handle$tensor_params, sm_scale: T.float32):
$common_buffers
        O = T.match_buffer(o_, (batch, $heads, $n_q, $head_dim), "float32")
        KV_START = T.match_buffer(kv_start_, (n_start,), "int32")
        KV_FULL = T.match_buffer(kv_full_, (n_full,), "int32")
        KV_INDEX = T.match_buffer(kv_index_, (n_index,), "int32")
        n_work = T.int32()
        WORK = T.match_buffer(work_, (n_work,), "int32")
        for w in T.parallel(n_work):
            item = WORK[w]
            if item >= 0:
                $fwd_buffers
                bh = item // $n_q_tiles
                qt = item % $n_q_tiles
                b = bh // $heads
                h = bh % $heads
                $kv_list
                $load_q
                for i in T.serial($block_q):
                    ROW[i, 0] = T.float32("-inf")
                    ROW[i, 1] = T.float32(0)
                    for d in T.vectorized($head_dim):
                        ACC[i, d] = T.float32(0)
                for e in T.serial(start, end):
                    kt = KV_INDEX[e]
                    $load_kv
                    $transpose_k
                    $q_scores
                    $q_mask
                    $fwd_score_mod
                    for i in T.serial($block_q):
                        $row_max
                        if STAT[0] > T.float32("-inf"):
                            alpha = T.exp(ROW[i, 0] - STAT[0])
                            for j in T.vectorized($block_kv):
                                S[i, j] = S[i, j] - STAT[0]
                            $exp_row
                            $row_sum
                            ROW[i, 1] = ROW[i, 1] * alpha + STAT[1]
                            ROW[i, 0] = STAT[0]
                            for d in T.vectorized($head_dim):
                                ACC[i, d] = ACC[i, d] * alpha
                            for j in T.serial($block_kv):
                                for d in T.vectorized($head_dim):
                                    ACC[i, d] = ACC[i, d] + S[i, j] * VS[j, d]
                for i in T.serial($block_q):
                    q = QTOK[i]
                    if q >= 0:
                        inv = T.if_then_else(ROW[i, 1] > T.float32(0), T.float32(1) / ROW[i, 1], T.float32(0))
                        for d in T.vectorized($head_dim):
                            O[b, h, q, d] = ACC[i, d] * inv
                        LSE[b, h, q] = T.if_then_else(
                            ROW[i, 1] > T.float32(0), ROW[i, 0] + T.log(ROW[i, 1]), T.float32("-inf"))
"""

TILE_DQ = """\
    @T.prim_func
    def dq_$part($common_params, do_: T.handle, delta_: T.handle, dq_: T.handle, kv_start_: T.handle,
            kv_full_: T.handle, kv_index_: T.handle, work_: T.handle$tensor_params, sm_scale: T.float32):
$common_buffers
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        DQ = T.match_buffer(dq_, (batch, $heads, $n_q, $head_dim), "float32")
        KV_START = T.match_buffer(kv_start_, (n_start,), "int32")
        KV_FULL = T.match_buffer(kv_full_, (n_full,), "int32")
        KV_INDEX = T.match_buffer(kv_index_, (n_index,), "int32")
        n_work = T.int32()
        WORK = T.match_buffer(work_, (n_work,), "int32")
        for w in T.parallel(n_work):
            item = WORK[w]
            if item >= 0:
                $dq_buffers
                bh = item // $n_q_tiles
                qt = item % $n_q_tiles
                b = bh // $heads
                h = bh % $heads
                $kv_list
                $load_q_do
                $row_statistics
                for i in T.serial($block_q):
                    for d in T.vectorized($head_dim):
                        GRAD[i, d] = T.float32(0)
                for e in T.serial(start, end):
                    kt = KV_INDEX[e]
                    $load_kv
                    $transpose_kv
                    $q_scores
                    $q_mask
                    $dq_score_mod
                    $dq_p
                    $dq_dp
                    $dq_ds
                    $dq_grad
                for i in T.serial($block_q):
                    q = QTOK[i]
                    if q >= 0:
                        for d in T.vectorized($head_dim):
                            DQ[b, h, q, d] = GRAD[i, d] * sm_scale
"""

TILE_DKDV = """\
    @T.prim_func
    def dkdv_$part($common_params, do_: T.handle, delta_: T.handle, dk_: T.handle, dv_: T.handle,
            q_start_: T.handle, q_full_: T.handle, q_index_: T.handle, work_: T.handle$tensor_params,
            sm_scale: T.float32):
$common_buffers
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        DK = T.match_buffer(dk_, (batch, $kv_heads, $n_kv, $head_dim), "float32")
        DV = T.match_buffer(dv_, (batch, $kv_heads, $n_kv, $head_dim), "float32")
        Q_START = T.match_buffer(q_start_, (n_start,), "int32")
        Q_FULL = T.match_buffer(q_full_, (n_full,), "int32")
        Q_INDEX = T.match_buffer(q_index_, (n_index,), "int32")
        n_work = T.int32()
        WORK = T.match_buffer(work_, (n_work,), "int32")
        for w in T.parallel(n_work):
            item = WORK[w]
            if item >= 0:
                $dkdv_buffers
                bkh = item // $n_kv_tiles
                kt = item % $n_kv_tiles
                b = bkh // $kv_heads
                kvh = bkh % $kv_heads
                $load_kv
                for j in T.serial($block_kv):
                    for d in T.vectorized($head_dim):
                        GK[j, d] = T.float32(0)
                        GV[j, d] = T.float32(0)
                for g in T.serial($gqa_group):
                    h = kvh * $gqa_group + g
                    group = HEAD_TABLE[h]
                    start = Q_START[group * ($n_kv_tiles + 1) + kt]
                    end = Q_START[group * ($n_kv_tiles + 1) + kt + 1]
                    full_end = start + Q_FULL[group * $n_kv_tiles + kt]
                    for e in T.serial(start, end):
                        qt = Q_INDEX[e]
                        $load_q_do
                        $transpose_q_do
                        $column_statistics
                        $kv_scores
                        $kv_mask
                        $dkdv_score_mod
                        $dkdv_p
                        $dv_grad
                        $dkdv_dp
                        $dkdv_ds
                        $dk_grad
                for j in T.serial($block_kv):
                    kv = KVTOK[j]
                    if kv >= 0:
                        for d in T.vectorized($head_dim):
                            DK[b, kvh, kv, d] = GK[j, d] * sm_scale
                            DV[b, kvh, kv, d] = GV[j, d]
"""
