"""Forward kernel text: FlashAttention-2 online softmax over a q tile's CSR list of kv tiles.

One program per (FWD_ROWS rows of a q tile, batch * head). One loop per tile class walks (tile, chunk) steps, so the
pipeliner sees a single loop. The row's FULL tiles come first and run ``_fwd_step`` with
``IS_FULL_TILE=True`` (no predicate); the PARTIAL tiles run the same step with the predicate. Scores are
in log2 units (scale * log2(e) folded, ``exp2``); the saved LSE is the natural log, -inf for a row with no
allowed key, whose output is 0. Placeholder: ``$tensor_args`` (see ``template_common``).
"""

FORWARD = '''\
# -- forward -----------------------------------------------------------------------------------------


@triton.jit
def _fwd_step(acc, l_i, m_i, q, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn, stride_vn, KV_TOKENS,
              sm_scale$tensor_args, PART: tl.constexpr, KV_GATHER: tl.constexpr, KV_PADDED: tl.constexpr,
              IS_FULL_TILE: tl.constexpr):
    """One online-softmax update over FWD_CHUNK_N kv positions starting at ``first_kv``."""
    kv_tok, kv_valid = _tile_tokens(first_kv, n_kv, KV_TOKENS, FWD_CHUNK_N, KV_GATHER)
    k = _load_rows(K_head, kv_tok, kv_valid, stride_kn)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    s = _scores(qk, b, h, q_tok[:, None], kv_tok[None, :], kv_valid[None, :], sm_scale$tensor_args, PART,
                IS_FULL_TILE, KV_PADDED)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet keeps p = 0
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(V_head, kv_tok, kv_valid, stride_vn)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd(Q, K, V, O, LSE, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb,
         stride_vh, stride_vn, stride_ob, stride_oh, stride_on, n_q, n_kv, sm_scale, KV_START, KV_FULL, KV_INDEX,
         HEAD_TABLE, Q_TOKENS, KV_TOKENS, n_q_tiles, GATE, stride_gb, stride_gh, gate_open_at$tensor_args,
         PART: tl.constexpr,
         Q_GATHER: tl.constexpr, KV_GATHER: tl.constexpr, KV_PADDED: tl.constexpr, GATED: tl.constexpr):
    """O and LSE of FWD_ROWS rows of one q tile of one (batch, head): the tile's FULL kv tiles, then its
    PARTIAL kv tiles. FWD_SPLIT programs share a q tile (and its list) when FWD_ROWS < BLOCK_M."""
    q_tile = tl.program_id(0) // FWD_SPLIT
    first_q = q_tile * BLOCK_M + (tl.program_id(0) - q_tile * FWD_SPLIT) * FWD_ROWS
    bh = tl.program_id(1)
    b = bh // N_HEADS
    h = bh % N_HEADS
    # this q tile's kv list: CSR row of the head's group, FULL tiles first
    group = tl.load(HEAD_TABLE + h)
    row = group * (n_q_tiles + 1) + q_tile
    start, end, ENTRIES = _list_row(KV_START, KV_INDEX, row, GATE, stride_gb, stride_gh, gate_open_at, b, h, GATED)
    full_end = start + tl.load(KV_FULL + group * n_q_tiles + q_tile)

    q_tok, q_valid = _tile_tokens(first_q, n_q, Q_TOKENS, FWD_ROWS, Q_GATHER)
    q = _load_rows(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, q_tok, q_valid, stride_qn)
    kv_head = (h // GQA_GROUP).to(tl.int64)
    K_head = K + b.to(tl.int64) * stride_kb + kv_head * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + kv_head * stride_vh

    m_i = tl.full([FWD_ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([FWD_ROWS], tl.float32)
    acc = tl.zeros([FWD_ROWS, HEAD_DIM_PAD], tl.float32)
    # -- FULL tiles: no predicate --
    for step in range(start * FWD_CHUNKS, full_end * FWD_CHUNKS):
        tile = step // FWD_CHUNKS  # list entry, then the chunk within its tile
        first_kv = tl.load(ENTRIES + tile) * BLOCK_N + (step - tile * FWD_CHUNKS) * FWD_CHUNK_N
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn,
                                  stride_vn, KV_TOKENS, sm_scale$tensor_args, PART, KV_GATHER, KV_PADDED,
                                  IS_FULL_TILE=True)
    # -- PARTIAL tiles: predicate inlined below --
    for step in range(full_end * FWD_CHUNKS, end * FWD_CHUNKS):
        tile = step // FWD_CHUNKS  # list entry, then the chunk within its tile
        first_kv = tl.load(ENTRIES + tile) * BLOCK_N + (step - tile * FWD_CHUNKS) * FWD_CHUNK_N
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, b, h, q_tok, first_kv, n_kv, K_head, V_head, stride_kn,
                                  stride_vn, KV_TOKENS, sm_scale$tensor_args, PART, KV_GATHER, KV_PADDED,
                                  IS_FULL_TILE=False)

    # -- epilogue: normalise; a row with no allowed key gives 0 and lse -inf, never NaN --
    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    _store_rows(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, q_tok, q_valid, stride_on, out)
    tl.store(LSE + bh.to(tl.int64) * n_q + q_tok, lse, mask=q_valid)
'''
