"""Forward attention kernel for Hopper (sm_90) in Gluon, with softmax overlapped with wgmma.

Same contract as triton_forward.attention_forward_kernel (varlen, bottom-right causal, lse out,
GQA, one program per (q tile, q head) from the shared tile schedule), but written in Gluon,
Triton's explicit-layout dialect, for one reason: plain Triton (3.6 on our GPU machine) waits
for every score matmul before touching its result and never lets the exponentials of one kv
tile run while the tensor cores work on another. Here each wgmma is issued asynchronously and
waited for explicitly, in the order FlashAttention-3 calls intra-warpgroup pipelining:

    issue S_j = Q K_j^T            (async)
    rescale O by alpha_{j-1}; issue O += P_{j-1} V_{j-1}   (async)
    wait until only that last one is in flight -> S_j is ready
    softmax of S_j -> P_j, alpha_j   (runs while the tensor cores do P_{j-1} V_{j-1})
    wait for O; both warpgroups sync; refill the freed K and V slots by TMA

K and V stream through two-slot rings of segment-bounded TMA descriptors (gluon_tma.py),
so rows past a segment's end read as zeros and the output store never crosses into the next
document. GPU only: the launcher uses it on sm_90 devices (CI only compiles it for sm_90,
tests/test_flash_attn_sm90_compile.py); the Triton kernel stays the path for everything else.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from kernels.flash_attn.gluon_tile_ranges import (
    keys_of_query_tile,
    query_program,
    segment_extent,
)
from kernels.flash_attn.gluon_tma import (
    cta_barrier,
    load_tile,
    segment_coord,
    tma_load,
    tma_store,
)


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale_log2, cols, rows, n, diag,
                  MASKED: gl.constexpr, CAUSAL: gl.constexpr):
    """Online-softmax update for one score tile (unscaled, fp32): returns p, m, l, alpha."""
    if MASKED:
        keep = gl.expand_dims(cols < n, 0)
        if CAUSAL:
            keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1) + diag)
        s = gl.where(keep, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale_log2)
    # rows that have seen no key keep m = -inf; shift by 0 there to avoid inf - inf
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(s * qk_scale_log2 - gl.expand_dims(m_safe, 1))
    alpha = gl.exp2(m_i - m_safe)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit(do_not_specialize=["stride_lse_h", "num_slots", "group"])
def gluon_attention_forward_kernel(
    Q_DESC, K_DESC, V_DESC, O_DESC, LSE,
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2,  # softmax_scale * log2(e)
    stride_lse_h, num_slots, group,
    HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr,
    CAUSAL: gl.constexpr,
    num_warps: gl.constexpr,
):
    dtype: gl.constexpr = Q_DESC.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    pid = gl.program_id(0)
    slot, head = query_program(pid, num_slots, group)
    seg = gl.load(SCHEDULE + 2 * slot)
    if seg < 0:
        return
    tile = gl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    kv_head = head // group
    row0 = tile * BLOCK_M

    diag, full_hi, hi = keys_of_query_tile(row0, m, n, BLOCK_M, CAUSAL)
    num_full = full_hi // BLOCK_N  # tiles every row sees whole: no mask
    num_tiles = (hi + BLOCK_N - 1) // BLOCK_N

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    k_ring = gl.allocate_shared_memory(dtype, [2] + K_DESC.block_type.shape, K_DESC.layout)
    v_ring = gl.allocate_shared_memory(dtype, [2] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    mbarrier.expect(q_bar, Q_DESC.block_type.nbytes)
    tma_load(Q_DESC, segment_coord(q_start, m, row0, head), q_bar, q_smem)
    for i in gl.static_range(2):
        if i < num_tiles:
            load_tile(K_DESC, k_bars, k_ring, i, k_start, n, i * BLOCK_N, kv_head)
            load_tile(V_DESC, v_bars, v_ring, i, k_start, n, i * BLOCK_N, kv_head)

    rows = row0 + gl.arange(0, BLOCK_M, layout=s_rows)
    offs_n = gl.arange(0, BLOCK_N, layout=s_cols)
    q = q_smem.reshape([BLOCK_M, HEAD_DIM])
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([BLOCK_M], gl.float32, s_rows)
    p = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    alpha = gl.full([BLOCK_M], 1.0, gl.float32, s_rows)
    mbarrier.wait(q_bar, 0)

    if num_tiles > 0:
        # tile 0: nothing to overlap with yet
        mbarrier.wait(k_bars.index(0), 0)
        s = warpgroup_mma(q, k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), zero_s,
                          use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[s])
        if num_full > 0:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, offs_n, rows, n, diag, False, CAUSAL)
        else:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, offs_n, rows, n, diag, True, CAUSAL)
        # both warpgroups are done with K_0: its slot takes K_2
        cta_barrier()
        if 2 < num_tiles:
            load_tile(K_DESC, k_bars, k_ring, 0, k_start, n, 2 * BLOCK_N, kv_head)

    for j in range(1, num_tiles):
        cur = j % 2
        prev = 1 - cur
        mbarrier.wait(k_bars.index(cur), (j // 2) & 1)
        s_tok = warpgroup_mma(q, k_ring.index(cur).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), zero_s,
                              use_acc=False, is_async=True)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(v_bars.index(prev), ((j - 1) // 2) & 1)
        o_tok = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])
        # the exponentials of tile j run while the tensor cores multiply P_{j-1} V_{j-1}
        if j < num_full:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, j * BLOCK_N + offs_n, rows, n, diag,
                                               False, CAUSAL)
        else:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, j * BLOCK_N + offs_n, rows, n, diag,
                                               True, CAUSAL)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
        # both warpgroups are done with K_j and V_{j-1}: refill those slots
        cta_barrier()
        if j + 2 < num_tiles:
            load_tile(K_DESC, k_bars, k_ring, cur, k_start, n, (j + 2) * BLOCK_N, kv_head)
        if j + 1 < num_tiles:
            load_tile(V_DESC, v_bars, v_ring, prev, k_start, n, (j + 1) * BLOCK_N, kv_head)

    if num_tiles > 0:
        last = (num_tiles - 1) % 2
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(v_bars.index(last), ((num_tiles - 1) // 2) & 1)
        o_tok = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))

    # rows that see no key (more queries than keys under the causal mask): o = 0, lse = -inf
    l_o = gl.convert_layout(l_i, o_rows)
    seen = l_o > 0.0
    o = acc / gl.expand_dims(gl.where(seen, l_o, 1.0), 1)
    m_o = gl.convert_layout(m_i, o_rows)
    lse = gl.where(seen, (m_o + gl.log2(gl.where(seen, l_o, 1.0))) * 0.6931471805599453, float("-inf"))
    rows_o = row0 + gl.arange(0, BLOCK_M, layout=o_rows)
    gl.store(LSE + head.to(gl.int64) * stride_lse_h + q_start + rows_o, lse, mask=rows_o < m)
    # q's tile is free now (every score matmul has finished): stage o there for the TMA store
    q.store(o.to(dtype))
    fence_async_shared()
    tma_store(O_DESC, segment_coord(q_start, m, row0, head), q_smem)
    tma.store_wait(0)
