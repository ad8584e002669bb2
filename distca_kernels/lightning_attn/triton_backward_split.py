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
_common = load_kernels("distca_kernels.lightning_attn.triton_common", interpreter_requested())
chunk_log_decay = _common.chunk_log_decay
load_rows = _common.load_rows
store_rows = _common.store_rows
tuned = _common.tuned


@triton.jit
def _dq_split_kernel(q, k, v, do, dq, dgq, g, gamma, seg_bos, seg_eos, s_seg, scale, TT, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKS: tl.constexpr, BVF: tl.constexpr, DECAY: tl.constexpr,
                     NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    NK = (K + BKS - 1) // BKS
    pid = tl.program_id(0)
    i_k = pid % NK
    i_h = (pid // NK) % H
    i_s = pid // (NK * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    ck = i_k * BKS + tl.arange(0, BKS)
    cv = tl.arange(0, BVF)
    rows = tl.arange(0, BT)
    causal = rows[:, None] >= rows[None, :]
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    dt = q.dtype.element_ty
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    S = tl.load(s_seg + base + ck[:, None] * V + cv[None, :],
                mask=(ck < K)[:, None] & (cv < V)[None, :], other=0.)
    dg_p = dgq + i_k.to(tl.int64) * TT * H
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = bos + c * BT
        kt = load_rows(k, t0, eos, i_h, H, K, ck, BT)
        vt = load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = load_rows(do, t0, eos, i_h, H, V, cv, BT)
        dA = tl.dot(dot, tl.trans(vt), input_precision=DOT_PREC)
        if DECAY == 0:
            dA = tl.where(causal, dA, 0.)
            dqt = tl.dot(dot, tl.trans(S.to(dt)), input_precision=DOT_PREC)
            dqt = tl.dot(dA.to(dt), kt, dqt, input_precision=DOT_PREC)
            S = tl.dot(tl.trans(kt), vt, S, input_precision=DOT_PREC)
        else:
            b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            dA = dA * tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            dqt = tl.dot(dot, tl.trans(S.to(dt)), input_precision=DOT_PREC) * tl.exp(b)[:, None]
            dqt = tl.dot(dA.to(dt), kt, dqt, input_precision=DOT_PREC)
            vd = (vt * tl.exp(b_last - b)[:, None]).to(dt)
            S = tl.dot(tl.trans(kt), vd, S * tl.exp(b_last), input_precision=DOT_PREC)
        dqt = dqt * scale
        store_rows(dq, dqt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            qt = load_rows(q, t0, eos, i_h, H, K, ck, BT).to(tl.float32)
            t = t0 + rows
            tl.store(dg_p + t * H + i_h, tl.sum(qt * dqt, axis=1), mask=t < eos)


# 8 warps: no spills, one program per multiprocessor (registers); 4 warps: a few spilled
# bytes, but two programs per multiprocessor to hide the per-chunk dependency chain.
_SPLIT_SHAPES = [(64, 8, 2), (64, 8, 3), (64, 4, 2)]
dq_split_kernel = tuned(_dq_split_kernel, key=["K", "BVF", "BT", "DECAY", "NEED_DG"],
                        tune_block="BKS", candidates=_SPLIT_SHAPES)


@triton.jit
def _dk_split_kernel(q, k, v, do, dk, dgk, g, gamma, seg_bos, seg_eos, e_seg, scale, TT, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKS: tl.constexpr, BVF: tl.constexpr, DECAY: tl.constexpr,
                     NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    NK = (K + BKS - 1) // BKS
    pid = tl.program_id(0)
    i_k = pid % NK
    i_h = (pid // NK) % H
    i_s = pid // (NK * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    ck = i_k * BKS + tl.arange(0, BKS)
    cv = tl.arange(0, BVF)
    rows = tl.arange(0, BT)
    causal_t = rows[:, None] <= rows[None, :]  # [j, i]: key row j, query row i >= j
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    dt = q.dtype.element_ty
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    dH = tl.load(e_seg + base + ck[:, None] * V + cv[None, :],
                 mask=(ck < K)[:, None] & (cv < V)[None, :], other=0.)
    dg_p = dgk + i_k.to(tl.int64) * TT * H
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for cc in range(0, n_chunks):
        t0 = bos + (n_chunks - 1 - cc) * BT
        qt = load_rows(q, t0, eos, i_h, H, K, ck, BT)
        vt = load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = load_rows(do, t0, eos, i_h, H, V, cv, BT)
        dAt = tl.dot(vt, tl.trans(dot), input_precision=DOT_PREC)
        if DECAY == 0:
            dAt = tl.where(causal_t, dAt, 0.) * scale
            dkt = tl.dot(vt, tl.trans(dH.to(dt)), input_precision=DOT_PREC)
            dkt = tl.dot(dAt.to(dt), qt, dkt, input_precision=DOT_PREC)
            dH += tl.dot(tl.trans(qt), dot, input_precision=DOT_PREC) * scale
        else:
            b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            dAt = dAt * (tl.exp(tl.where(causal_t, b[None, :] - b[:, None], float("-inf")))
                         * scale)
            dkt = tl.dot(vt, tl.trans(dH.to(dt)), input_precision=DOT_PREC) \
                * tl.exp(b_last - b)[:, None]
            dkt = tl.dot(dAt.to(dt), qt, dkt, input_precision=DOT_PREC)
            dod = (dot * (tl.exp(b) * scale)[:, None]).to(dt)
            dH = tl.dot(tl.trans(qt), dod, dH * tl.exp(b_last), input_precision=DOT_PREC)
        store_rows(dk, dkt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            kt = load_rows(k, t0, eos, i_h, H, K, ck, BT).to(tl.float32)
            t = t0 + rows
            tl.store(dg_p + t * H + i_h, tl.sum(kt * dkt, axis=1), mask=t < eos)


dk_split_kernel = tuned(_dk_split_kernel, key=["K", "BVF", "BT", "DECAY", "NEED_DG"],
                        tune_block="BKS", candidates=_SPLIT_SHAPES)


@triton.jit
def _dv_split_kernel(q, k, do, dv, g, gamma, seg_bos, seg_eos, e_seg, scale, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BKF: tl.constexpr, BVS: tl.constexpr, DECAY: tl.constexpr,
                     DOT_PREC: tl.constexpr):
    NV = (V + BVS - 1) // BVS
    pid = tl.program_id(0)
    i_v = pid % NV
    i_h = (pid // NV) % H
    i_s = pid // (NV * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    ck = tl.arange(0, BKF)
    cv = i_v * BVS + tl.arange(0, BVS)
    rows = tl.arange(0, BT)
    causal_t = rows[:, None] <= rows[None, :]
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    dt = q.dtype.element_ty
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    dH = tl.load(e_seg + base + ck[:, None] * V + cv[None, :],
                 mask=(ck < K)[:, None] & (cv < V)[None, :], other=0.)
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for cc in range(0, n_chunks):
        t0 = bos + (n_chunks - 1 - cc) * BT
        qt = load_rows(q, t0, eos, i_h, H, K, ck, BT)
        kt = load_rows(k, t0, eos, i_h, H, K, ck, BT)
        dot = load_rows(do, t0, eos, i_h, H, V, cv, BT)
        At = tl.dot(kt, tl.trans(qt), input_precision=DOT_PREC)
        if DECAY == 0:
            At = tl.where(causal_t, At, 0.) * scale
            dvt = tl.dot(kt, dH.to(dt), input_precision=DOT_PREC)
            dvt = tl.dot(At.to(dt), dot, dvt, input_precision=DOT_PREC)
            dH += tl.dot(tl.trans(qt), dot, input_precision=DOT_PREC) * scale
        else:
            b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            At = At * (tl.exp(tl.where(causal_t, b[None, :] - b[:, None], float("-inf")))
                       * scale)
            dvt = tl.dot(kt, dH.to(dt), input_precision=DOT_PREC) * tl.exp(b_last - b)[:, None]
            dvt = tl.dot(At.to(dt), dot, dvt, input_precision=DOT_PREC)
            dod = (dot * (tl.exp(b) * scale)[:, None]).to(dt)
            dH = tl.dot(tl.trans(qt), dod, dH * tl.exp(b_last), input_precision=DOT_PREC)
        store_rows(dv, dvt, t0, eos, i_h, H, V, cv, BT)


dv_split_kernel = tuned(_dv_split_kernel, key=["BKF", "V", "BT", "DECAY"], tune_block="BVS",
                        candidates=_SPLIT_SHAPES)
