"""Forward Triton kernel: varlen (causal, bottom-right) attention with log-sum-exp output.

One program = one q tile of one segment for one q head; it streams the segment's K/V tiles
with the online softmax. The kv loop is split in two: tiles every row of the q tile sees
completely run without any mask; only the few tiles that straddle the causal diagonal or the
segment's end pay for the mask. Scores live in the log2 domain (scale folded with log2(e)) so
the exponentials are exp2; the row max is taken on the unscaled scores and the scale applied
inside the exponent's FMA, one multiply per score fewer. lse is written in natural log, as the
public contract says.

USE_TMA (GPU, sm_90+): q, K/V and o move through segment-bounded TMA descriptors
(segment_tma.py): bulk async copies that hold no per-thread address registers. With Triton 3.6
the pointer version of the 128x128 tile spills ~5 KB per thread; this one fits in registers.
Rows past the segment end read as zeros and are not written, as with masked pointer loads.
"""
import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested, load_kernels

# the helper files built in the same mode as this one (see distca_kernels/triton_loader.py)
tile_ranges = load_kernels("distca_kernels.flash_attn.tile_ranges", interpreter_requested())
segment_tma = load_kernels("distca_kernels.flash_attn.segment_tma", interpreter_requested())


@triton.jit
def _attend_tile(acc, m_i, l_i, q, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head, offs_m, offs_n, diag,
                 qk_scale_log2, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
                 CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """The online softmax over one K/V tile: returns the updated (acc, m_i, l_i). MASKED for
    the tiles on the diagonal or past the segment end, the others need no mask."""
    col_ok = None
    if MASKED:
        cols = start_n + offs_n
        col_ok = cols < n
    k = segment_tma.load_key_rows(K_DESC, k_ptrs, k_start, n, start_n, kv_head, col_ok, BLOCK_N, HEAD_DIM,
                                  MASKED, USE_TMA)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale_log2)
        # a row that has seen no key yet keeps m = -inf; shift by 0 instead to avoid inf - inf
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale_log2)
        m_shift = m_new
    p = tl.exp2(s * qk_scale_log2 - m_shift[:, None])
    alpha = tl.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = segment_tma.load_key_rows(V_DESC, v_ptrs, k_start, n, start_n, kv_head, col_ok, BLOCK_N, HEAD_DIM,
                                  MASKED, USE_TMA)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# sizes that vary call to call stay unspecialized, so a new batch shape never recompiles
@triton.jit(do_not_specialize=["stride_lse_h", "num_slots", "group"])
def attention_forward_kernel(
    Q, K, V, O, LSE,
    Q_DESC, K_DESC, V_DESC, O_DESC,  # segment descriptors (the tensors themselves when USE_TMA is off)
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2,  # softmax_scale * log2(e)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_lse_h,
    num_slots,
    group,  # q heads per kv head (runtime: one compiled kernel serves every GQA ratio)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
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

    # 64-bit segment bases: total_tokens * heads * dim can pass 2**31 at long context
    q_base = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
    k_base = K + k_start.to(tl.int64) * stride_kt + kv_head * stride_kh
    v_base = V + k_start.to(tl.int64) * stride_vt + kv_head * stride_vh
    if USE_TMA:
        q = segment_tma.load_segment_rows(Q_DESC, q_start, m, row0, head, BLOCK_M, HEAD_DIM)
    else:
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    diag, full_hi, hi = tile_ranges.keys_of_query_tile(row0, m, n, BLOCK_M, CAUSAL)
    full_end = (full_hi // BLOCK_N) * BLOCK_N

    # phase 1: K/V tiles seen entirely by every row of this q tile (no mask)
    k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head,
                                     offs_m, offs_n, diag, qk_scale_log2, BLOCK_N, HEAD_DIM, False, CAUSAL,
                                     DOT_PRECISION, USE_TMA)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt

    # phase 2: tiles on the diagonal or past the segment end (masked)
    k_ptrs = k_base + full_end.to(tl.int64) * stride_kt + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + full_end.to(tl.int64) * stride_vt + offs_n[:, None] * stride_vt + offs_d[None, :]
    for start_n in range(full_end, hi, BLOCK_N):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, K_DESC, V_DESC, k_ptrs, v_ptrs, k_start, n, start_n, kv_head,
                                     offs_m, offs_n, diag, qk_scale_log2, BLOCK_N, HEAD_DIM, True, CAUSAL,
                                     DOT_PRECISION, USE_TMA)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt

    # rows that see no key (more queries than keys under the causal mask): o = 0, lse = -inf
    seen = l_i > 0.0
    o = (acc / tl.where(seen, l_i, 1.0)[:, None]).to(O.dtype.element_ty)
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    if USE_TMA:
        segment_tma.store_segment_rows(O_DESC, q_start, m, row0, head, o, BLOCK_M, HEAD_DIM)
    else:
        o_base = O + q_start.to(tl.int64) * stride_ot + head * stride_oh
        tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], o, mask=row_ok[:, None])
    tl.store(LSE + head.to(tl.int64) * stride_lse_h + q_start + offs_m, lse, mask=row_ok)
