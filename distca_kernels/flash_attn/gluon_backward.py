"""Backward attention kernels (dK/dV and dQ) for Hopper (sm_90) in Gluon, with the elementwise
work overlapped with wgmma.

Same contract and the same split as triton_backward.py (one program per kv tile for dK/dV,
looping over the q tiles of every q head of its GQA group; one per q tile for dQ; both
recompute P from the saved lse; no atomics, bitwise-reproducible), and the same reason for
Gluon as gluon_forward.py: plain Triton waits for each score matmul before using it, so the
exponentials and dS never run beside the tensor cores. Here the two matmuls that need only
loaded tiles are issued back to back and waited for one at a time:

  dK/dV, per q tile i:   issue S^T = K Q_i^T, dP^T = V dO_i^T
                         wait for S^T          -> P^T = exp2(S^T - lse)   (beside dP^T)
                         issue dV += P^T dO_i
                         wait for dP^T         -> dS^T = P^T (dP^T - delta)   (beside dV)
                         issue dK += dS^T Q_i; wait; refill the q/dO slot by TMA
  dQ, per kv tile j:     issue S = Q K_j^T, dP = dO V_j^T
                         wait for S            -> P                          (beside dP)
                         wait for dP           -> dS; issue dQ += dS K_j; wait; refill

Tiles stream through two-slot rings of segment-bounded TMA descriptors (gluon_tma.py): rows
past a segment's end read as zeros (their P is then 1 but q = dO = 0 there, so they add
nothing) and stores stop at the segment's end. GPU only: the launcher uses it on sm_90 devices
(CI only compiles it, tests/test_flash_attn_sm90_compile.py).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from distca_kernels.flash_attn.gluon_tile_ranges import (
    key_slot,
    key_tile_walk,
    keys_of_query_tile,
    query_slot,
    query_tile,
)
from distca_kernels.flash_attn.gluon_tma import (
    cta_barrier,
    load_step_rows,
    load_tile_pair,
    segment_coord,
    tma_load,
    tma_store,
)

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit(do_not_specialize=["stride_lse_h", "num_slots"])
def gluon_attention_backward_dkdv_kernel(
    K_DESC, V_DESC, Q_DESC, DO_DESC, DK_DESC, DV_DESC, LSE, DELTA,
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_lse_h, num_slots,
    GROUP: gl.constexpr,  # q heads per kv head
    HEAD_DIM: gl.constexpr,
    BLOCK_N: gl.constexpr,  # keys owned by the program
    BLOCK_M: gl.constexpr,  # queries per step
    CAUSAL: gl.constexpr,
    num_warps: gl.constexpr,
):
    dtype: gl.constexpr = Q_DESC.dtype
    st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    key_layout: gl.constexpr = gl.SliceLayout(1, st_layout)
    query_layout: gl.constexpr = gl.SliceLayout(0, st_layout)

    slot, kv_head, seg = key_slot(SCHEDULE, num_slots)
    if seg < 0:
        return
    q_start, m, k_start, n, col0, diag, lo, num_masked, per_head, steps = key_tile_walk(
        CU_Q, CU_K, SCHEDULE, slot, seg, BLOCK_N, BLOCK_M, GROUP, CAUSAL)

    k_smem = gl.allocate_shared_memory(dtype, K_DESC.block_type.shape, K_DESC.layout)
    v_smem = gl.allocate_shared_memory(dtype, V_DESC.block_type.shape, V_DESC.layout)
    q_ring = gl.allocate_shared_memory(dtype, [2] + Q_DESC.block_type.shape, Q_DESC.layout)
    do_ring = gl.allocate_shared_memory(dtype, [2] + DO_DESC.block_type.shape, DO_DESC.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qd_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(qd_bars.index(i), count=1)

    mbarrier.expect(kv_bar, K_DESC.block_type.nbytes + V_DESC.block_type.nbytes)
    tma_load(K_DESC, segment_coord(k_start, n, col0, kv_head), kv_bar, k_smem)
    tma_load(V_DESC, segment_coord(k_start, n, col0, kv_head), kv_bar, v_smem)
    for i in gl.static_range(2):
        if i < steps:
            load_step_rows(Q_DESC, DO_DESC, qd_bars, q_ring, do_ring, i, i, q_start, m, lo, per_head,
                           kv_head * GROUP, BLOCK_M)

    keys = col0 + gl.arange(0, BLOCK_N, layout=key_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=query_layout)
    k = k_smem.reshape([BLOCK_N, HEAD_DIM])
    v = v_smem.reshape([BLOCK_N, HEAD_DIM])
    zero_st = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout)
    dk = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, kv_layout))
    dv = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, kv_layout))
    mbarrier.wait(kv_bar, 0)

    for t in range(steps):
        cur = t % 2
        q_tile = t % per_head
        head = kv_head * GROUP + t // per_head
        start_m = lo + q_tile * BLOCK_M
        queries = start_m + offs_m
        query_ok = queries < m
        # past the segment end: lse = delta = 0 (P = 1) but q = dO = 0, so nothing is added
        lse2 = gl.load(LSE + head.to(gl.int64) * stride_lse_h + q_start + queries, mask=query_ok, other=0.0) * LOG2E
        delta = gl.load(DELTA + head.to(gl.int64) * stride_lse_h + q_start + queries, mask=query_ok, other=0.0)
        mbarrier.wait(qd_bars.index(cur), (t // 2) & 1)
        q = q_ring.index(cur).reshape([BLOCK_M, HEAD_DIM])
        do = do_ring.index(cur).reshape([BLOCK_M, HEAD_DIM])
        s_tok = warpgroup_mma(k, q.permute((1, 0)), zero_st, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(v, do.permute((1, 0)), zero_st, use_acc=False, is_async=True)
        s_t = warpgroup_mma_wait(1, deps=[s_tok])
        p_t = gl.exp2(s_t * qk_scale_log2 - gl.expand_dims(lse2, 0))
        masked = q_tile < num_masked
        if masked:
            # rows that see no key at all have lse = -inf: exp2 gives inf there, the mask drops it
            keep = gl.expand_dims(keys, 1) <= gl.expand_dims(queries, 0) + diag
            p_t = gl.where(keep, p_t, 0.0)
        p_op = gl.convert_layout(p_t.to(dtype), op_layout)
        dv = warpgroup_mma(p_op, do, dv, is_async=True)
        dp_t = warpgroup_mma_wait(1, deps=[dp_tok])
        ds_t = p_t * (dp_t - gl.expand_dims(delta, 0))
        if masked:
            # where, not just p = 0: a row that sees nothing may carry a non-finite delta
            keep = gl.expand_dims(keys, 1) <= gl.expand_dims(queries, 0) + diag
            ds_t = gl.where(keep, ds_t, 0.0)
        ds_op = gl.convert_layout(ds_t.to(dtype), op_layout)
        dk = warpgroup_mma(ds_op, q, dk, is_async=True)
        dv, dk, p_op, ds_op = warpgroup_mma_wait(0, deps=[dv, dk, p_op, ds_op])
        dv = warpgroup_mma_init(dv)
        dk = warpgroup_mma_init(dk)
        # both warpgroups are done with this q/dO slot: it takes step t + 2
        cta_barrier()
        if t + 2 < steps:
            load_step_rows(Q_DESC, DO_DESC, qd_bars, q_ring, do_ring, cur, t + 2, q_start, m, lo, per_head,
                           kv_head * GROUP, BLOCK_M)

    dv, dk = warpgroup_mma_wait(0, deps=[dv, dk])
    mbarrier.invalidate(kv_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(qd_bars.index(i))
    # K and V are no longer read: stage dK and dV there for the TMA stores
    k.store((dk * softmax_scale).to(dtype))
    v.store(dv.to(dtype))
    fence_async_shared()
    tma_store(DK_DESC, segment_coord(k_start, n, col0, kv_head), k_smem)
    tma_store(DV_DESC, segment_coord(k_start, n, col0, kv_head), v_smem)
    tma.store_wait(0)


@gluon.jit
def _keep(cols, rows, n, diag, CAUSAL: gl.constexpr):
    """(row, col) pairs of a dQ tile inside the segment and, if causal, on or below the diagonal."""
    keep = gl.expand_dims(cols < n, 0)
    if CAUSAL:
        keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1) + diag)
    return keep


@gluon.jit(do_not_specialize=["stride_lse_h", "num_slots", "group"])
def gluon_attention_backward_dq_kernel(
    Q_DESC, DO_DESC, K_DESC, V_DESC, DQ_DESC, LSE, DELTA,
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_lse_h, num_slots, group,
    HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr,  # queries owned by the program
    BLOCK_N: gl.constexpr,  # keys per step
    CAUSAL: gl.constexpr,
    num_warps: gl.constexpr,
):
    dtype: gl.constexpr = Q_DESC.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)

    slot, head, seg = query_slot(SCHEDULE, num_slots, group)
    if seg < 0:
        return
    q_start, m, k_start, n, kv_head, row0 = query_tile(CU_Q, CU_K, SCHEDULE, slot, seg, head, group, BLOCK_M)

    diag, full_hi, hi = keys_of_query_tile(row0, m, n, BLOCK_M, CAUSAL)
    num_full = full_hi // BLOCK_N  # kv tiles every row sees whole: no mask
    num_tiles = (hi + BLOCK_N - 1) // BLOCK_N

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    do_smem = gl.allocate_shared_memory(dtype, DO_DESC.block_type.shape, DO_DESC.layout)
    k_ring = gl.allocate_shared_memory(dtype, [2] + K_DESC.block_type.shape, K_DESC.layout)
    v_ring = gl.allocate_shared_memory(dtype, [2] + V_DESC.block_type.shape, V_DESC.layout)
    qd_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(qd_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(kv_bars.index(i), count=1)

    mbarrier.expect(qd_bar, Q_DESC.block_type.nbytes + DO_DESC.block_type.nbytes)
    tma_load(Q_DESC, segment_coord(q_start, m, row0, head), qd_bar, q_smem)
    tma_load(DO_DESC, segment_coord(q_start, m, row0, head), qd_bar, do_smem)
    for i in gl.static_range(2):
        if i < num_tiles:
            load_tile_pair(K_DESC, V_DESC, kv_bars, k_ring, v_ring, i, k_start, n, i * BLOCK_N, kv_head)

    rows = row0 + gl.arange(0, BLOCK_M, layout=row_layout)
    row_ok = rows < m
    offs_n = gl.arange(0, BLOCK_N, layout=col_layout)
    lse2 = gl.load(LSE + head.to(gl.int64) * stride_lse_h + q_start + rows, mask=row_ok, other=0.0) * LOG2E
    delta = gl.load(DELTA + head.to(gl.int64) * stride_lse_h + q_start + rows, mask=row_ok, other=0.0)
    q = q_smem.reshape([BLOCK_M, HEAD_DIM])
    do = do_smem.reshape([BLOCK_M, HEAD_DIM])
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, dq_layout)
    mbarrier.wait(qd_bar, 0)

    for j in range(num_tiles):
        cur = j % 2
        mbarrier.wait(kv_bars.index(cur), (j // 2) & 1)
        k = k_ring.index(cur).reshape([BLOCK_N, HEAD_DIM])
        v = v_ring.index(cur).reshape([BLOCK_N, HEAD_DIM])
        s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(do, v.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])
        p = gl.exp2(s * qk_scale_log2 - gl.expand_dims(lse2, 1))
        masked = j >= num_full
        if masked:
            p = gl.where(_keep(j * BLOCK_N + offs_n, rows, n, diag, CAUSAL), p, 0.0)
        dp = warpgroup_mma_wait(0, deps=[dp_tok])
        ds = p * (dp - gl.expand_dims(delta, 1))
        if masked:
            ds = gl.where(_keep(j * BLOCK_N + offs_n, rows, n, diag, CAUSAL), ds, 0.0)
        ds_op = gl.convert_layout(ds.to(dtype), op_layout)
        dq_tok = warpgroup_mma(ds_op, k, dq, is_async=True)
        dq, ds_op = warpgroup_mma_wait(0, deps=[dq_tok, ds_op])
        # both warpgroups are done with this K/V slot: it takes tile j + 2
        cta_barrier()
        if j + 2 < num_tiles:
            load_tile_pair(K_DESC, V_DESC, kv_bars, k_ring, v_ring, cur, k_start, n, (j + 2) * BLOCK_N, kv_head)

    mbarrier.invalidate(qd_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(kv_bars.index(i))
    # q is no longer read: stage dQ there for the TMA store
    q.store((dq * softmax_scale).to(dtype))
    fence_async_shared()
    tma_store(DQ_DESC, segment_coord(q_start, m, row0, head), q_smem)
    tma.store_wait(0)
