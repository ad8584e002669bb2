"""Forward Triton kernels: per-segment states, the scan over segments, and the outputs.

Pass 1 (`segment_state_kernel`): M_s = sum_{j in s} exp(G_end(s) - G_j) k_j v_j^T and the
segment's total log-decay a_s, in parallel over segments (the backward reuses it for dM).
Pass 2 (`segment_scan_kernel`): S_s = state entering segment s, S_{s+1} = exp(a_s) S_s + M_s,
one short sequential loop per (document, head); its last carry is the final state. The same
kernel, run in reverse over dM, gives the backward's state gradients.
Pass 3 (`output_kernel`): from S_s, walk the segment's chunks: intra-chunk masked attention
plus the inter-chunk term q S, updating S in registers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested, load_kernels

# the helpers built in the same mode as this file (see distca_kernels/triton_loader.py)
common = load_kernels("distca_kernels.lightning_attn.triton_common", interpreter_requested())


@triton.jit
def _segment_state_kernel(a, b, g, gamma, seg_bos, seg_eos, m_out, a_out, scale, H,
                          K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                          FROM_START: tl.constexpr, DOT_PREC: tl.constexpr):
    """Per segment, a decayed sum of outer products a_j^T b_j over its tokens.

    FROM_START=False (forward; a=k, b=v): M = sum_j exp(G_end - G_j) k_j^T v_j, walking the
    chunks forwards; also the segment's total log-decay into a_out.
    FROM_START=True (backward; a=q, b=do): dM = scale sum_i exp(G_i - G_start) q_i^T do_i,
    walking the chunks backwards so that each step only decays by one chunk.
    """
    i_s, i_h, i_v, bos, eos = common.segment_program(seg_bos, seg_eos, H, V, BV)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    rows = tl.arange(0, BT)
    gam = common.head_log_decay(gamma, i_h, DECAY)
    dt = a.dtype.element_ty
    m = tl.zeros([BK, BV], dtype=tl.float32)
    gsum = tl.zeros([BT], dtype=tl.float32)
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = common.chunk_start(bos, c, n_chunks, BT, FROM_START)
        at = common.load_rows(a, t0, eos, i_h, H, K, ck, BT)
        bt = common.load_rows(b, t0, eos, i_h, H, V, cv, BT)
        if DECAY == 0:
            m = tl.dot(tl.trans(at), bt, m, input_precision=DOT_PREC)
        else:
            bb, b_last = common.chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            if FROM_START:
                w = tl.exp(bb)
            else:
                w = tl.exp(b_last - bb)
            bd = (bt * w[:, None]).to(dt)
            m = tl.dot(tl.trans(at), bd, m * tl.exp(b_last), input_precision=DOT_PREC)
            if DECAY == 2:
                gsum += tl.load(g + (t0 + rows) * H + i_h, mask=(t0 + rows) < eos,
                                other=0.).to(tl.float32)
    m_ptrs, m_mask = common.state_tile(m_out, i_s, i_h, H, K, V, ck, cv)
    tl.store(m_ptrs, m * scale, mask=m_mask)
    if FROM_START == 0:
        if DECAY == 2:
            a_tot = tl.sum(gsum, axis=0)
        else:
            a_tot = gam * (eos - bos).to(tl.float32)
        tl.store(a_out + i_s.to(tl.int64) * H + i_h, a_tot, mask=i_v == 0)


segment_state_kernel = common.tuned(_segment_state_kernel, key=["BK", "V", "BT", "DECAY", "FROM_START"],
                                    tune_block="BV", candidates=[(128, 8, 2), (64, 4, 2)])


@triton.jit
def segment_scan_kernel(m_in, a_seg, init, s_out, final, seq_seg, H, KV,
                        BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, REVERSE: tl.constexpr):
    """For each (document, head) and a BLOCK-slice of the flattened K*V state: walk the
    document's segments (backwards if REVERSE), store the carry entering each segment in
    s_out, then carry <- exp(a_s) carry + m_s. The last carry goes to `final`."""
    i_nh = tl.program_id(0)
    i_b = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    offs = i_b * BLOCK + tl.arange(0, BLOCK)
    mask = offs < KV
    s_lo = tl.load(seq_seg + i_n)
    s_hi = tl.load(seq_seg + i_n + 1)
    nh_base = (i_n.to(tl.int64) * H + i_h) * KV
    if HAS_INIT:
        carry = tl.load(init + nh_base + offs, mask=mask, other=0.).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, s_hi - s_lo):
        if REVERSE:
            s = s_hi - 1 - j
        else:
            s = s_lo + j
        base = (s.to(tl.int64) * H + i_h) * KV
        tl.store(s_out + base + offs, carry, mask=mask)
        a = tl.load(a_seg + s.to(tl.int64) * H + i_h)
        carry = carry * tl.exp(a) + tl.load(m_in + base + offs, mask=mask, other=0.)
    tl.store(final + nh_base + offs, carry, mask=mask)


@triton.jit
def _output_kernel(q, k, v, o, g, gamma, seg_bos, seg_eos, s_seg, scale, H,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr,
                   DECAY: tl.constexpr, DOT_PREC: tl.constexpr):
    i_s, i_h, i_v, bos, eos = common.segment_program(seg_bos, seg_eos, H, V, BV)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    rows = tl.arange(0, BT)
    causal = rows[:, None] >= rows[None, :]
    gam = common.head_log_decay(gamma, i_h, DECAY)
    S = common.load_state(s_seg, i_s, i_h, H, K, V, ck, cv)
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = common.chunk_start(bos, c, n_chunks, BT, False)
        qt = common.load_rows(q, t0, eos, i_h, H, K, ck, BT)
        kt = common.load_rows(k, t0, eos, i_h, H, K, ck, BT)
        vt = common.load_rows(v, t0, eos, i_h, H, V, cv, BT)
        ot, S = common.forward_walk_step(S, qt, kt, vt, kt, vt, g, gam, t0, eos, i_h, H, causal, BT, DECAY, False,
                                         DOT_PREC)
        common.store_rows(o, ot * scale, t0, eos, i_h, H, V, cv, BT)


# BV=128 computes q k^T once per chunk but spills ~120 bytes/thread; BV=64 spills nothing at
# 8 warps, ~24 bytes at 4 warps (which fit two programs per multiprocessor).
output_kernel = common.tuned(_output_kernel, key=["BK", "V", "BT", "DECAY"], tune_block="BV",
                             candidates=[(64, 8, 2), (64, 8, 3), (128, 8, 2), (64, 4, 2)])
