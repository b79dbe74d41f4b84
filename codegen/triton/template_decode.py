"""Decode kernel text: packed query heads, one split of a q tile's kv list, partial output + log-sum-exp.

One program per (split * slot, batch * head pack * row block) (``maskir.planner.decode.DecodeGrid``). Its
DECODE_ROWS rows are query-major packed: row r holds query i = r // PACK of head h0 + r % PACK, so the PACK
query heads of one kv head read each K/V tile once. The program walks entries [lo, hi) of its CSR list
(FULL tiles, then PARTIAL ones) and writes O_PART / LSE_PART of its (split, slot); the host merges the
partials by log-sum-exp. A row whose query lies outside the slot's q tile, and every key outside the cache's
valid positions, is masked, so each (split, slot) holds 0 and lse -inf where it saw nothing.

K/V addressing (``_cache_rows``): absolute position p is stored at slot p % RING_SLOTS of a ring buffer
(RING_SLOTS constexpr, 0: no ring); a contiguous cache [B, Hkv, S, D] reads row slot of batch b; a paged
pool [pages, PAGE_SIZE, Hkv, D] reads page BLOCK_TABLE[b, slot // PAGE_SIZE], row slot % PAGE_SIZE.
Placeholders: ``$tensor_args`` (see ``template_common``).
"""

DECODE = '''\
# -- decode: packed heads, split-KV, partial outputs -------------------------------------------------


@triton.jit
def _cache_rows(b, pos, valid, BLOCK_TABLE, stride_tb, stride_page, stride_slot, PAGED: tl.constexpr,
                PAGE_SIZE: tl.constexpr, RING_SLOTS: tl.constexpr):
    """Element offset of absolute position ``pos`` of batch b in a cache (without the head's offset)."""
    if RING_SLOTS > 0:
        slot = pos % RING_SLOTS
    else:
        slot = pos
    if PAGED:
        page = tl.load(BLOCK_TABLE + b.to(tl.int64) * stride_tb + slot // PAGE_SIZE, mask=valid, other=0)
        return page.to(tl.int64) * stride_page + (slot % PAGE_SIZE).to(tl.int64) * stride_slot
    else:
        return b.to(tl.int64) * stride_page + slot.to(tl.int64) * stride_slot


@triton.jit
def _load_cache(base, offsets, valid):
    """[len(offsets), HEAD_DIM_PAD] rows at element ``offsets`` from ``base``; invalid rows and padding 0."""
    dim = tl.arange(0, HEAD_DIM_PAD)
    ptrs = base + offsets[:, None] + dim[None, :]
    rows = tl.load(ptrs, mask=valid[:, None] & (dim[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        rows = rows.to(tl.float32)
    return rows


@triton.jit
def _decode_step(acc, l_i, m_i, q, b, h, q_pos, row_valid, first_kv, kv_first, kv_len, K_head, V_head, BLOCK_TABLE,
                 stride_tb, stride_kp, stride_ks, stride_vp, stride_vs, sm_scale$tensor_args, PAGED: tl.constexpr,
                 PAGE_SIZE: tl.constexpr, RING_SLOTS: tl.constexpr, IS_FULL_TILE: tl.constexpr):
    """One online-softmax update over DECODE_CHUNK_N absolute kv positions from ``first_kv``."""
    kv_pos = first_kv + tl.arange(0, DECODE_CHUNK_N)
    kv_valid = (kv_pos < kv_len) & (kv_pos >= kv_first)
    kv_tok = tl.where(kv_valid, kv_pos, -1)
    k = _load_cache(K_head, _cache_rows(b, kv_pos, kv_valid, BLOCK_TABLE, stride_tb, stride_kp, stride_ks, PAGED,
                                        PAGE_SIZE, RING_SLOTS), kv_valid)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    s = _scores(qk, b, h[:, None], q_pos[:, None], kv_tok[None, :], kv_valid[None, :], sm_scale$tensor_args, 0,
                IS_FULL_TILE, True)
    s = tl.where(row_valid[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet keeps p = 0
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_cache(V_head, _cache_rows(b, kv_pos, kv_valid, BLOCK_TABLE, stride_tb, stride_vp, stride_vs, PAGED,
                                        PAGE_SIZE, RING_SLOTS), kv_valid)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _decode(Q, K, V, O_PART, LSE_PART, stride_qb, stride_qh, stride_qn, stride_kp, stride_ks, stride_kh, stride_vp,
            stride_vs, stride_vh, Q_OFFSETS, KV_LENS, BLOCK_TABLE, stride_tb, LIST_START, LIST_FULL, LIST_INDEX,
            GROUPS, batch, n_slots, n_splits, sm_scale$tensor_args, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
            RING_SLOTS: tl.constexpr):
    """Partial O and LSE of one split of the list of one slot, for DECODE_ROWS packed rows."""
    split = tl.program_id(0) // n_slots
    slot = tl.program_id(0) - split * n_slots
    program = tl.program_id(1)
    rb = program % ROW_BLOCKS
    b = program // (ROW_BLOCKS * HEAD_PACKS)
    pack = program // ROW_BLOCKS - b * HEAD_PACKS
    h0 = pack * PACK
    kv_head = (h0 // GQA_GROUP).to(tl.int64)

    # the packed rows: query i of head h0 + g at row i * PACK + g, at absolute position q_offset + i
    r = rb * DECODE_ROWS + tl.arange(0, DECODE_ROWS)
    i = r // PACK
    h = h0 + r % PACK
    q_offset = tl.load(Q_OFFSETS + b)
    kv_len = tl.load(KV_LENS + b)
    if RING_SLOTS > 0:
        kv_first = tl.maximum(kv_len - RING_SLOTS, 0)
    else:
        kv_first = 0
    q_tile = (q_offset + (rb * DECODE_ROWS) // PACK) // BLOCK_M + slot
    in_tile = (q_offset + i) // BLOCK_M == q_tile
    row_valid = (r < PACK * N_Q) & in_tile
    q_pos = tl.where(row_valid, q_offset + i, -1)

    # this slot's list, cut into n_splits chunks of equal length: entries [lo, hi), FULL ones below full_end
    row = ((tl.load(GROUPS + pack) * batch + b) * ROW_BLOCKS + rb) * n_slots + slot
    start = tl.load(LIST_START + row)
    end = tl.load(LIST_START + row + 1)
    full_end = start + tl.load(LIST_FULL + row)
    per_split = (end - start + n_splits - 1) // n_splits
    lo = tl.minimum(start + split * per_split, end)
    hi = tl.minimum(lo + per_split, end)

    dim = tl.arange(0, HEAD_DIM_PAD)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h[:, None].to(tl.int64) * stride_qh + i[:, None] * stride_qn + dim
    q = tl.load(q_ptrs, mask=(r < PACK * N_Q)[:, None] & (dim[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K_head = K + kv_head * stride_kh
    V_head = V + kv_head * stride_vh

    m_i = tl.full([DECODE_ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([DECODE_ROWS], tl.float32)
    acc = tl.zeros([DECODE_ROWS, HEAD_DIM_PAD], tl.float32)
    # -- FULL tiles: no predicate --
    for step in range(lo * DECODE_CHUNKS, tl.minimum(hi, full_end) * DECODE_CHUNKS):
        tile = step // DECODE_CHUNKS
        first_kv = tl.load(LIST_INDEX + tile) * BLOCK_N + (step - tile * DECODE_CHUNKS) * DECODE_CHUNK_N
        acc, l_i, m_i = _decode_step(acc, l_i, m_i, q, b, h, q_pos, row_valid, first_kv, kv_first, kv_len, K_head,
                                     V_head, BLOCK_TABLE, stride_tb, stride_kp, stride_ks, stride_vp, stride_vs,
                                     sm_scale$tensor_args, PAGED, PAGE_SIZE, RING_SLOTS, IS_FULL_TILE=True)
    # -- PARTIAL tiles: predicate inlined below --
    for step in range(tl.maximum(lo, full_end) * DECODE_CHUNKS, hi * DECODE_CHUNKS):
        tile = step // DECODE_CHUNKS
        first_kv = tl.load(LIST_INDEX + tile) * BLOCK_N + (step - tile * DECODE_CHUNKS) * DECODE_CHUNK_N
        acc, l_i, m_i = _decode_step(acc, l_i, m_i, q, b, h, q_pos, row_valid, first_kv, kv_first, kv_len, K_head,
                                     V_head, BLOCK_TABLE, stride_tb, stride_kp, stride_ks, stride_vp, stride_vs,
                                     sm_scale$tensor_args, PAGED, PAGE_SIZE, RING_SLOTS, IS_FULL_TILE=False)

    # -- epilogue: this (split, slot)'s partial; a row that saw no allowed key gives 0 and lse -inf --
    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    # O_PART [n_splits * n_slots, B, N_HEADS, N_Q, HEAD_DIM] fp32 contiguous, LSE_PART without HEAD_DIM
    row_out = ((tl.program_id(0).to(tl.int64) * batch + b) * N_HEADS + h) * N_Q + i
    stored = r < PACK * N_Q
    tl.store(O_PART + row_out[:, None] * HEAD_DIM + dim[None, :], out, mask=stored[:, None] & (dim[None, :] < HEAD_DIM))
    tl.store(LSE_PART + row_out, lse, mask=stored)
'''

MERGE = '''\
# -- merge: the (split, slot) partials by log-sum-exp ------------------------------------------------


@triton.jit
def _merge(O_PART, LSE_PART, OUT, LSE, n_partials, n_rows):
    """out = sum_p exp(lse_p - lse) out_p, lse = logsumexp_p lse_p over MERGE_ROWS rows of [B * H * N_Q]
    (tables.merge_lse's formula, fused); a row no partial saw stays 0 with lse -inf."""
    rows = tl.program_id(0) * MERGE_ROWS + tl.arange(0, MERGE_ROWS)
    valid = rows < n_rows
    dim = tl.arange(0, HEAD_DIM_PAD)
    m = tl.full([MERGE_ROWS], float("-inf"), tl.float32)
    for p in range(n_partials):
        m = tl.maximum(m, tl.load(LSE_PART + p * n_rows + rows, mask=valid, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([MERGE_ROWS], tl.float32)
    acc = tl.zeros([MERGE_ROWS, HEAD_DIM_PAD], tl.float32)
    for p in range(n_partials):
        weight = tl.exp(tl.load(LSE_PART + p * n_rows + rows, mask=valid, other=float("-inf")) - m_safe)
        part = tl.load(O_PART + (p * n_rows + rows)[:, None].to(tl.int64) * HEAD_DIM + dim[None, :],
                       mask=valid[:, None] & (dim[None, :] < HEAD_DIM), other=0.0)
        total += weight
        acc += weight[:, None] * part
    seen = total > 0.0
    total_safe = tl.where(seen, total, 1.0)
    out = acc / total_safe[:, None]
    tl.store(OUT + rows[:, None].to(tl.int64) * HEAD_DIM + dim[None, :], out.to(OUT.dtype.element_ty),
             mask=valid[:, None] & (dim[None, :] < HEAD_DIM))
    tl.store(LSE + rows, tl.where(seen, m_safe + tl.log(total_safe), float("-inf")), mask=valid)
'''
