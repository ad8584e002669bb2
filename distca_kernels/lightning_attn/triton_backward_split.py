"""Backward Triton kernels, each carrying a slice of one state so that nothing spills from
registers.

With b the chunk-local cumulative log-decay and D_ij = exp(b_i - b_j) for i >= j (0
otherwise), per chunk with entering state S and state gradient dH at its end:

  dq_i = scale [sum_j D_ij (do_i . v_j) k_j + exp(b_i) do_i S^T]
  dk_j = scale sum_i D_ij (do_i . v_j) q_i + exp(b_last - b_j) v_j dH^T
  dv_j = scale sum_i D_ij (q_i . k_j) do_i + exp(b_last - b_j) k_j dH
  dH(entering) = exp(b_last) dH + scale sum_i exp(b_i) q_i^T do_i

Three kernels whose outputs need no cross-program sums:

  dq_split_kernel  K split in BKS columns, carries S[kb, :]   (forward states), walks forwards
  dk_split_kernel  K split in BKS columns, carries dH[kb, :]  (state gradients), walks backwards
  dv_split_kernel  V split in BVS columns, carries dH[:, vb], walks backwards

dH at each segment's end comes from the reverse segment scan over dM, the segments' sums
dM = scale sum_i exp(G_i - G_start) q_i^T do_i (`segment_state_kernel(FROM_START=True)`).
For the log-decay gradient dq and dk emit per-token partials q.dq and k.dk, one per K slice:
the gradient w.r.t. the cumulative decay G_t is q_t.dq_t - k_t.dk_t (see `chunked.py`).
The price of the slices is recomputing the BT x BT score tiles once per slice. Two kernels
carrying whole K x V states (dq with dM, then dk with dv) were measured too and removed: the
sm_90 compiler spilled 560-650 bytes per thread there and fwd+bwd ran at 7.98 against 8.93
Mtok/s for these at 64K tokens (PERFORMANCE.md, run 1).
"""
from __future__ import annotations

import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested, load_kernels

# the helpers built in the same mode as this file (see distca_kernels/triton_loader.py)
common = load_kernels("distca_kernels.lightning_attn.triton_common", interpreter_requested())


@triton.jit
def _backward_walk_step(dH, x, y, z, qt, dot, g, gam, t0, eos, i_h, H, causal_t, scale, BT: tl.constexpr,
                        DECAY: tl.constexpr, TRANS_DH: tl.constexpr, DOT_PREC: tl.constexpr):
    """One chunk of a backward walk that carries (a slice of) the state gradient dH: returns
    (rows, dH entering the chunk), with (tiles transposed, [key rows j, query rows i])
        rows_j = scale sum_{i >= j} exp(b_i - b_j) (x_j . y_i) z_i + exp(b_last - b_j) x_j dH
    (dH^T with TRANS_DH). dk takes (x, y, z) = (v, do, q) and dH^T; dv takes (k, q, do).
    qt, dot are the chunk's q and do tiles."""
    dt = x.dtype
    st = tl.dot(x, tl.trans(y), input_precision=DOT_PREC)
    if DECAY == 0:
        st = tl.where(causal_t, st, 0.) * scale
        out = common.state_product(x, dH, dt, TRANS_DH, DOT_PREC)
        out = tl.dot(st.to(dt), z, out, input_precision=DOT_PREC)
        dH += tl.dot(tl.trans(qt), dot, input_precision=DOT_PREC) * scale
    else:
        b, b_last = common.chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
        st = st * (tl.exp(tl.where(causal_t, b[None, :] - b[:, None], float("-inf"))) * scale)
        out = common.state_product(x, dH, dt, TRANS_DH, DOT_PREC) * tl.exp(b_last - b)[:, None]
        out = tl.dot(st.to(dt), z, out, input_precision=DOT_PREC)
        dod = (dot * (tl.exp(b) * scale)[:, None]).to(dt)
        dH = tl.dot(tl.trans(qt), dod, dH * tl.exp(b_last), input_precision=DOT_PREC)
    return out, dH


@triton.jit
def _store_row_dots(dg_p, x, grad, t0, eos, i_h, H, D: tl.constexpr, cols, BT: tl.constexpr):
    """Per token of the chunk, x_t . grad_t over this program's columns (a partial of the
    log-decay gradient, q.dq or k.dk) into dg_p [TT, H]."""
    xt = common.load_rows(x, t0, eos, i_h, H, D, cols, BT).to(tl.float32)
    t = t0 + tl.arange(0, BT)
    tl.store(dg_p + t * H + i_h, tl.sum(xt * grad, axis=1), mask=t < eos)


@triton.jit
def _dq_split_kernel(q, k, v, do, dq, dgq, g, gamma, seg_bos, seg_eos, s_seg, scale, TT, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKS: tl.constexpr, BVF: tl.constexpr, DECAY: tl.constexpr,
                     NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    i_s, i_h, i_k, bos, eos = common.segment_program(seg_bos, seg_eos, H, K, BKS)
    ck = i_k * BKS + tl.arange(0, BKS)
    cv = tl.arange(0, BVF)
    rows = tl.arange(0, BT)
    causal = rows[:, None] >= rows[None, :]
    gam = common.head_log_decay(gamma, i_h, DECAY)
    S = common.load_state(s_seg, i_s, i_h, H, K, V, ck, cv)
    dg_p = dgq + i_k.to(tl.int64) * TT * H
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = common.chunk_start(bos, c, n_chunks, BT, False)
        kt = common.load_rows(k, t0, eos, i_h, H, K, ck, BT)
        vt = common.load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = common.load_rows(do, t0, eos, i_h, H, V, cv, BT)
        # dq is the output computation on do, with v and k in the roles of k and v
        dqt, S = common.forward_walk_step(S, dot, vt, kt, kt, vt, g, gam, t0, eos, i_h, H, causal, BT, DECAY, True,
                                          DOT_PREC)
        dqt = dqt * scale
        common.store_rows(dq, dqt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            _store_row_dots(dg_p, q, dqt, t0, eos, i_h, H, K, ck, BT)


# 8 warps: no spills, one program per multiprocessor (registers); 4 warps: a few spilled
# bytes, but two programs per multiprocessor to hide the per-chunk dependency chain.
_SPLIT_SHAPES = [(64, 8, 2), (64, 8, 3), (64, 4, 2)]
dq_split_kernel = common.tuned(_dq_split_kernel, key=["K", "BVF", "BT", "DECAY", "NEED_DG"],
                               tune_block="BKS", candidates=_SPLIT_SHAPES)


@triton.jit
def _dk_split_kernel(q, k, v, do, dk, dgk, g, gamma, seg_bos, seg_eos, e_seg, scale, TT, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKS: tl.constexpr, BVF: tl.constexpr, DECAY: tl.constexpr,
                     NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    i_s, i_h, i_k, bos, eos = common.segment_program(seg_bos, seg_eos, H, K, BKS)
    ck = i_k * BKS + tl.arange(0, BKS)
    cv = tl.arange(0, BVF)
    rows = tl.arange(0, BT)
    causal_t = rows[:, None] <= rows[None, :]  # [j, i]: key row j, query row i >= j
    gam = common.head_log_decay(gamma, i_h, DECAY)
    dH = common.load_state(e_seg, i_s, i_h, H, K, V, ck, cv)
    dg_p = dgk + i_k.to(tl.int64) * TT * H
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = common.chunk_start(bos, c, n_chunks, BT, True)
        qt = common.load_rows(q, t0, eos, i_h, H, K, ck, BT)
        vt = common.load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = common.load_rows(do, t0, eos, i_h, H, V, cv, BT)
        dkt, dH = _backward_walk_step(dH, vt, dot, qt, qt, dot, g, gam, t0, eos, i_h, H, causal_t, scale, BT,
                                      DECAY, True, DOT_PREC)
        common.store_rows(dk, dkt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            _store_row_dots(dg_p, k, dkt, t0, eos, i_h, H, K, ck, BT)


dk_split_kernel = common.tuned(_dk_split_kernel, key=["K", "BVF", "BT", "DECAY", "NEED_DG"],
                               tune_block="BKS", candidates=_SPLIT_SHAPES)


@triton.jit
def _dv_split_kernel(q, k, do, dv, g, gamma, seg_bos, seg_eos, e_seg, scale, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKF: tl.constexpr, BVS: tl.constexpr, DECAY: tl.constexpr,
                     DOT_PREC: tl.constexpr):
    i_s, i_h, i_v, bos, eos = common.segment_program(seg_bos, seg_eos, H, V, BVS)
    ck = tl.arange(0, BKF)
    cv = i_v * BVS + tl.arange(0, BVS)
    rows = tl.arange(0, BT)
    causal_t = rows[:, None] <= rows[None, :]
    gam = common.head_log_decay(gamma, i_h, DECAY)
    dH = common.load_state(e_seg, i_s, i_h, H, K, V, ck, cv)
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = common.chunk_start(bos, c, n_chunks, BT, True)
        qt = common.load_rows(q, t0, eos, i_h, H, K, ck, BT)
        kt = common.load_rows(k, t0, eos, i_h, H, K, ck, BT)
        dot = common.load_rows(do, t0, eos, i_h, H, V, cv, BT)
        dvt, dH = _backward_walk_step(dH, kt, qt, dot, qt, dot, g, gam, t0, eos, i_h, H, causal_t, scale, BT,
                                      DECAY, False, DOT_PREC)
        common.store_rows(dv, dvt, t0, eos, i_h, H, V, cv, BT)


dv_split_kernel = common.tuned(_dv_split_kernel, key=["BKF", "V", "BT", "DECAY"], tune_block="BVS",
                               candidates=_SPLIT_SHAPES)
