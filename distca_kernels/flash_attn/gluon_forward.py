"""Forward attention kernel for Hopper (sm_90) in Gluon: warp-specialized, FlashAttention-3's layout.

Same contract as triton_forward.attention_forward_kernel (varlen, bottom-right causal, lse out,
GQA, one program per (q tile, q head) from the shared tile schedule), written in Gluon,
Triton's explicit-layout dialect, because plain Triton (3.6 on our GPU machine) waits for
every score matmul before touching its result and cannot give warps different jobs.

A program's 128-row q tile is split between three partitions (gl.warp_specialize):
- a loader warp streams K and V through two-slot rings of segment-bounded TMA descriptors
  (gluon_tma.py: rows past a segment's end read as zeros) and waits only for a slot's "empty"
  barrier, so no compute warp issues or waits for a load;
- two consumer warpgroups own 64 rows each (register budget 240 each, the loader 24). Inside
  each, the wgmmas are asynchronous and waited for explicitly, in the order FlashAttention-3
  calls intra-warpgroup pipelining:

      issue S_j = Q K_j^T                                   (async)
      rescale O by alpha_{j-1}; issue O += P_{j-1} V_{j-1}    (async)
      wait until only that last one is in flight -> S_j is ready; release K_j's slot
      softmax of S_j -> P_j, alpha_j   (runs while the tensor cores do P_{j-1} V_{j-1})
      wait for O; release V_{j-1}'s slot

  and the two take turns issuing ("ping-pong", one mbarrier each): warpgroup 1 issues after
  warpgroup 0 has, and the other way round, so one's exponentials run while the other's
  matmuls do. They never wait for each other otherwise. (The lockstep two-warpgroup kernel
  this replaced synchronized the whole CTA once per kv tile and took 10-19% longer,
  benchmarks/results/attention_vs_baseline_ws_h100.json.)

Each consumer writes its own 64 rows of o (staged in its half of the q buffer) and lse.
GPU only: the launcher uses it on sm_90 devices (CI only compiles it for sm_90,
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

from distca_kernels.flash_attn.gluon_tile_ranges import (
    keys_of_query_tile,
    query_slot,
    query_tile,
)
from distca_kernels.flash_attn.gluon_tma import (
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


@gluon.jit
def _loader(Q_DESC, K_DESC, V_DESC, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty,
            q_start, m, k_start, n, row0, head, kv_head, num_tiles):
    """The q tile's two halves, then K_j and V_j into slot j % 2 once both warpgroups freed it."""
    HALF: gl.constexpr = q_smem.shape[3]
    BLOCK_N: gl.constexpr = k_ring.shape[3]
    for w in gl.static_range(2):
        mbarrier.expect(q_bars.index(w), Q_DESC.block_type.nbytes)
        tma_load(Q_DESC, segment_coord(q_start, m, row0 + w * HALF, head), q_bars.index(w), q_smem.index(w))
    for j in range(num_tiles):
        slot = j % 2
        # the slot's previous tile (j - 2) must be released by both warpgroups; a fresh
        # barrier passes the wait for parity 1
        mbarrier.wait(k_empty.index(slot), ((j // 2) & 1) ^ 1)
        load_tile(K_DESC, k_full, k_ring, slot, k_start, n, j * BLOCK_N, kv_head)
        mbarrier.wait(v_empty.index(slot), ((j // 2) & 1) ^ 1)
        load_tile(V_DESC, v_full, v_ring, slot, k_start, n, j * BLOCK_N, kv_head)


@gluon.jit
def _consumer(O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
              qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag,
              WG: gl.constexpr):
    """One warpgroup's 64 rows: the matmuls, the online softmax, o and lse out."""
    # sizes from the buffers' shapes: constexpr arguments reach a partition wrapped twice
    HALF: gl.constexpr = q_smem.shape[3]
    HEAD_DIM: gl.constexpr = q_smem.shape[5]
    BLOCK_N: gl.constexpr = k_ring.shape[3]
    dtype: gl.constexpr = O_DESC.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    my_row0 = row0 + WG * HALF
    rows = my_row0 + gl.arange(0, HALF, layout=s_rows)
    offs_n = gl.arange(0, BLOCK_N, layout=s_cols)
    q = q_smem.index(WG).reshape([HALF, HEAD_DIM])
    zero_s = gl.zeros([HALF, BLOCK_N], gl.float32, s_layout)
    acc = gl.zeros([HALF, HEAD_DIM], gl.float32, o_layout)
    m_i = gl.full([HALF], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([HALF], gl.float32, s_rows)
    p = gl.zeros([HALF, BLOCK_N], gl.float32, s_layout)
    alpha = gl.full([HALF], 1.0, gl.float32, s_rows)
    my_turn = turns.index(WG)
    their_turn = turns.index(1 - WG)
    mbarrier.wait(q_bars.index(WG), 0)

    if num_tiles > 0:
        # tile 0: nothing to overlap with yet; warpgroup 0 goes first
        mbarrier.wait(k_full.index(0), 0)
        mbarrier.wait(my_turn, 1 - WG)
        s_tok = warpgroup_mma(q, k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), zero_s,
                              use_acc=False, is_async=True)
        mbarrier.arrive(their_turn)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(0))
        if num_full > 0:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, offs_n, rows, n, diag, False, True)
        else:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, offs_n, rows, n, diag, True, True)

    for j in range(1, num_tiles):
        slot = j % 2
        prev = 1 - slot
        mbarrier.wait(k_full.index(slot), (j // 2) & 1)
        # each warpgroup issues after the other has issued (see module doc)
        mbarrier.wait(my_turn, (j & 1) ^ (1 - WG))
        s_tok = warpgroup_mma(q, k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), zero_s,
                              use_acc=False, is_async=True)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(v_full.index(prev), ((j - 1) // 2) & 1)
        o_tok = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        mbarrier.arrive(their_turn)
        s = warpgroup_mma_wait(1, deps=[s_tok])
        mbarrier.arrive(k_empty.index(slot))
        # the exponentials of tile j run while the tensor cores multiply P_{j-1} V_{j-1}
        if j < num_full:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, j * BLOCK_N + offs_n, rows, n, diag,
                                               False, True)
        else:
            p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, qk_scale_log2, j * BLOCK_N + offs_n, rows, n, diag,
                                               True, True)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])
        mbarrier.arrive(v_empty.index(prev))

    if num_tiles > 0:
        last = (num_tiles - 1) % 2
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(v_full.index(last), ((num_tiles - 1) // 2) & 1)
        o_tok = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=[o_tok, p_op])

    l_o = gl.convert_layout(l_i, o_rows)
    seen = l_o > 0.0
    o = acc / gl.expand_dims(gl.where(seen, l_o, 1.0), 1)
    m_o = gl.convert_layout(m_i, o_rows)
    lse = gl.where(seen, (m_o + gl.log2(gl.where(seen, l_o, 1.0))) * 0.6931471805599453, float("-inf"))
    rows_o = my_row0 + gl.arange(0, HALF, layout=o_rows)
    gl.store(LSE + head.to(gl.int64) * stride_lse_h + q_start + rows_o, lse, mask=rows_o < m)
    # this warpgroup's q half is free (its score matmuls are done): stage o there
    q.store(o.to(dtype))
    fence_async_shared()
    tma_store(O_DESC, segment_coord(q_start, m, my_row0, head), q_smem.index(WG))
    tma.store_wait(0)


# One entry per warpgroup: a partition's arguments must be values (a literal 0 or 1 cannot be
# passed through gl.warp_specialize), so the warpgroup index is fixed here.
@gluon.jit
def _consumer_0(O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
                qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag):
    _consumer(O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
              qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag, 0)


@gluon.jit
def _consumer_1(O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
                qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag):
    _consumer(O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
              qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag, 1)


@gluon.jit(do_not_specialize=["stride_lse_h", "num_slots", "group"])
def gluon_attention_forward_kernel(
    Q_DESC, K_DESC, V_DESC, O_DESC, LSE,
    CU_Q, CU_K, SCHEDULE,
    qk_scale_log2,
    stride_lse_h, num_slots, group,
    HEAD_DIM: gl.constexpr,
    BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr,
    CAUSAL: gl.constexpr,
    num_warps: gl.constexpr,
):
    gl.static_assert(num_warps == 4, "the default partition is one consumer warpgroup")
    dtype: gl.constexpr = Q_DESC.dtype
    slot, head, seg = query_slot(SCHEDULE, num_slots, group)
    if seg < 0:
        return
    q_start, m, k_start, n, kv_head, row0 = query_tile(CU_Q, CU_K, SCHEDULE, slot, seg, head, group, BLOCK_M)
    diag, full_hi, hi = keys_of_query_tile(row0, m, n, BLOCK_M, CAUSAL)
    num_full = full_hi // BLOCK_N
    num_tiles = (hi + BLOCK_N - 1) // BLOCK_N

    q_smem = gl.allocate_shared_memory(dtype, [2] + Q_DESC.block_type.shape, Q_DESC.layout)
    k_ring = gl.allocate_shared_memory(dtype, [2] + K_DESC.block_type.shape, K_DESC.layout)
    v_ring = gl.allocate_shared_memory(dtype, [2] + V_DESC.block_type.shape, V_DESC.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)
        mbarrier.init(v_empty.index(i), count=2)
        mbarrier.init(turns.index(i), count=1)

    if not CAUSAL:
        # partitions take no constexpr arguments: without the causal mask, a diagonal past
        # every key makes the mask's causal test always pass
        diag = n
    consumer_args = (O_DESC, LSE, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty, turns,
                     qk_scale_log2, stride_lse_h, q_start, m, n, row0, head, num_tiles, num_full, diag)
    gl.warp_specialize([
        (_consumer_0, consumer_args),
        (_consumer_1, consumer_args),
        (_loader, (Q_DESC, K_DESC, V_DESC, q_smem, k_ring, v_ring, q_bars, k_full, v_full, k_empty, v_empty,
                   q_start, m, k_start, n, row0, head, kv_head, num_tiles)),
    ], [4, 1], [240, 24])  # worker warps; worker registers (the default partition gets the rest)
