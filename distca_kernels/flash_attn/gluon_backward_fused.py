"""One-kernel attention backward for Hopper (sm_90) in Gluon: dK, dV and dQ from one
recomputation of P, dQ added into an fp32 buffer by TMA reduce-adds. Warp-specialized.

Why one kernel: the two-kernel backward (gluon_backward.py) recomputes S and dP once per kv
tile and again per q tile, 7 tile matmuls where a backward needs 5. Here one program per kv
tile (BLOCK_N keys, one kv head) walks the q tiles of every q head of its GQA group, as the
dK/dV kernel does, and per q tile also forms its share of dQ, dS K, which is added to dQ_acc
by one bulk `cp.reduce.async.bulk` (the way FlashAttention-3 does it): no per-element atomics.

Two partitions (gl.warp_specialize), as in FlashAttention-3:
- the consumers, two warpgroups (register budget 240 each). Per q tile of BLOCK_M = 64
  queries each takes half of the keys in S, dP and the dV/dK accumulators, and half of the
  head dim in dQ_part:

      issue S = Q K^T, dP = dO V^T
      wait for S             -> P -> shared memory        (beside dP)
      issue dV += P^T dO
      wait for dP            -> dS -> shared memory       (beside dV)
      issue dK += dS^T Q, dQ_part = dS K
      wait; dQ_part * scale -> shared memory; tell the loader the step is done

- a loader warp (24 registers): K and V once, then the q/dO tiles two steps ahead through a
  two-slot ring, and each step's dQ reduce-add as soon as the consumers hand it over. So the
  consumers never issue a copy or wait for one to drain, which the lockstep kernel this
  replaced did every step (its backward took 13-20% longer: fwd+bwd minus fwd in
  benchmarks/results/attention_vs_baseline_ws_h100.json).

dQ's rounding then depends on the order programs add (as with FlashAttention-2/3 and cuDNN);
the two-kernel pair stays the bitwise-reproducible path. Rows past a segment's end read as
zeros, and the reduce never writes past it (segment-bounded descriptors, gluon_tma.py).
GPU only (sm_90); CI only compiles it (tests/test_flash_attn_sm90_compile.py).
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

from distca_kernels.flash_attn.gluon_tile_ranges import key_slot, key_tile_walk
from distca_kernels.flash_attn.gluon_tma import (
    cta_barrier,
    load_step_rows,
    segment_coord,
    tma_load,
    tma_reduce_add,
    tma_store,
)

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit
def _step_rows(LSE, DELTA, stride_lse_h, q_start, m, lo, per_head, first_head, steps, t, offs_m,
               BLOCK_M: gl.constexpr):
    """lse (log2 units) and delta of step t's queries, loaded one step ahead so that their
    latency hides behind the step before. Rows past the segment end (and steps past the last)
    read lse = delta = 0: P is then 1 there, but q = dO = 0, so nothing is added to dK/dV, and
    the dQ reduce stops at the segment end."""
    head = first_head + t // per_head
    queries = lo + (t % per_head) * BLOCK_M + offs_m
    ok = (queries < m) & (t < steps)
    offset = head.to(gl.int64) * stride_lse_h + q_start + queries
    return gl.load(LSE + offset, mask=ok, other=0.0) * LOG2E, gl.load(DELTA + offset, mask=ok, other=0.0)


@gluon.jit
def _stage(x, smem, masked, keys, queries, diag, dtype: gl.constexpr):
    """x [queries, keys], zero above the causal diagonal where `masked` (a q tile on it), into
    smem as the next wgmma's operand, visible to both consumer warpgroups; returns masked x."""
    if masked:
        keep = gl.expand_dims(keys, 0) <= gl.expand_dims(queries, 1) + diag
        x = gl.where(keep, x, 0.0)
    smem.store(x.to(dtype))
    fence_async_shared()
    # inside a partition this syncs the consumer warps only (a named barrier)
    cta_barrier()
    return x


@gluon.jit
def _loader(K_DESC, V_DESC, Q_DESC, DO_DESC, DQ_DESC, k_smem, v_smem, q_ring, do_ring, dq_smem,
            kv_bar, qd_bars, done_bars, dq_free,
            q_start, m, k_start, n, col0, kv_head, lo, per_head, steps, GROUP: gl.constexpr):
    """K and V, the q/dO ring two steps ahead, and each finished step's dQ reduce-add."""
    BLOCK_M: gl.constexpr = q_ring.shape[3]
    mbarrier.expect(kv_bar, K_DESC.block_type.nbytes + V_DESC.block_type.nbytes)
    tma_load(K_DESC, segment_coord(k_start, n, col0, kv_head), kv_bar, k_smem)
    tma_load(V_DESC, segment_coord(k_start, n, col0, kv_head), kv_bar, v_smem)
    for i in gl.static_range(2):
        if i < steps:
            load_step_rows(Q_DESC, DO_DESC, qd_bars, q_ring, do_ring, i, i, q_start, m, lo, per_head,
                           kv_head * GROUP, BLOCK_M)
    for t in range(steps):
        cur = t % 2
        # the consumers finished step t: its dQ share is in dq_smem, its q/dO slot is free
        mbarrier.wait(done_bars.index(cur), (t // 2) & 1)
        head = kv_head * GROUP + t // per_head
        tma_reduce_add(DQ_DESC, segment_coord(q_start, m, lo + (t % per_head) * BLOCK_M, head), dq_smem)
        if t + 2 < steps:
            load_step_rows(Q_DESC, DO_DESC, qd_bars, q_ring, do_ring, cur, t + 2, q_start, m, lo, per_head,
                           kv_head * GROUP, BLOCK_M)
        # the reduce has read dq_smem: the consumers may overwrite it
        tma.store_wait(0)
        mbarrier.arrive(dq_free)


@gluon.jit
def _consumers(LSE, DELTA, CU_K, k_buf, v_buf, q_ring, do_ring, p_buf, ds_buf, dq_smem,
               kv_bar, qd_bars, done_bars, dq_free,
               qk_scale_log2, softmax_scale, stride_lse_h, seg, q_start, m, k_start, col0, diag, kv_head, lo,
               num_masked, per_head, steps, GROUP: gl.constexpr):
    """The two warpgroups' steps (module doc); returns the dK (unscaled) and dV accumulators."""
    # sizes from the buffers' shapes: constexpr arguments reach a partition wrapped twice
    dtype: gl.constexpr = q_ring.dtype
    BLOCK_M: gl.constexpr = q_ring.shape[3]
    BLOCK_N: gl.constexpr = k_buf.shape[3]
    HEAD_DIM: gl.constexpr = k_buf.shape[5]
    # S, dP, dQ_part [BLOCK_M queries, *]: the rows one wgmma takes, the warpgroups split the
    # columns. Rows are queries (not keys, as in the dK/dV kernel) so that lse and delta cost
    # a thread 2 registers, not 16: this kernel also holds dQ_part and needs them.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                       instr_shape=[16, BLOCK_N // 2, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                        instr_shape=[16, HEAD_DIM // 2, 16])
    # dK, dV [BLOCK_N keys, HEAD_DIM]: the warpgroups split the keys
    kv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    query_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    key_layout: gl.constexpr = gl.SliceLayout(0, s_layout)

    offs_n = gl.arange(0, BLOCK_N, layout=key_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=query_layout)
    dq_tile = dq_smem.reshape([BLOCK_M, HEAD_DIM])
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    zero_dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, dq_layout)
    dk = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, kv_layout))
    dv = warpgroup_mma_init(gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, kv_layout))
    mbarrier.wait(kv_bar, 0)
    lse2, delta = _step_rows(LSE, DELTA, stride_lse_h, q_start, m, lo, per_head, kv_head * GROUP, steps, 0,
                             offs_m, BLOCK_M)
    # an opaque 0: a load the compiler cannot move out of the loop (the loop writes memory),
    # reloaded each step. Indexing the loop-invariant buffers with it keeps their wgmma
    # descriptors (and the mask's key columns) inside the loop; hoisted, they held ~60
    # registers and spilled
    zero = gl.load(CU_K + seg) - k_start
    for t in range(steps):
        cur = t % 2
        q_tile = t % per_head
        start_m = lo + q_tile * BLOCK_M
        queries = start_m + offs_m
        k = k_buf.index(zero).reshape([BLOCK_N, HEAD_DIM])
        v = v_buf.index(zero).reshape([BLOCK_N, HEAD_DIM])
        p_smem = p_buf.index(zero)
        ds_smem = ds_buf.index(zero)
        keys = col0 + zero + offs_n
        mbarrier.wait(qd_bars.index(cur), (t // 2) & 1)
        q = q_ring.index(cur).reshape([BLOCK_M, HEAD_DIM])
        do = do_ring.index(cur).reshape([BLOCK_M, HEAD_DIM])
        s_tok = warpgroup_mma(q, k.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(do, v.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])
        p = gl.exp2(s * qk_scale_log2 - gl.expand_dims(lse2, 1))
        masked = q_tile < num_masked
        # the last step's MMAs have read p_smem and ds_smem (waited for before its hand-over).
        # Masked: rows that see no key at all have lse = -inf, exp2 gives inf there, the mask
        # drops it; and dS is masked with where, not through p = 0, as such a row may carry a
        # non-finite delta
        p = _stage(p, p_smem, masked, keys, queries, diag, dtype)
        dv = warpgroup_mma(p_smem.permute((1, 0)), do, dv, is_async=True)
        dp = warpgroup_mma_wait(1, deps=[dp_tok])
        _stage(p * (dp - gl.expand_dims(delta, 1)), ds_smem, masked, keys, queries, diag, dtype)
        dk = warpgroup_mma(ds_smem.permute((1, 0)), q, dk, is_async=True)
        dq_tok = warpgroup_mma(ds_smem, k, zero_dq, use_acc=False, is_async=True)
        dv, dk, dq_part = warpgroup_mma_wait(0, deps=[dv, dk, dq_tok])
        dv = warpgroup_mma_init(dv)
        dk = warpgroup_mma_init(dk)
        # next step's lse/delta go out now, to land while this step finishes
        lse2, delta = _step_rows(LSE, DELTA, stride_lse_h, q_start, m, lo, per_head, kv_head * GROUP, steps, t + 1,
                                 offs_m, BLOCK_M)
        zero = gl.load(CU_K + seg) - k_start
        # the loader's reduce of the last step has read dq_smem (a fresh barrier passes parity 1)
        mbarrier.wait(dq_free, (t & 1) ^ 1)
        dq_tile.store(dq_part * softmax_scale)
        fence_async_shared()
        # (the compiler syncs the consumer warps before an arrive: all of dq_smem is written)
        mbarrier.arrive(done_bars.index(cur))
    dv, dk = warpgroup_mma_wait(0, deps=[dv, dk])
    return dk, dv


@gluon.jit(do_not_specialize=["stride_lse_h", "num_slots"])
def gluon_attention_backward_fused_kernel(
    K_DESC, V_DESC, Q_DESC, DO_DESC, DK_DESC, DV_DESC, DQ_DESC, LSE, DELTA,
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2, softmax_scale,
    stride_lse_h, num_slots,
    GROUP: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_M: gl.constexpr,
    CAUSAL: gl.constexpr,
    num_warps: gl.constexpr,
):
    dtype: gl.constexpr = Q_DESC.dtype
    gl.static_assert(BLOCK_M == 64 and num_warps == 8, "one 64-row wgmma per step, two warpgroups")
    ps_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    slot, kv_head, seg = key_slot(SCHEDULE, num_slots)
    if seg < 0:
        return
    q_start, m, k_start, n, col0, diag, lo, num_masked, per_head, steps = key_tile_walk(
        CU_Q, CU_K, SCHEDULE, slot, seg, BLOCK_N, BLOCK_M, GROUP, CAUSAL)

    k_buf = gl.allocate_shared_memory(dtype, [1] + K_DESC.block_type.shape, K_DESC.layout)
    v_buf = gl.allocate_shared_memory(dtype, [1] + V_DESC.block_type.shape, V_DESC.layout)
    q_ring = gl.allocate_shared_memory(dtype, [2] + Q_DESC.block_type.shape, Q_DESC.layout)
    do_ring = gl.allocate_shared_memory(dtype, [2] + DO_DESC.block_type.shape, DO_DESC.layout)
    p_buf = gl.allocate_shared_memory(dtype, [1, BLOCK_M, BLOCK_N], ps_layout)
    ds_buf = gl.allocate_shared_memory(dtype, [1, BLOCK_M, BLOCK_N], ps_layout)
    dq_smem = gl.allocate_shared_memory(gl.float32, DQ_DESC.block_type.shape, DQ_DESC.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    qd_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    done_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    dq_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    mbarrier.init(dq_free, count=1)
    for i in gl.static_range(2):
        mbarrier.init(qd_bars.index(i), count=1)
        mbarrier.init(done_bars.index(i), count=1)
    k_smem = k_buf.index(0)
    v_smem = v_buf.index(0)

    # the consumers are the default partition (this program's 8 warps); the loader is 1 more
    dk, dv = gl.warp_specialize([
        (_consumers, (LSE, DELTA, CU_K, k_buf, v_buf, q_ring, do_ring, p_buf, ds_buf, dq_smem,
                      kv_bar, qd_bars, done_bars, dq_free,
                      qk_scale_log2, softmax_scale, stride_lse_h, seg, q_start, m, k_start, col0, diag, kv_head,
                      lo, num_masked, per_head, steps, GROUP)),
        (_loader, (K_DESC, V_DESC, Q_DESC, DO_DESC, DQ_DESC, k_smem, v_smem, q_ring, do_ring, dq_smem,
                   kv_bar, qd_bars, done_bars, dq_free,
                   q_start, m, k_start, n, col0, kv_head, lo, per_head, steps, GROUP)),
    ], [1], [24])  # worker warps; worker registers (the consumers get the rest, 240)
    # both partitions are done, so K and V are no longer read: stage dK and dV there for the
    # TMA stores
    k_smem.reshape([BLOCK_N, HEAD_DIM]).store((dk * softmax_scale).to(dtype))
    v_smem.reshape([BLOCK_N, HEAD_DIM]).store(dv.to(dtype))
    fence_async_shared()
    tma_store(DK_DESC, segment_coord(k_start, n, col0, kv_head), k_smem)
    tma_store(DV_DESC, segment_coord(k_start, n, col0, kv_head), v_smem)
    tma.store_wait(0)
