"""Tile-level TensorIR kernels for CPUs (``llvm``): forward, dQ and dK/dV of one plan part.

One unit of parallel work is a (batch, head, q tile) of the forward and dQ, or a (batch, kv head, kv tile)
of dK/dV: ``WORK[w]`` names it (-1: none), in the order the launcher balances by the plan's tile lists
(:mod:`maskir.codegen.tvm.balance`). A unit gathers its own rows once into fp32 tiles (``QS`` [block_q, D]
and the transposed ``QT`` [D, block_q]; dK/dV: ``KS``, ``KT``, ``VS``, ``VT``), then walks its CSR tile
list, gathering the other side's rows per tile. Scores are laid out with the walked side as rows and the
unit's own side as vector lanes, so no tile is transposed inside the walk:

- forward and dQ: ``S[c, r] = KS[c, :] . QT[:, r]`` (rows c: keys, lanes r: queries);
  dK/dV: ``S[r, c] = QS[r, :] . KT[:, c]`` (rows: queries, lanes: keys); the transposed operand holds
  the rows times ``sm_scale`` (scaled once per unit or kv tile, not once per tile pair);
- every product is blocked: a few rows (unrolled, their accumulators in vector registers) share each
  load of the right operand, the inner loop is ``T.vectorized``, which LLVM splits into the target's
  vector registers (AVX-512, AVX2, NEON); the left operand is read one element at a time (broadcast),
  so it may be stored transposed;
- padding keys (token -1) score -inf; a PARTIAL pair evaluates the lowered predicate for a whole row of
  lanes at once, once per tile pair (FULL pairs never do); a score_mod rewrites each allowed score;
- lists: the plan's CSR lists, or with ``gated`` (patterns over run-time data) this call's lists of the
  tiles the data leaves open (``GATE_WALK``);
- forward: online softmax per query, vectorised over queries: m' = max(m, max_c S), P = exp(S - m'),
  l' = l exp(m - m') + sum_c P, acc' = acc exp(m - m') + P^T @ V;
- dQ: P = exp(s - lse), dP = V @ dO^T, dS = P (dP - delta) (times d score_mod / d score), dQ += dS^T @ K;
- dK/dV: P, dV += P^T @ dO, dP = dO @ V^T, dS, dK += dS^T @ Q, over the GQA group's query heads;
- the fused backward (``bwd``): the dK/dV kernel with one unit per (batch, kv head) walking all its kv
  tiles, which also adds dS @ K into the rows of dQ it owns (every query head of its GQA group): five products per tile
  pair instead of dQ's three plus dK/dV's four, for plans with enough (batch, kv head) units to balance.
  Rows with no allowed key (lse -inf) and padding rows read lse as +inf, so their P is exactly 0.

``exp`` is :func:`exp_lanes`, a polynomial that vectorises (LLVM's ``expf`` is a scalar call). Values are
bound with ``let`` only outside ``T.vectorized`` loops: TVM 0.27 vectorises a ``let`` inside one with the
wrong lanes (:func:`maskir.codegen.tvm.render.render_tvm_row` keeps a row's locals in buffers instead).

Placeholders (``string.Template``, blocks keep their indentation): the row kernels' ``$common_params``,
``$common_buffers``, ``$kv_list``, tensor parameters and plan numbers, and the blocks of :func:`tile_blocks`.
"""

from __future__ import annotations

import re
from math import gcd

from maskir.codegen.common.expr import Expr
from maskir.codegen.tvm.render import render_tvm_row

_EXP_POLY = (1.0, 1.0, 0.5, 1 / 6, 1 / 24, 1 / 120, 1 / 720)
"""Taylor coefficients of e^r on |r| <= ln(2)/2: relative error < 3e-7 (fp32 rounding dominates)."""

NEG_INF = 'T.float32("-inf")'


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


_VECTOR_LOOP = re.compile(r"^(?P<indent> *)for (?P<var>\w+) in T\.vectorized\((?P<extent>\d+)\):$")


def split_vector_loops(text: str, lanes: int, unroll_limit: int = 8) -> str:
    """Every ``for x in T.vectorized(n)`` of ``text`` as ``for x0 in T.unroll(n / w): for x1 in
    T.vectorized(w)`` (x -> ``x0 * w + x1`` in its body) with w = gcd(n, lanes), the target's vector
    width: LLVM then sees vectors it has registers for (a <128 x float> loop body takes it minutes to
    compile). Chunk loops longer than ``unroll_limit`` stay serial; widths under 4 are left whole."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _VECTOR_LOOP.match(lines[i])
        width = gcd(int(match["extent"]), lanes) if match else 0
        if match is None or width < 4 or width == int(match["extent"]):
            out.append(lines[i])
            i += 1
            continue
        indent, var, chunks = match["indent"], match["var"], int(match["extent"]) // width
        body_end = i + 1
        while body_end < len(lines) and (lines[body_end].startswith(indent + " ") or not lines[body_end].strip()):
            body_end += 1
        loop = "T.unroll" if chunks <= unroll_limit else "T.serial"
        out += [f"{indent}for {var}0 in {loop}({chunks}):", f"{indent}    for {var}1 in T.vectorized({width}):"]
        lane = f"({var}0 * {width} + {var}1)"
        out += [
            "    " + re.sub(rf"\b{var}\b", lane, line) if line.strip() else line for line in lines[i + 1 : body_end]
        ]
        i = body_end
    return "\n".join(out)


def _lanes(cols: int, *statements: str) -> str:
    """Each statement in its own ``T.vectorized`` loop over the lanes ``c``."""
    return "\n".join(f"for c in T.vectorized({cols}):\n    {statement}" for statement in statements)


def exp_lanes(target: str, x: str, cols: int) -> str:
    """``target = exp(x)`` over the lanes ``c`` (``target`` and ``x`` are text in c, like ``S[r, c]`` and
    ``S[r, c] - ROW[2, c]``: ``x`` is recomputed in each pass instead of being stored first) for fp32
    arguments <= 0, in three vectorised passes (``EXPN``, ``EXPR`` scratch rows): x = n ln2 + r with
    n = round(x / ln2) (ln2 in two parts, Cody-Waite), e^x = 2^n p(r), 2^n built from exponent bits.
    x < -87 (and -inf) gives exactly 0, so masked scores contribute nothing; that choice is a ``T.Select``
    (both sides are computed, LLVM blends them; ``T.if_then_else`` would branch per lane). (One nested
    expression instead would take TVMScript's parser seconds.)"""
    poly = f"T.float32({_EXP_POLY[-1]!r})"
    for coefficient in reversed(_EXP_POLY[:-1]):
        poly = f"(T.float32({coefficient!r}) + EXPR[c] * {poly})"
    scale = 'T.reinterpret("float32", T.shift_left(T.Cast("int32", EXPN[c]) + 127, 23))'
    return _lanes(
        cols,
        f"EXPN[c] = T.floor(T.max({x}, T.float32(-88.0)) * T.float32(1.4426950408889634) + T.float32(0.5))",
        f"EXPR[c] = ({x}) - EXPN[c] * T.float32(0.693145751953125) - EXPN[c] * T.float32(1.428606765330187e-06)",
        f"{target} = T.Select(({x}) < T.float32(-87.0), T.float32(0), {poly} * {scale})",
    )


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


def transpose(source: str, target: str, rows: int, dim: int, factor: str | None = None) -> str:
    """``target[d, r] = source[r, d]`` (times ``factor`` when given): a [rows, D] tile in the [D, rows]
    layout a product over rows reads."""
    value = f"{source}[r, d]" if factor is None else f"{source}[r, d] * {factor}"
    return f"for d in T.serial({dim}):\n    for r in T.vectorized({rows}):\n        {target}[d, r] = {value}"


def _row_block(rows: int, cols: int, lanes: int, accumulators: int) -> int:
    """Rows a product updates together: their accumulators (``cols / lanes`` vector registers per row) fit
    in ``accumulators`` registers; a divisor of ``rows``."""
    fitting = max(1, accumulators // -(-cols // lanes))
    return max(d for d in range(1, min(fitting, rows) + 1) if rows % d == 0)


def product(
    out: str,
    left: str,
    right: str,
    shape: tuple[int, int, int],
    registers: tuple[int, int],
    *,
    accumulate: bool = False,
    left_transposed: bool = False,
) -> str:
    """``out[r, c] (+)= sum_k left[r, k] * right[k, c]`` for ``shape`` (rows, cols, inner); ``left`` is
    read as ``left[k, r]`` when ``left_transposed``. A block of rows (unrolled) shares each load of
    ``right[k, :]``, k in the middle, c vectorised; ``registers`` = (fp32 lanes per vector, vector
    registers for accumulators) sizes the block. Without ``accumulate`` the step k = 0 stores
    ``left[r, 0] * right[0, c]`` (no zero fill of ``out`` first)."""
    rows, cols, inner = shape
    block = _row_block(rows, cols, *registers)
    row = f"r0 * {block} + r1"

    def step(k: str, accumulated: str) -> str:
        element = f"{left}[{k}, {row}]" if left_transposed else f"{left}[{row}, {k}]"
        return (
            f"for r1 in T.unroll({block}):\n    for c in T.vectorized({cols}):\n"
            f"        {out}[{row}, c] = {accumulated}{element} * {right}[{k}, c]"
        )

    first = "" if accumulate else step("0", "") + "\n"
    steps = f"for k in T.serial({inner if accumulate else f'1, {inner}'}):\n" + _indent(
        step("k", f"{out}[{row}, c] + "), 4
    )
    return f"for r0 in T.serial({rows // block}):\n" + _indent(first + steps, 4)


def _padding_rows(rows: int, cols: int, row_tokens: str) -> str:
    """Rows of S whose token (in ``row_tokens``) is padding score -inf (their gathered rows are 0). The
    scale is not applied here: ``sm_scale`` is folded into the transposed operand of the score product."""
    store = _lanes(cols, f"S[r, c] = {NEG_INF}")
    return f"for r in T.serial({rows}):\n    if {row_tokens}[r] < 0:\n{_indent(store, 8)}"


def _probabilities(rows: int, cols: int, lse: str, row_sum: str | None = None) -> str:
    """``S = exp(S - lse)`` per element (``lse`` text in r and c: the query's lse, +inf for empty rows);
    with ``row_sum`` (text in c) also ``row_sum += S[r, c]`` in the same row loop, while the row is hot."""
    total = "" if row_sum is None else "\n" + _lanes(cols, f"{row_sum} = {row_sum} + S[r, c]")
    return f"for r in T.serial({rows}):\n" + _indent(exp_lanes("S[r, c]", f"S[r, c] - {lse}", cols) + total, 4)


def _gradient_scores(rows: int, cols: int, delta: str, dmod: bool) -> str:
    """``DP = S * (DP - delta) (* DMOD)``: dS from P (in S) and dP."""
    factor = " * DMOD[r, c]" if dmod else ""
    return f"for r in T.serial({rows}):\n" + _indent(
        _lanes(cols, f"DP[r, c] = S[r, c] * (DP[r, c] - {delta}){factor}"), 4
    )


def _table_gradient(block_kv: int, block_q: int, table_grad: str) -> str:
    """dQ's trainable-table step over S [keys, queries]: ``table_grad`` per allowed pair (raw score in
    ``RAW``), with ``ds_mod`` = DP (dS of the modified score), then DP *= DMOD (dS of the raw score)."""
    pair = f"score = RAW[r, c]\nds_mod = DP[r, c]\n{table_grad}"
    return (
        f"if train_tables != 0:\n    for r in T.serial({block_kv}):\n        kv = KVTOK[r]\n"
        f"        for c in T.serial({block_q}):\n            q = QTOK[c]\n"
        f"            if kv >= 0 and q >= 0 and RAW[r, c] > {NEG_INF}:\n{_indent(pair, 16)}\n"
        f"for r in T.serial({block_kv}):\n" + _indent(_lanes(block_q, "DP[r, c] = DP[r, c] * DMOD[r, c]"), 4)
    )


def _statistics(block_q: int) -> str:
    """Per query of a backward tile: ``ROW[0, i]`` = lse (+inf for padding and rows with no allowed key,
    so P = 0) and ``ROW[1, i]`` = delta."""
    return (
        f'for i in T.serial({block_q}):\n    q = QTOK[i]\n    ROW[0, i] = T.float32("inf")\n'
        f"    ROW[1, i] = T.float32(0)\n    if q >= 0:\n        ROW[1, i] = DELTA[b, h, q]\n"
        f"        if LSE[b, h, q] > {NEG_INF}:\n            ROW[0, i] = LSE[b, h, q]"
    )


def _online_softmax(block_q: int, block_kv: int) -> str:
    """One kv tile's step of the forward's online softmax over S [keys, queries], vectorised over queries:
    ``ROW`` holds per query m, l, the new max (0 while it is -inf, so S - m stays -inf) and alpha; l is
    rescaled by alpha first, so the exp pass over S adds each row of P into it."""
    return (
        _lanes(block_q, "ROW[2, c] = ROW[0, c]")
        + f"\nfor r in T.serial({block_kv}):\n"
        + _indent(_lanes(block_q, "ROW[2, c] = T.max(ROW[2, c], S[r, c])"), 4)
        + "\n"
        + _lanes(
            block_q,
            f"ROW[3, c] = ROW[0, c] - T.Select(ROW[2, c] > {NEG_INF}, ROW[2, c], T.float32(0))",
            "ROW[0, c] = ROW[2, c]",
            f"ROW[2, c] = T.Select(ROW[2, c] > {NEG_INF}, ROW[2, c], T.float32(0))",
        )
        + "\n"
        + exp_lanes("ROW[3, c]", "ROW[3, c]", block_q)
        + "\n"
        + _lanes(block_q, "ROW[1, c] = ROW[1, c] * ROW[3, c]")
        + "\n"
        + _probabilities(block_kv, block_q, "ROW[2, c]", row_sum="ROW[1, c]")
    )


def tile_blocks(
    *,
    block_q: int,
    block_kv: int,
    head_dim: int,
    vector_lanes: int,
    vector_registers: int,
    predicate: Expr,
    score_mod: Expr | None,
    score_grad: Expr | None,
    table_grad: str | None = None,
) -> dict[str, str]:
    """The blocks of the three tile kernels for one part: buffers, loads, products, masks, softmax steps.

    ``predicate`` is allowed(b, h, q, kv), ``score_mod`` s(score, b, h, q, kv) and ``score_grad`` its
    d/d score (None without a score_mod), evaluated a tile row at a time. ``table_grad``: the statements
    adding one pair's ``ds_mod`` (dS of the modified score) times d score_mod / d load into
    ``TG[item, entry]`` for the tensors a score_mod trains (``codegen.common.table_grad``; dQ only), run
    per allowed pair of a tile with ``score`` (the raw score), ``q``, ``kv`` bound. ``vector_lanes`` fp32 lanes per
    vector register and ``vector_registers`` registers (32 with AVX-512 and NEON, 16 with AVX2) size the
    row blocks of the products (half the registers hold accumulators)."""
    bq, bkv, dim = block_q, block_kv, head_dim
    registers = (vector_lanes, vector_registers // 2)
    sides = {  # rows over keys (forward, dQ: lanes are queries) or over queries (dK/dV: lanes are keys)
        "kv": (bkv, bq, ("kv", "KVTOK"), {"q": "T.max(QTOK[c], 0)", "score": "S[r, c]"}),
        "q": (bq, bkv, ("q", "QTOK"), {"kv": "T.max(KVTOK[c], 0)", "score": "S[r, c]"}),
    }
    row_buffers: dict[str, dict[str, tuple]] = {"q": {}, "kv": {}}

    def expression_rows(side: str, parts: list[tuple[Expr, str, str]]) -> str:
        """Each (expr, prefix, store) of ``parts`` over the tile: ``store`` formatted with the expression's
        text (``{value}``) per row, in a vectorised loop over the lanes ``c``; what varies with less than
        both the row and the lane is computed outside the loops it does not vary in."""
        rows, cols, (variable, tokens), names = sides[side]
        lane = next(name for name in ("q", "kv") if name != variable)
        tile, body = [], []
        for expr, prefix, store in parts:
            text = render_tvm_row(
                expr, prefix, "c", names, row_vars=frozenset({variable, "score"}), lane_vars=frozenset({lane, "score"})
            )
            tile += [*text.tile_lets, _lanes(cols, *text.lane_lines)] if text.lane_lines else list(text.tile_lets)
            body += [*text.row_lets, _lanes(cols, *text.lines, store.format(value=text.result))]
            row_buffers[side].update({name: ((cols,), dtype) for name, dtype in text.buffers})
        # padding rows read token 0: their results are never used
        head = f"for r in T.serial({rows}):\n    {variable} = T.max({tokens}[r], 0)\n"
        return "\n".join([*tile, head + _indent("\n".join(body), 4)])

    def mask(side: str) -> str:
        store = f"S[r, c] = T.Select({{value}}, S[r, c], {NEG_INF})"
        return "if e >= partial_start:\n" + _indent(expression_rows(side, [(predicate, "pa", store)]), 4)

    def modified(side: str, gradient: bool) -> str:
        if score_mod is None:
            return ""
        parts = [(score_grad, "pg", "DMOD[r, c] = {value}")] if gradient else []
        parts.append((score_mod, "ps", f"S[r, c] = T.if_then_else(S[r, c] > {NEG_INF}, {{value}}, S[r, c])"))
        rows = expression_rows(side, parts)
        if gradient and side == "kv" and table_grad is not None:  # dQ keeps the raw scores for the tables
            rows = f"for r in T.serial({bkv}):\n" + _indent(_lanes(bq, "RAW[r, c] = S[r, c]"), 4) + "\n" + rows
        return rows

    blocks = {
        "fwd_mask": mask("kv"),
        "fwd_score_mod": modified("kv", False),
        "dq_mask": mask("kv"),
        "dq_score_mod": modified("kv", True),
        "dkdv_mask": mask("q"),
        "dkdv_score_mod": modified("q", True),
    }
    f32, i32 = "float32", "int32"
    dmod = {"DMOD": ((bkv, bq), f32)} if score_mod is not None else {}
    if table_grad is not None:
        dmod["RAW"] = ((bkv, bq), f32)
    dmod_t = {"DMOD": ((bq, bkv), f32)} if score_mod is not None else {}
    scratch = {"EXPN": ((max(bq, bkv),), f32), "EXPR": ((max(bq, bkv),), f32)}
    q_rows = {"QS": ((bq, dim), f32), "QTOK": ((bq,), i32)}
    kv_rows = {"KS": ((bkv, dim), f32), "VS": ((bkv, dim), f32), "KVTOK": ((bkv,), i32)}
    buffers = {
        "fwd": {**q_rows, "QT": ((dim, bq), f32), **kv_rows, "S": ((bkv, bq), f32), "ACC": ((bq, dim), f32),
                "ROW": ((4, bq), f32), **scratch, **row_buffers["kv"]},
        "dq": {**q_rows, "QT": ((dim, bq), f32), "DOS": ((bq, dim), f32), "DOT": ((dim, bq), f32), **kv_rows,
               "S": ((bkv, bq), f32), "DP": ((bkv, bq), f32), **dmod, "GRAD": ((bq, dim), f32),
               "ROW": ((2, bq), f32), **scratch, **row_buffers["kv"]},
        "dkdv": {**kv_rows, "KT": ((dim, bkv), f32), "VT": ((dim, bkv), f32), **q_rows, "DOS": ((bq, dim), f32),
                 "S": ((bq, bkv), f32), "DP": ((bq, bkv), f32), **dmod_t, "GK": ((bkv, dim), f32),
                 "GV": ((bkv, dim), f32), "ROW": ((2, bq), f32), **scratch, **row_buffers["q"]},
    }  # fmt: skip
    for kernel, shapes in buffers.items():
        blocks[f"{kernel}_buffers"] = "\n".join(
            f'{name} = T.decl_buffer({shape}, "{dtype}", scope="local")' for name, (shape, dtype) in shapes.items()
        )
    has_dmod = score_mod is not None
    return {
        **blocks,
        "load_q": load_rows("Q_TOKENS", "qt", bq, "QTOK", [("Q", "h", "QS")], dim),
        "load_q_do": load_rows("Q_TOKENS", "qt", bq, "QTOK", [("Q", "h", "QS"), ("DO", "h", "DOS")], dim),
        "load_kv": load_rows("KV_TOKENS", "kt", bkv, "KVTOK", [("K", "kvh", "KS"), ("V", "kvh", "VS")], dim),
        "transpose_q": transpose("QS", "QT", bq, dim, "sm_scale"),
        "transpose_q_do": transpose("QS", "QT", bq, dim, "sm_scale") + "\n" + transpose("DOS", "DOT", bq, dim),
        "transpose_kv": transpose("KS", "KT", bkv, dim, "sm_scale") + "\n" + transpose("VS", "VT", bkv, dim),
        "statistics": _statistics(bq),
        "kv_scores": product("S", "KS", "QT", (bkv, bq, dim), registers) + "\n" + _padding_rows(bkv, bq, "KVTOK"),
        "q_scores": product("S", "QS", "KT", (bq, bkv, dim), registers),
        "online_softmax": _online_softmax(bq, bkv),
        "pv": product("ACC", "S", "VS", (bq, dim, bkv), registers, accumulate=True, left_transposed=True),
        "dq_p": _probabilities(bkv, bq, "ROW[0, c]"),
        "dq_dp": product("DP", "VS", "DOT", (bkv, bq, dim), registers),
        "dq_ds": _gradient_scores(bkv, bq, "ROW[1, c]", has_dmod and table_grad is None)
        + ("" if table_grad is None else "\n" + _table_gradient(bkv, bq, table_grad)),
        "dq_grad": product("GRAD", "DP", "KS", (bq, dim, bkv), registers, accumulate=True, left_transposed=True),
        "dkdv_p": _probabilities(bq, bkv, "ROW[0, r]"),
        "dv_grad": product("GV", "S", "DOS", (bkv, dim, bq), registers, accumulate=True, left_transposed=True),
        "dkdv_dp": product("DP", "DOS", "VT", (bq, bkv, dim), registers),
        "dkdv_ds": _gradient_scores(bq, bkv, "ROW[1, r]", has_dmod),
        "dk_grad": product("GK", "DP", "QS", (bkv, dim, bq), registers, accumulate=True, left_transposed=True),
        "bwd_buffers": blocks["dkdv_buffers"] + f'\nGQ = T.decl_buffer(({bq}, {dim}), "float32", scope="local")',
        "dq_rows": product("GQ", "DP", "KS", (bq, dim, bkv), registers),
    }


TILE_FORWARD = """\
    @T.prim_func
    def fwd_$part($common_params, o_: T.handle, kv_start_: T.handle, kv_full_: T.handle,
            kv_index_: T.handle, work_: T.handle, gate_: T.handle$tensor_params, sm_scale: T.float32$gate_params):
$common_buffers
$gate_buffer
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
                $transpose_q
                for i in T.serial($block_q):
                    ROW[0, i] = T.float32("-inf")
                    ROW[1, i] = T.float32(0)
                    for d in T.vectorized($head_dim):
                        ACC[i, d] = T.float32(0)
                $kv_gate
                for e in T.serial(start, stop):
                    kt = T.if_then_else(gated != 0, GATE[gate_base + e], KV_INDEX[e])
                    $load_kv
                    $kv_scores
                    $fwd_mask
                    $fwd_score_mod
                    $online_softmax
                    for i in T.serial($block_q):
                        alpha = ROW[3, i]
                        for d in T.vectorized($head_dim):
                            ACC[i, d] = ACC[i, d] * alpha
                    $pv
                for i in T.serial($block_q):
                    q = QTOK[i]
                    if q >= 0:
                        inv = T.if_then_else(ROW[1, i] > T.float32(0), T.float32(1) / ROW[1, i], T.float32(0))
                        for d in T.vectorized($head_dim):
                            O[b, h, q, d] = ACC[i, d] * inv
                        LSE[b, h, q] = T.if_then_else(
                            ROW[1, i] > T.float32(0), ROW[0, i] + T.log(ROW[1, i]), T.float32("-inf"))
"""

TILE_DQ = """\
    @T.prim_func
    def dq_$part($common_params, do_: T.handle, delta_: T.handle, dq_: T.handle, kv_start_: T.handle,
            kv_full_: T.handle, kv_index_: T.handle, work_: T.handle, gate_: T.handle$tensor_params,
            sm_scale: T.float32$gate_params$table_params):
$common_buffers
$gate_buffer
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        DQ = T.match_buffer(dq_, (batch, $heads, $n_q, $head_dim), "float32")
        $table_buffer
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
                $transpose_q_do
                $statistics
                for i in T.serial($block_q):
                    for d in T.vectorized($head_dim):
                        GRAD[i, d] = T.float32(0)
                $kv_gate
                for e in T.serial(start, stop):
                    kt = T.if_then_else(gated != 0, GATE[gate_base + e], KV_INDEX[e])
                    $load_kv
                    $kv_scores
                    $dq_mask
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
    def ${kernel}_$part($common_params, do_: T.handle, delta_: T.handle, ${dq_param}dk_: T.handle, dv_: T.handle,
            q_start_: T.handle, q_full_: T.handle, q_index_: T.handle, work_: T.handle, gate_: T.handle$tensor_params,
            sm_scale: T.float32$gate_params):
$common_buffers
$gate_buffer
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        $dq_buffer
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
                $unit_buffers
                $unit
                for kt in T.serial($unit_kv_tiles):
                    $load_kv
                    $transpose_kv
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
                        $q_gate
                        for e in T.serial(start, stop):
                            qt = T.if_then_else(gated != 0, GATE[gate_base + e], Q_INDEX[e])
                            $load_q_do
                            $statistics
                            $q_scores
                            $dkdv_mask
                            $dkdv_score_mod
                            $dkdv_p
                            $dv_grad
                            $dkdv_dp
                            $dkdv_ds
                            $dk_grad
                            $dq_step
                    for j in T.serial($block_kv):
                        kv = KVTOK[j]
                        if kv >= 0:
                            for d in T.vectorized($head_dim):
                                DK[b, kvh, kv, d] = GK[j, d] * sm_scale
                                DV[b, kvh, kv, d] = GV[j, d]
"""
"""The dK/dV kernel of one part, walking the transposed lists of the kv tiles a unit owns; filled with
:data:`DKDV_UNITS` (a (batch, kv head, kv tile) per unit) or :data:`FUSED_UNITS` (the fused backward)."""

DKDV_UNITS = {
    "kernel": "dkdv",
    "dq_param": "",
    "dq_buffer": "",
    "unit_buffers": "$dkdv_buffers",
    "unit": "bkh = item // $n_kv_tiles\nb = bkh // $kv_heads\nkvh = bkh % $kv_heads",
    "unit_kv_tiles": "item % $n_kv_tiles, item % $n_kv_tiles + 1",
    "dq_step": "",
}
"""dK/dV alone: a unit (batch, kv head, kv tile) walks the one kv tile it names."""

FUSED_UNITS = {
    "kernel": "bwd",
    "dq_param": "dq_: T.handle, ",
    "dq_buffer": 'DQ = T.match_buffer(dq_, (batch, $heads, $n_q, $head_dim), "float32")',
    "unit_buffers": "$bwd_buffers",
    "unit": "b = item // $kv_heads\nkvh = item % $kv_heads",
    "unit_kv_tiles": "$n_kv_tiles",
    "dq_step": """\
$dq_rows
for i in T.serial($block_q):
    q = QTOK[i]
    if q >= 0:
        for d in T.vectorized($head_dim):
            DQ[b, h, q, d] = DQ[b, h, q, d] + GQ[i, d] * sm_scale""",
}
"""The fused backward: a unit (batch, kv head) walks all its kv tiles and owns dK/dV of those and dQ of
its GQA group's query heads, so it adds dS @ K into dQ with no other unit writing the same rows."""

GATE_PARAMS = ", gate_open_at: T.int32, gate_full_at: T.int32, stride_gb: T.int32, stride_gh: T.int32, gated: T.int32"

GATE_BUFFER = """\
        n_gate = T.int32()
        GATE = T.match_buffer(gate_, (n_gate,), "int32")"""

GATE_WALK = """\
gate_base = b * stride_gb + h * stride_gh
gate_row = gate_base + gate_open_at + group * ($n_tiles + 1) + $tile
gate_full_row = gate_base + gate_full_at + group * ($n_tiles + 1) + $tile
stop = T.if_then_else(gated != 0, start + GATE[gate_row + 1] - GATE[gate_row], end)
partial_start = T.if_then_else(gated != 0, start + GATE[gate_full_row + 1] - GATE[gate_full_row], full_end)"""
"""The end of a list row walked and its first PARTIAL entry: the plan's (``end``, ``full_end``), or with
``gated`` this call's (``GATE``: the runtime's ``GatedLists`` buffer flattened, ``stride_gh`` 0 when it has
one head): its open entries packed from ``start``, FULL ones first (the plan's and those the data proves
FULL), the running open counts from ``gate_open_at`` on, the running FULL counts from ``gate_full_at`` on,
and ``GATE[gate_base + e]`` the tile of entry e (``maskir.runtime.gating``)."""
