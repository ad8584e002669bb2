"""Backward Triton kernels: delta preprocessing, dK/dV (one program per kv tile), dQ (per q tile).

With P = exp(S - lse) recomputed from the saved lse, the gradient of the scores is
    dS = P * (dP - delta),   delta_i = rowsum(dO_i * O_i) - dlse_i,
where the dlse term is the gradient arriving through the lse output (d lse_i / d S_ij = P_ij),
which ring and allgather attention need because they merge partial results by lse.

dK/dV and dQ are separate kernels that each recompute P, instead of one kernel adding dQ with
atomics: no fp32 atomics traffic, a deterministic result, and no dQ accumulation buffer. A
dK/dV program owns one kv tile and loops over every q head of its GQA group, so grouped heads
need no reduction afterwards either.

As in the forward kernel, each loop is split into unmasked tiles and the few masked ones.
With USE_TMA (GPU, sm_90+) the tiles each program streams (q/dO for dK/dV, K/V for dQ) come
through segment-bounded TMA descriptors (segment_tma.py): rows past the segment end read as
zeros, as the masked pointer loads give, without the per-thread address registers.

The one-kernel backward with dQ added into an fp32 buffer exists only in Gluon, for Hopper
(gluon_backward_fused.py); a Triton version of it measured slower than this pair on the H100
and was removed (block_config.AttentionConfigs says by how much).
"""
import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested, load_kernels

# the helper files built in the same mode as this one (see distca_kernels/triton_loader.py)
tile_ranges = load_kernels("distca_kernels.flash_attn.tile_ranges", interpreter_requested())
segment_tma = load_kernels("distca_kernels.flash_attn.segment_tma", interpreter_requested())

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _load_head_rows(X, start, head, stride_t, stride_h, rows, row_ok, offs_d):
    """Rows start + rows of one head of a [tokens, heads, dim] tensor; rows not ok read as 0."""
    return tl.load(X + start.to(tl.int64) * stride_t + head * stride_h
                   + rows[:, None] * stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)


@triton.jit
def _store_head_rows(X, start, head, stride_t, stride_h, rows, row_ok, offs_d, value):
    """value (cast to X's dtype) into rows start + rows of one head; rows not ok are skipped."""
    tl.store(X + start.to(tl.int64) * stride_t + head * stride_h
             + rows[:, None] * stride_t + offs_d[None, :], value.to(X.dtype.element_ty), mask=row_ok[:, None])


# sizes that vary call to call stay unspecialized, so a new batch shape never recompiles
@triton.jit(do_not_specialize=["total_q", "stride_dlse_h", "stride_delta_h"])
def attention_backward_delta_kernel(
    O, DO, DLSE, DELTA,
    total_q,
    stride_ot, stride_oh, stride_dot, stride_doh, stride_dlse_h, stride_delta_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    head = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = rows < total_q
    rows64 = rows.to(tl.int64)
    o = tl.load(O + rows64[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + rows64[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + head.to(tl.int64) * stride_dlse_h + rows, mask=ok, other=0.0)
    tl.store(DELTA + head.to(tl.int64) * stride_delta_h + rows, delta, mask=ok)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q_DESC, DO_DESC, q_base, do_base, lse_base, delta_base, q_start, m, start_m, head,
               offs_m, offs_n, offs_d, diag, qk_scale_log2, stride_qt, stride_dot, BLOCK_M: tl.constexpr,
               HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """One q tile's share of the kv tile's dK and dV (tiles transposed: [keys, queries]); returns
    the updated (dk, dv). MASKED for q tiles on the causal diagonal."""
    rows = start_m + offs_m
    row_ok = rows < m
    q, do = segment_tma.load_query_and_grad_rows(Q_DESC, DO_DESC, q_base, do_base, q_start, m, start_m, head, rows,
                                                 row_ok, offs_d, stride_qt, stride_dot, BLOCK_M, HEAD_DIM, USE_TMA)
    lse2 = tl.load(lse_base + rows, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale_log2
    if MASKED:
        # rows that see no key at all have lse = -inf; exp2 gives inf there, the mask drops it
        keep = offs_n[:, None] <= rows[None, :] + diag
        p_t = tl.where(keep, tl.exp2(s_t - lse2[None, :]), 0.0)
    else:
        p_t = tl.exp2(s_t - lse2[None, :])
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    if MASKED:
        # where, not just p = 0: a row that sees nothing may carry a non-finite delta
        ds_t = tl.where(keep, p_t * (dp_t - delta[None, :]), 0.0)
    else:
        ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["stride_lse_h", "num_slots"])
def attention_backward_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    Q_DESC, DO_DESC,  # segment descriptors (the tensors themselves when USE_TMA is off)
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    stride_lse_h,
    num_slots,
    GROUP: tl.constexpr,  # q heads per kv head; constexpr here: a runtime head loop spills registers
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,  # keys owned by the program
    BLOCK_M: tl.constexpr,  # queries per inner step
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    slot, kv_head, seg = tile_ranges.key_slot(SCHEDULE, num_slots)
    if seg < 0:
        return
    q_start, m, k_start, n, col0 = tile_ranges.key_tile(CU_Q, CU_K, SCHEDULE, slot, seg, BLOCK_N)

    offs_n = col0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < n
    k = _load_head_rows(K, k_start, kv_head, stride_kt, stride_kh, offs_n, key_ok, offs_d)
    v = _load_head_rows(V, k_start, kv_head, stride_vt, stride_vh, offs_n, key_ok, offs_d)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag, lo, full_lo, masked_hi = tile_ranges.queries_of_key_tile(col0, m, n, BLOCK_N, BLOCK_M, CAUSAL)

    # Rows past the segment end load q = dO = 0 (and lse = delta = 0): their P is 1 but every
    # product it enters is 0, so they add nothing. Keys past the end only reach rows of dK/dV
    # that are never stored.
    for g in range(GROUP):
        head = kv_head * GROUP + g
        q_base = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
        do_base = DO + q_start.to(tl.int64) * stride_dot + head * stride_doh
        lse_base = LSE + head.to(tl.int64) * stride_lse_h + q_start
        delta_base = DELTA + head.to(tl.int64) * stride_lse_h + q_start
        # q tiles on the diagonal: causal mask
        for start_m in range(lo, masked_hi, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_DESC, DO_DESC, q_base, do_base, lse_base, delta_base, q_start, m,
                                start_m, head, offs_m, offs_n, offs_d, diag, qk_scale_log2, stride_qt, stride_dot,
                                BLOCK_M, HEAD_DIM, True, DOT_PRECISION, USE_TMA)
        # q tiles whose rows see every key of this tile: no mask
        for start_m in range(full_lo, m, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_DESC, DO_DESC, q_base, do_base, lse_base, delta_base, q_start, m,
                                start_m, head, offs_m, offs_n, offs_d, diag, qk_scale_log2, stride_qt, stride_dot,
                                BLOCK_M, HEAD_DIM, False, DOT_PRECISION, USE_TMA)

    _store_head_rows(DK, k_start, kv_head, stride_dkt, stride_dkh, offs_n, key_ok, offs_d, dk * softmax_scale)
    _store_head_rows(DV, k_start, kv_head, stride_dvt, stride_dvh, offs_n, key_ok, offs_d, dv)


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head, offs_m, offs_n,
             diag, qk_scale_log2, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
             CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """One kv tile's share of the q tile's dQ; returns the updated dq. MASKED for the kv tiles
    on the diagonal or past the segment end."""
    col_ok = None
    if MASKED:
        cols = start_n + offs_n
        col_ok = cols < n
    k = segment_tma.load_key_rows(K_DESC, k_ptrs, k_start, n, start_n, kv_head, col_ok, BLOCK_N, HEAD_DIM,
                                  MASKED, USE_TMA)
    v = segment_tma.load_key_rows(V_DESC, v_ptrs, k_start, n, start_n, kv_head, col_ok, BLOCK_N, HEAD_DIM,
                                  MASKED, USE_TMA)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
    if MASKED:
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
    else:
        p = tl.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    if MASKED:
        ds = tl.where(keep, p * (dp - delta[:, None]), 0.0)
    else:
        ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit(do_not_specialize=["stride_lse_h", "num_slots", "group"])
def attention_backward_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    K_DESC, V_DESC,  # segment descriptors (the tensors themselves when USE_TMA is off)
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dqt, stride_dqh,
    stride_lse_h,
    num_slots,
    group,  # q heads per kv head (runtime: one compiled kernel serves every GQA ratio)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries owned by the program
    BLOCK_N: tl.constexpr,  # keys per inner step
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    slot, head, seg = tile_ranges.query_slot(SCHEDULE, num_slots, group)
    if seg < 0:
        return
    q_start, m, k_start, n, kv_head, row0 = tile_ranges.query_tile(CU_Q, CU_K, SCHEDULE, slot, seg, head, group,
                                                                   BLOCK_M)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < m
    q = _load_head_rows(Q, q_start, head, stride_qt, stride_qh, offs_m, row_ok, offs_d)
    do = _load_head_rows(DO, q_start, head, stride_dot, stride_doh, offs_m, row_ok, offs_d)
    lse2 = tl.load(LSE + head.to(tl.int64) * stride_lse_h + q_start + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + head.to(tl.int64) * stride_lse_h + q_start + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    diag, full_hi, hi = tile_ranges.keys_of_query_tile(row0, m, n, BLOCK_M, CAUSAL)
    full_end = (full_hi // BLOCK_N) * BLOCK_N

    k_base = K + k_start.to(tl.int64) * stride_kt + kv_head * stride_kh
    v_base = V + k_start.to(tl.int64) * stride_vt + kv_head * stride_vh
    # kv tiles every row of this q tile sees whole: no mask
    k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
    for start_n in range(0, full_end, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head, offs_m,
                      offs_n, diag, qk_scale_log2, BLOCK_N, HEAD_DIM, False, CAUSAL, DOT_PRECISION, USE_TMA)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt

    # kv tiles on the diagonal or past the segment end: masked
    k_ptrs = k_base + full_end.to(tl.int64) * stride_kt + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + full_end.to(tl.int64) * stride_vt + offs_n[:, None] * stride_vt + offs_d[None, :]
    for start_n in range(full_end, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head, offs_m,
                      offs_n, diag, qk_scale_log2, BLOCK_N, HEAD_DIM, True, CAUSAL, DOT_PRECISION, USE_TMA)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt

    _store_head_rows(DQ, q_start, head, stride_dqt, stride_dqh, offs_m, row_ok, offs_d, dq * softmax_scale)
