"""Row kernel texts (TVMScript) of one plan part for ``cuda``: forward, dQ, and dK/dV.

One thread per query row (forward, dQ) or key row (dK/dV), walking the part's CSR tile lists in the
layout's slot order, with fp32 scalar arithmetic: the same plan and predicate as the Triton kernels in
the simplest schedule (``blockIdx.y`` = batch x head, ``blockIdx.x`` = tile, ``threadIdx.x`` = row of
the tile). CPUs run the tile kernels of :mod:`maskir.codegen.tvm.tile_template`; both share
``COMMON_PARAMS``, ``COMMON_BUFFERS`` and ``KV_LIST``.

- forward: online softmax, natural exp; the running max rises only when a score exceeds it, so the
  accumulator is rescaled once per new maximum; -inf scores are skipped. A row with no allowed key gives
  output 0 and lse -inf.
- dQ: dQ = scale * sum_kv dS K with P = exp(s - lse), dS = P (dO.V - delta) (times d score_mod / d score).
- dK/dV: each key row loops over the GQA_GROUP query heads of its kv head and their transposed lists:
  dV = sum_q P dO, dK = scale * sum_q dS Q. No atomics: every output row has one owner. Both backward
  kernels compute a pair's P and dS with the same ``PAIR_GRADIENT`` statements.

FULL tiles skip the predicate (only padding slots, token -1, are skipped); PARTIAL tiles evaluate it.
Placeholders (``string.Template``): ``$part``, the plan's numbers, ``$outer``/``$tile``/``$row`` (loop
heads of the target), ``$tensor_params``/``$tensor_buffers`` (runtime tensors), the shared blocks
(``$walk`` over a tile list with each kernel's ``$pair`` step, ``$kv_list``, ``$pair_gradient``), and the
rendered ``$allowed``, ``$score`` and ``$score_grad`` statement blocks (each block indented like its
placeholder).

A score_mod that reads float tensors adds ``$table_params``/``$table_buffer`` to dQ and ``$table_grad``
(``TABLE_GRAD`` per trainable load, ``codegen.common.table_grad``) to its pair step: when ``train_tables``
is set, TG[row, entry] += dS * d score_mod / d load, where ``row`` is the unit of work that owns it (a
batch x head of the parallel loop on llvm, a thread on cuda); the launcher sums the rows in order. No
atomics, so the sums are the same on every run.
"""

COMMON_PARAMS = """\
q_: T.handle, k_: T.handle, v_: T.handle, lse_: T.handle, head_table_: T.handle, q_tokens_: T.handle,
            kv_tokens_: T.handle"""

COMMON_BUFFERS = """\
        T.func_attr({"tirx.noalias": True})
        batch = T.int32()
        n_head_table = T.int32()
        n_start = T.int32()
        n_full = T.int32()
        n_index = T.int32()
        Q = T.match_buffer(q_, (batch, $heads, $n_q, $head_dim), "$dtype")
        K = T.match_buffer(k_, (batch, $kv_heads, $n_kv, $head_dim), "$dtype")
        V = T.match_buffer(v_, (batch, $kv_heads, $n_kv, $head_dim), "$dtype")
        LSE = T.match_buffer(lse_, (batch, $heads, $n_q), "float32")
        HEAD_TABLE = T.match_buffer(head_table_, (n_head_table,), "int32")
        Q_TOKENS = T.match_buffer(q_tokens_, ($q_slots,), "int32")
        KV_TOKENS = T.match_buffer(kv_tokens_, ($kv_slots,), "int32")
$tensor_buffers"""

FORWARD = """\
    @T.prim_func
    def fwd_$part($common_params, o_: T.handle, kv_start_: T.handle, kv_full_: T.handle,
            kv_index_: T.handle$tensor_params, sm_scale: T.float32):
$common_buffers
        O = T.match_buffer(o_, (batch, $heads, $n_q, $head_dim), "float32")
        KV_START = T.match_buffer(kv_start_, (n_start,), "int32")
        KV_FULL = T.match_buffer(kv_full_, (n_full,), "int32")
        KV_INDEX = T.match_buffer(kv_index_, (n_index,), "int32")
        for bh in $outer:
            for qt in $q_tile:
                for r in $q_row:
                    acc = T.decl_buffer(($head_dim,), "float32", scope="local")
                    stat = T.decl_buffer((3,), "float32", scope="local")  # running max, running sum, q.k
                    keep = T.decl_buffer((1,), "int32", scope="local")
                    b = bh // $heads
                    h = bh % $heads
                    q = Q_TOKENS[qt * $block_q + r]
                    if q >= 0:
                        $kv_list
                        stat[0] = T.float32("-inf")
                        stat[1] = T.float32(0)
                        for d in T.serial($head_dim):
                            acc[d] = T.float32(0)
                        $walk
                        for d in T.serial($head_dim):
                            O[b, h, q, d] = T.if_then_else(stat[1] > T.float32(0), acc[d] / stat[1], T.float32(0))
                        LSE[b, h, q] = T.if_then_else(
                            stat[1] > T.float32(0), stat[0] + T.log(stat[1]), T.float32("-inf"))
"""

WALK = """\
for e in T.serial(start, end):
    for slot in T.serial($walk_block):
        $walk_token = $walk_tokens[$walk_index[e] * $walk_block + slot]
        keep[0] = T.Cast("int32", $walk_token >= 0)
        if $walk_token >= 0 and e >= full_end:
            $allowed
        if keep[0] != 0:
            $pair"""
"""The walk over a tile list, list entries [start, end) (FULL ones before full_end: no predicate there),
binding ``$walk_token`` (kv, or q in dK/dV) to each slot's token; padding slots (-1) are skipped."""

FORWARD_PAIR = """\
stat[2] = T.float32(0)
for d in T.serial($head_dim):
    stat[2] = stat[2] + T.Cast("float32", Q[b, h, q, d]) * T.Cast("float32", K[b, kvh, kv, d])
score = stat[2] * sm_scale
$score
if s > T.float32("-inf"):
    if s > stat[0]:
        alpha = T.exp(stat[0] - s)
        stat[1] = stat[1] * alpha
        for d in T.serial($head_dim):
            acc[d] = acc[d] * alpha
        stat[0] = s
    p = T.exp(s - stat[0])
    stat[1] = stat[1] + p
    for d in T.serial($head_dim):
        acc[d] = acc[d] + p * T.Cast("float32", V[b, kvh, kv, d])"""
"""Online softmax over one allowed pair: the accumulator is rescaled only when the running max rises."""

DQ_PAIR = """\
$pair_gradient
$table_grad
for d in T.serial($head_dim):
    grad[d] = grad[d] + ds * T.Cast("float32", K[b, kvh, kv, d])"""

DKDV_PAIR = """\
lse = LSE[b, h, q]
if lse > T.float32("-inf"):
    delta = DELTA[b, h, q]
    $pair_gradient
    for d in T.serial($head_dim):
        grad_v[d] = grad_v[d] + p * T.Cast("float32", DO[b, h, q, d])
        grad_k[d] = grad_k[d] + ds * T.Cast("float32", Q[b, h, q, d])"""

KV_LIST = """\
kvh = h // $gqa_group
group = HEAD_TABLE[h]
start = KV_START[group * ($n_q_tiles + 1) + qt]
end = KV_START[group * ($n_q_tiles + 1) + qt + 1]
full_end = start + KV_FULL[group * $n_q_tiles + qt]"""
"""The kv tile list of q tile ``qt`` for head ``h`` (forward and dQ): entries [start, end), FULL before full_end."""

PAIR_GRADIENT = """\
dots[0] = T.float32(0)
dots[1] = T.float32(0)
for d in T.serial($head_dim):
    dots[0] = dots[0] + T.Cast("float32", Q[b, h, q, d]) * T.Cast("float32", K[b, kvh, kv, d])
    dots[1] = dots[1] + T.Cast("float32", DO[b, h, q, d]) * T.Cast("float32", V[b, kvh, kv, d])
score = dots[0] * sm_scale
$score
p = T.exp(s - lse)
$score_grad
ds_mod = p * (dots[1] - delta)
ds = ds_mod * dmod"""
"""One allowed (q, kv) pair of the backward: P, dS of the modified score (``ds_mod``) and of the raw score
(``ds``); needs b, h, kvh, q, kv, lse and delta bound."""

DQ = """\
    @T.prim_func
    def dq_$part($common_params, do_: T.handle, delta_: T.handle, dq_: T.handle, kv_start_: T.handle,
            kv_full_: T.handle, kv_index_: T.handle$tensor_params, sm_scale: T.float32$table_params):
$common_buffers
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        DQ = T.match_buffer(dq_, (batch, $heads, $n_q, $head_dim), "float32")
        KV_START = T.match_buffer(kv_start_, (n_start,), "int32")
        KV_FULL = T.match_buffer(kv_full_, (n_full,), "int32")
        KV_INDEX = T.match_buffer(kv_index_, (n_index,), "int32")
        $table_buffer
        for bh in $outer:
            for qt in $q_tile:
                for r in $q_row:
                    grad = T.decl_buffer(($head_dim,), "float32", scope="local")
                    dots = T.decl_buffer((2,), "float32", scope="local")  # q.k, dO.v
                    keep = T.decl_buffer((1,), "int32", scope="local")
                    b = bh // $heads
                    h = bh % $heads
                    q = Q_TOKENS[qt * $block_q + r]
                    if q >= 0:
                        $kv_list
                        lse = LSE[b, h, q]
                        delta = DELTA[b, h, q]
                        for d in T.serial($head_dim):
                            grad[d] = T.float32(0)
                        if lse > T.float32("-inf"):
                            $walk
                        for d in T.serial($head_dim):
                            DQ[b, h, q, d] = grad[d] * sm_scale
"""

DKDV = """\
    @T.prim_func
    def dkdv_$part($common_params, do_: T.handle, delta_: T.handle, dk_: T.handle, dv_: T.handle,
            q_start_: T.handle, q_full_: T.handle, q_index_: T.handle$tensor_params, sm_scale: T.float32):
$common_buffers
        DO = T.match_buffer(do_, (batch, $heads, $n_q, $head_dim), "$dtype")
        DELTA = T.match_buffer(delta_, (batch, $heads, $n_q), "float32")
        DK = T.match_buffer(dk_, (batch, $kv_heads, $n_kv, $head_dim), "float32")
        DV = T.match_buffer(dv_, (batch, $kv_heads, $n_kv, $head_dim), "float32")
        Q_START = T.match_buffer(q_start_, (n_start,), "int32")
        Q_FULL = T.match_buffer(q_full_, (n_full,), "int32")
        Q_INDEX = T.match_buffer(q_index_, (n_index,), "int32")
        for bkh in $kv_outer:
            for kt in $kv_tile:
                for c in $kv_row:
                    grad_k = T.decl_buffer(($head_dim,), "float32", scope="local")
                    grad_v = T.decl_buffer(($head_dim,), "float32", scope="local")
                    dots = T.decl_buffer((2,), "float32", scope="local")  # q.k, dO.v
                    keep = T.decl_buffer((1,), "int32", scope="local")
                    b = bkh // $kv_heads
                    kvh = bkh % $kv_heads
                    kv = KV_TOKENS[kt * $block_kv + c]
                    if kv >= 0:
                        for d in T.serial($head_dim):
                            grad_k[d] = T.float32(0)
                            grad_v[d] = T.float32(0)
                        for g in T.serial($gqa_group):
                            h = kvh * $gqa_group + g
                            group = HEAD_TABLE[h]
                            start = Q_START[group * ($n_kv_tiles + 1) + kt]
                            end = Q_START[group * ($n_kv_tiles + 1) + kt + 1]
                            full_end = start + Q_FULL[group * $n_kv_tiles + kt]
                            $walk
                        for d in T.serial($head_dim):
                            DK[b, kvh, kv, d] = grad_k[d] * sm_scale
                            DV[b, kvh, kv, d] = grad_v[d]
"""

TABLE_PARAMS = ", tg_: T.handle, train_tables: T.int32"
TABLE_BUFFER = """\
n_tg_rows = T.int32()
TG = T.match_buffer(tg_, (n_tg_rows, $tg_entries), "float32")"""
TABLE_GRAD = """\
if train_tables != 0:
    $table_weight
    $table_entry
    if $entry_name >= 0:
        TG[$tg_row, $entry_name] = TG[$tg_row, $entry_name] + ds_mod * $weight_name"""
"""One trainable load's gradient: dS of the modified score times d score_mod / d load, into its entry."""
