"""Backward kernel text: preprocess, dQ over each q tile's kv list, dK/dV over each kv tile's q list.

With P = exp2(S - LSE * log2(e)) recomputed per tile (S in log2 units from the shared ``_scores``):
delta = rowsum(dO * O), dP = dO V^T, dS = P * (dP - delta) (times d score_mod / d score when there is
one), dQ = scale * dS K, dK = scale * dS^T Q, dV = P^T dO. No atomics: a dQ program owns its q rows; a
dK/dV program owns its kv rows and loops over the GQA_GROUP query heads that share its kv head, so the
GQA sum happens in registers. Rows with LSE = -inf (nothing allowed) and padding rows read LSE as +inf,
so P is 0 there, never NaN. Placeholders: ``$tensor_args``, ``$score_grad`` (see ``template_common``), and
for a score_mod that reads float tensors ``$table_args``, ``$table_pass``, ``$table_program``,
``$table_grad`` (``TABLE_ARGS`` ... below; empty otherwise): the dQ step adds dS * d score_mod / d T[e]
into its program's row of the table-gradient buffer TG before dS becomes dL/d score.
"""

BACKWARD = '''\
# -- backward ----------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, n_q):
    """DELTA[b, h, t] = sum_d dO[t, d] * O[t, d], in original token order."""
    bh = tl.program_id(1)
    b = bh // N_HEADS
    h = bh % N_HEADS
    tok = tl.program_id(0) * PREPROCESS_ROWS + tl.arange(0, PREPROCESS_ROWS)
    valid = tok < n_q
    o = _load_rows(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, tok, valid, stride_on)
    do = _load_rows(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh, tok, valid, stride_don)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * n_q + tok, delta, mask=valid)


@triton.jit
def _load_lse2(LSE_head, tok, valid):
    """LSE in log2 units; +inf for padding rows and rows with nothing allowed, so that P = 0 there."""
    lse2 = tl.load(LSE_head + tok, mask=valid, other=float("-inf")) * LOG2E
    return tl.where(lse2 == float("-inf"), float("inf"), lse2)


@triton.jit
def _dq_step(dq, q, do, lse2, delta, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn, stride_vn,
             KV_TOKENS, sm_scale$tensor_args$table_args, PART: tl.constexpr, KV_GATHER: tl.constexpr,
             KV_PADDED: tl.constexpr, IS_FULL_TILE: tl.constexpr):
    """dQ (without the scale) += dS K over DQ_CHUNK_N kv positions starting at ``first_kv``."""
    kv_tok, kv_valid = _tile_tokens(first_kv, n_kv, KV_TOKENS, DQ_CHUNK_N, KV_GATHER)
    k = _load_rows(K_head, kv_tok, kv_valid, stride_kn)
    v = _load_rows(V_head, kv_tok, kv_valid, stride_vn)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    q_idx, kv_idx = q_tok[:, None], kv_tok[None, :]
    s = _scores(qk, b, h, q_idx, kv_idx, kv_valid[None, :], sm_scale$tensor_args, PART, IS_FULL_TILE, KV_PADDED)
    p = tl.math.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    $table_grad
    $score_grad
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)


@triton.jit
def _bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
            stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh,
            stride_dqn, n_q, n_kv, sm_scale, KV_START, KV_FULL, KV_INDEX, HEAD_TABLE, Q_TOKENS, KV_TOKENS,
            n_q_tiles, GATE, stride_gb, stride_gh, gate_open_at$tensor_args$table_args, PART: tl.constexpr,
            Q_GATHER: tl.constexpr, KV_GATHER: tl.constexpr, KV_PADDED: tl.constexpr, GATED: tl.constexpr):
    """dQ of DQ_ROWS rows of one q tile of one (batch, head), over the same kv list as the forward."""
    q_tile = tl.program_id(0) // DQ_SPLIT
    first_q = q_tile * BLOCK_M + (tl.program_id(0) - q_tile * DQ_SPLIT) * DQ_ROWS
    bh = tl.program_id(1)
    b = bh // N_HEADS
    h = bh % N_HEADS
    group = tl.load(HEAD_TABLE + h)
    row = group * (n_q_tiles + 1) + q_tile
    start, end, ENTRIES = _list_row(KV_START, KV_INDEX, row, GATE, stride_gb, stride_gh, gate_open_at, b, h, GATED)
    full_end = start + tl.load(KV_FULL + group * n_q_tiles + q_tile)

    q_tok, q_valid = _tile_tokens(first_q, n_q, Q_TOKENS, DQ_ROWS, Q_GATHER)
    q = _load_rows(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, q_tok, q_valid, stride_qn)
    do = _load_rows(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh, q_tok, q_valid, stride_don)
    lse2 = _load_lse2(LSE + bh.to(tl.int64) * n_q, q_tok, q_valid)
    delta = tl.load(DELTA + bh.to(tl.int64) * n_q + q_tok, mask=q_valid, other=0.0)
    kv_head = (h // GQA_GROUP).to(tl.int64)
    K_head = K + b.to(tl.int64) * stride_kb + kv_head * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + kv_head * stride_vh
    $table_program

    dq = tl.zeros([DQ_ROWS, HEAD_DIM_PAD], tl.float32)
    # -- FULL tiles: no predicate --
    for step in range(start * DQ_CHUNKS, full_end * DQ_CHUNKS):
        tile = step // DQ_CHUNKS  # list entry, then the chunk within its tile
        first_kv = tl.load(ENTRIES + tile) * BLOCK_N + (step - tile * DQ_CHUNKS) * DQ_CHUNK_N
        dq = _dq_step(dq, q, do, lse2, delta, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn, stride_vn,
                      KV_TOKENS, sm_scale$tensor_args$table_pass, PART, KV_GATHER, KV_PADDED, IS_FULL_TILE=True)
    # -- PARTIAL tiles: predicate inlined below --
    for step in range(full_end * DQ_CHUNKS, end * DQ_CHUNKS):
        tile = step // DQ_CHUNKS  # list entry, then the chunk within its tile
        first_kv = tl.load(ENTRIES + tile) * BLOCK_N + (step - tile * DQ_CHUNKS) * DQ_CHUNK_N
        dq = _dq_step(dq, q, do, lse2, delta, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn, stride_vn,
                      KV_TOKENS, sm_scale$tensor_args$table_pass, PART, KV_GATHER, KV_PADDED, IS_FULL_TILE=False)
    # -- epilogue --
    DQ_head = DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
    _store_rows(DQ_head, q_tok, q_valid, stride_dqn, dq * sm_scale)


@triton.jit
def _dkdv_step(dk, dv, k, v, b, h, kv_tok, kv_valid, first_q, n_q, Q_head, DO_head, stride_qn, stride_don,
               LSE_head, DELTA_head, Q_TOKENS, sm_scale$tensor_args, PART: tl.constexpr, Q_GATHER: tl.constexpr,
               IS_FULL_TILE: tl.constexpr):
    """dK (without the scale) += dS^T Q and dV += P^T dO over DKDV_CHUNK_M q positions from ``first_q``.

    Works on transposed [kv, q] tiles, so every product has M = DKDV_ROWS. With DKDV_SWAP_AB (kv rows
    too few for wgmma's M >= 64) it works on [q, kv] tiles and keeps dK^T, dV^T [HEAD_DIM_PAD, DKDV_ROWS]:
    M is DKDV_CHUNK_M or the head dim instead. Padding kv slots need no mask: their rows are never stored.
    """
    q_tok, q_valid = _tile_tokens(first_q, n_q, Q_TOKENS, DKDV_CHUNK_M, Q_GATHER)
    q = _load_rows(Q_head, q_tok, q_valid, stride_qn)
    do = _load_rows(DO_head, q_tok, q_valid, stride_don)
    lse2 = _load_lse2(LSE_head, q_tok, q_valid)
    delta = tl.load(DELTA_head + q_tok, mask=q_valid, other=0.0)
    if DKDV_SWAP_AB:
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        q_idx, kv_idx = q_tok[:, None], kv_tok[None, :]
        s = _scores(qk, b, h, q_idx, kv_idx, kv_valid[None, :], sm_scale$tensor_args, PART, IS_FULL_TILE, False)
        p = tl.math.exp2(s - lse2[:, None])
        dv += tl.dot(tl.trans(do), p.to(do.dtype), input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        $score_grad
        dk += tl.dot(tl.trans(q), ds.to(q.dtype), input_precision=DOT_PRECISION)
    else:
        qk = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        q_idx, kv_idx = q_tok[None, :], kv_tok[:, None]
        s = _scores(qk, b, h, q_idx, kv_idx, kv_valid[:, None], sm_scale$tensor_args, PART, IS_FULL_TILE, False)
        p = tl.math.exp2(s - lse2[None, :])
        dv += tl.dot(p.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[None, :])
        $score_grad
        dk += tl.dot(ds.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh,
              stride_dkn, stride_dvb, stride_dvh, stride_dvn, n_q, n_kv, sm_scale, Q_START, Q_FULL, Q_INDEX,
              HEAD_TABLE, Q_TOKENS, KV_TOKENS, n_kv_tiles, GATE, stride_gb, stride_gh, gate_open_at$tensor_args,
              PART: tl.constexpr, Q_GATHER: tl.constexpr, KV_GATHER: tl.constexpr, GATED: tl.constexpr):
    """dK and dV of DKDV_ROWS rows of one kv tile of one (batch, kv head): for each query head of its GQA
    group, the transposed list (q tiles of this kv tile, FULL first)."""
    kv_tile = tl.program_id(0) // DKDV_SPLIT
    first_kv = kv_tile * BLOCK_N + (tl.program_id(0) - kv_tile * DKDV_SPLIT) * DKDV_ROWS
    bh = tl.program_id(1)
    b = bh // N_KV_HEADS
    kv_head = bh % N_KV_HEADS
    kv_tok, kv_valid = _tile_tokens(first_kv, n_kv, KV_TOKENS, DKDV_ROWS, KV_GATHER)
    k = _load_rows(K + b.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh, kv_tok, kv_valid, stride_kn)
    v = _load_rows(V + b.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh, kv_tok, kv_valid, stride_vn)

    if DKDV_SWAP_AB:  # dK^T, dV^T
        dk = tl.zeros([HEAD_DIM_PAD, DKDV_ROWS], tl.float32)
        dv = tl.zeros([HEAD_DIM_PAD, DKDV_ROWS], tl.float32)
    else:
        dk = tl.zeros([DKDV_ROWS, HEAD_DIM_PAD], tl.float32)
        dv = tl.zeros([DKDV_ROWS, HEAD_DIM_PAD], tl.float32)
    for member in range(GQA_GROUP):
        h = kv_head * GQA_GROUP + member
        group = tl.load(HEAD_TABLE + h)
        row = group * (n_kv_tiles + 1) + kv_tile
        start, end, ENTRIES = _list_row(Q_START, Q_INDEX, row, GATE, stride_gb, stride_gh, gate_open_at, b, h,
                                        GATED)
        full_end = start + tl.load(Q_FULL + group * n_kv_tiles + kv_tile)
        Q_head = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        DO_head = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        LSE_head = LSE + (b * N_HEADS + h).to(tl.int64) * n_q
        DELTA_head = DELTA + (b * N_HEADS + h).to(tl.int64) * n_q
        # -- FULL tiles: no predicate --
        for step in range(start * DKDV_CHUNKS, full_end * DKDV_CHUNKS):
            tile = step // DKDV_CHUNKS  # list entry, then the chunk within its tile
            first_q = tl.load(ENTRIES + tile) * BLOCK_M + (step - tile * DKDV_CHUNKS) * DKDV_CHUNK_M
            dk, dv = _dkdv_step(dk, dv, k, v, b, h, kv_tok, kv_valid, first_q, n_q, Q_head, DO_head, stride_qn,
                                stride_don, LSE_head, DELTA_head, Q_TOKENS, sm_scale$tensor_args, PART, Q_GATHER,
                                IS_FULL_TILE=True)
        # -- PARTIAL tiles: predicate inlined below --
        for step in range(full_end * DKDV_CHUNKS, end * DKDV_CHUNKS):
            tile = step // DKDV_CHUNKS  # list entry, then the chunk within its tile
            first_q = tl.load(ENTRIES + tile) * BLOCK_M + (step - tile * DKDV_CHUNKS) * DKDV_CHUNK_M
            dk, dv = _dkdv_step(dk, dv, k, v, b, h, kv_tok, kv_valid, first_q, n_q, Q_head, DO_head, stride_qn,
                                stride_don, LSE_head, DELTA_head, Q_TOKENS, sm_scale$tensor_args, PART, Q_GATHER,
                                IS_FULL_TILE=False)
    # -- epilogue --
    if DKDV_SWAP_AB:
        dk = tl.trans(dk)
        dv = tl.trans(dv)
    DK_head = DK + b.to(tl.int64) * stride_dkb + kv_head.to(tl.int64) * stride_dkh
    DV_head = DV + b.to(tl.int64) * stride_dvb + kv_head.to(tl.int64) * stride_dvh
    _store_rows(DK_head, kv_tok, kv_valid, stride_dkn, dk * sm_scale)
    _store_rows(DV_head, kv_tok, kv_valid, stride_dvn, dv)
'''

SCORE_GRAD = "ds = ds * _score_mod_grad(qk * sm_scale, b, h, q_idx, kv_idx$tensor_args)"

TABLE_ARGS = ", TG, TABLE_GRADS: tl.constexpr"
TABLE_PASS = ", TG_program, TABLE_GRADS"
TABLE_PROGRAM = "TG_program = TG + (tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)).to(tl.int64) * TG_ENTRIES"
TABLE_GRAD = """\
if TABLE_GRADS:
    _table_grads(TG, ds, p > 0, qk * sm_scale, b, h, q_idx, kv_idx$tensor_args)"""

TABLE_HELPERS = '''\
@triton.jit
def _accumulate(TG, entry, weight, valid):
    """TG[e] += sum of ``weight`` over the pairs with ``entry`` e, for e in the range the tile touches.

    Deterministic: one-hot sums over ENTRY_CHUNK entries at a time (tl.sum's fixed tree), chunks aligned to
    ENTRY_CHUNK so that an entry always sits in the same lane; TG is this program's own row, read and
    written in program order (a barrier between chunks), so no atomics and no race.
    """
    entry = tl.where(valid, entry, -1)
    low = tl.min(tl.where(entry >= 0, entry, TG_ENTRIES))
    high = tl.max(entry)
    for first in range(low // ENTRY_CHUNK * ENTRY_CHUNK, high + 1, ENTRY_CHUNK):
        entries = first + tl.arange(0, ENTRY_CHUNK)
        hit = entry[:, :, None] == entries[None, None, :]
        part = tl.sum(tl.sum(tl.where(hit, weight[:, :, None], 0.0), 0), 0)
        inside = entries < TG_ENTRIES
        tl.store(TG + entries, tl.load(TG + entries, mask=inside, other=0.0) + part, mask=inside)
        tl.debug_barrier()
'''
"""The table-gradient accumulation (emitted only for a score_mod that reads float tensors)."""
