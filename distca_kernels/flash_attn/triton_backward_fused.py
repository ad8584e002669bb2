"""Fused backward Triton kernel (opt-in): dK, dV and dQ from one recomputation of P.

The default backward (triton_backward.py) recomputes P twice, once per kv tile for dK/dV and
once per q tile for dQ: 7 tile matmuls for the 5 a backward needs. Here one program per kv
tile computes all five and adds its share of dQ,
    dQ_i += scale * sum_j dS_ij K_j,
into an fp32 buffer with atomic adds, as FlashAttention-2/3 do; dQ's rounding then depends on
the order programs finish. It is selected by setting AttentionConfigs.fused. On the H100
with Triton 3.6 it measured ~25% slower than the two-kernel pair (register spills with dK,
dV and the dQ tile live at once, plus the reduce traffic; benchmarks/results/
attention_h100.json, "sweep"), so it is not the default; it stays, tested, for Triton
releases or GPUs where that balance differs.

Two ways to move q/dO in and dQ out, chosen by USE_TMA (a GPU-only constexpr):
  - pointer loads (cp.async) and per-element fp32 `atomic_add`; the interpreter runs this;
  - on sm_90+, segment-bounded TMA descriptors (segment_tma.py): bulk async loads of the q/dO
    tiles and one bulk reduce-add of the dQ tile per step (cp.reduce.async.bulk), which frees
    the registers pointer math holds and turns 8K scalar atomics per step into one transfer.
Either way rows past the segment end read as zeros and are never written.

P = exp(S - lse) and dS = P * (dP - delta) with delta = rowsum(dO * O) - dlse, as in
triton_backward.py, which also holds the delta kernel this one relies on.
"""
import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested, load_kernels

_ranges = load_kernels("distca_kernels.flash_attn.tile_ranges", interpreter_requested())
segment_extent = _ranges.segment_extent
queries_of_key_tile = _ranges.queries_of_key_tile
_tma = load_kernels("distca_kernels.flash_attn.segment_tma", interpreter_requested())
load_segment_rows = _tma.load_segment_rows
load_query_and_grad_rows = _tma.load_query_and_grad_rows
add_segment_rows = _tma.add_segment_rows


@triton.jit
def _tile_step(k, v, q, do, lse2, delta, keep, dk, dv, qk_scale_log2, softmax_scale,
               MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One (kv tile, q tile) pair: updates dk/dv in place, returns them and the dQ tile."""
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [keys, queries]
    # scale folded into the exponent's FMA; masked-out or past-the-end queries have lse = +inf
    p_t = tl.exp2(s_t * qk_scale_log2 - lse2[None, :])
    if MASKED:
        p_t = tl.where(keep, p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    if MASKED:
        # where, not just p = 0: a row that sees no key may carry a non-finite delta
        ds_t = tl.where(keep, ds_t, 0.0)
    ds = ds_t.to(q.dtype)
    dk = tl.dot(ds, q, dk, input_precision=DOT_PRECISION)
    dq = tl.dot(tl.trans(ds), k, input_precision=DOT_PRECISION) * softmax_scale
    return dk, dv, dq


@triton.jit(do_not_specialize=["stride_lse_h", "num_slots"])
def attention_backward_fused_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
    Q_DESC, DO_DESC, DQ_DESC,  # segment descriptors (the tensors themselves when USE_TMA is off)
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    stride_dqt, stride_dqh,
    stride_lse_h,
    num_slots,
    GROUP: tl.constexpr,  # q heads per kv head; constexpr: a runtime head loop spills registers
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,  # keys owned by the program
    BLOCK_M: tl.constexpr,  # queries per inner step
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    LOG2E: tl.constexpr = 1.4426950408889634
    pid = tl.program_id(0)
    # one kv head's tiles after another's (tile_order.py says why)
    slot = pid % num_slots
    kv_head = pid // num_slots
    seg = tl.load(SCHEDULE + 2 * slot)
    if seg < 0:
        return
    tile = tl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    col0 = tile * BLOCK_N

    offs_n = col0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < n
    # keys past the end load as 0: their dS row multiplies k = 0 in dQ and is never stored
    k = tl.load(K + k_start.to(tl.int64) * stride_kt + kv_head * stride_kh
                + offs_n[:, None] * stride_kt + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(V + k_start.to(tl.int64) * stride_vt + kv_head * stride_vh
                + offs_n[:, None] * stride_vt + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag, lo, full_lo, masked_hi = queries_of_key_tile(col0, m, n, BLOCK_N, BLOCK_M, CAUSAL)
    # unmasked tiles end at the last q tile that lies wholly inside the segment
    full_hi = tl.maximum(full_lo + ((m - full_lo) // BLOCK_M) * BLOCK_M, full_lo)
    num_diag = tl.maximum(masked_hi - lo + BLOCK_M - 1, 0) // BLOCK_M
    num_tail = tl.maximum(m - full_hi + BLOCK_M - 1, 0) // BLOCK_M  # 0 or 1

    for g in range(GROUP):
        head = kv_head * GROUP + g
        q_base = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
        do_base = DO + q_start.to(tl.int64) * stride_dot + head * stride_doh
        dq_base = DQ_ACC + q_start.to(tl.int64) * stride_dqt + head * stride_dqh
        lse_base = LSE + head.to(tl.int64) * stride_lse_h + q_start
        delta_base = DELTA + head.to(tl.int64) * stride_lse_h + q_start

        # q tiles on the diagonal, then the partial tail tile (if any): masked
        for i in range(0, num_diag + num_tail):
            start_m = tl.where(i < num_diag, lo + i * BLOCK_M, full_hi)
            rows = start_m + offs_m
            row_ok = rows < m
            # rows past the end: q = dO = 0 and lse = +inf, so P = dS = 0 there
            q, do = load_query_and_grad_rows(Q_DESC, DO_DESC, q_base, do_base, q_start, m, start_m, head, rows, row_ok,
                                             offs_d, stride_qt, stride_dot, BLOCK_M, HEAD_DIM, USE_TMA)
            lse2 = tl.load(lse_base + rows, mask=row_ok, other=float("inf")) * LOG2E
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
            keep = row_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= rows[None, :] + diag)
            dk, dv, dq = _tile_step(k, v, q, do, lse2, delta, keep, dk, dv, qk_scale_log2, softmax_scale,
                                    True, DOT_PRECISION)
            if USE_TMA:
                add_segment_rows(DQ_DESC, q_start, m, start_m, head, dq, BLOCK_M, HEAD_DIM)
            else:
                tl.atomic_add(dq_base + rows[:, None] * stride_dqt + offs_d[None, :], dq,
                              mask=row_ok[:, None], sem="relaxed")

        # q tiles wholly inside the segment whose rows see every key of this tile: no mask
        for start_m in range(full_lo, full_hi, BLOCK_M):
            rows = start_m + offs_m
            lse2 = tl.load(lse_base + rows) * LOG2E
            delta = tl.load(delta_base + rows)
            if USE_TMA:
                q = load_segment_rows(Q_DESC, q_start, m, start_m, head, BLOCK_M, HEAD_DIM)
                do = load_segment_rows(DO_DESC, q_start, m, start_m, head, BLOCK_M, HEAD_DIM)
            else:
                q = tl.load(q_base + rows[:, None] * stride_qt + offs_d[None, :])
                do = tl.load(do_base + rows[:, None] * stride_dot + offs_d[None, :])
            dk, dv, dq = _tile_step(k, v, q, do, lse2, delta, None, dk, dv, qk_scale_log2, softmax_scale,
                                    False, DOT_PRECISION)
            if USE_TMA:
                add_segment_rows(DQ_DESC, q_start, m, start_m, head, dq, BLOCK_M, HEAD_DIM)
            else:
                tl.atomic_add(dq_base + rows[:, None] * stride_dqt + offs_d[None, :], dq, sem="relaxed")

    dk = dk * softmax_scale
    tl.store(DK + k_start.to(tl.int64) * stride_dkt + kv_head * stride_dkh
             + offs_n[:, None] * stride_dkt + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + k_start.to(tl.int64) * stride_dvt + kv_head * stride_dvh
             + offs_n[:, None] * stride_dvt + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=key_ok[:, None])
