"""Backward Triton kernels, fused variant: one forward walk for dq and dM, one backward walk for
dk and dv (`triton_backward_split.py` has the default variant, which carries smaller states).
With b the chunk-local cumulative log-decay and D_ij = exp(b_i - b_j) for i >= j (0
otherwise), per chunk with entering state S and state gradient dH at its end:

  dq_i = scale [sum_j D_ij (do_i . v_j) k_j + exp(b_i) do_i S^T]
  dk_j = scale sum_i D_ij (do_i . v_j) q_i + exp(b_last - b_j) v_j dH^T
  dv_j = scale sum_i D_ij (q_i . k_j) do_i + exp(b_last - b_j) k_j dH
  dH(entering) = exp(b_last) dH + scale sum_i exp(b_i) q_i^T do_i

`dq_kernel` walks each segment forwards (rebuilding S from the saved segment state) and also
sums the segment's dM = scale sum_i exp(G_i - G_start) q_i^T do_i; the reverse segment scan
turns those into dH at each segment's end; `dkv_kernel` then walks each segment backwards.
For the log-decay gradient each kernel emits a per-token partial, q.dq and k.dk: the
gradient w.r.t. the cumulative decay G_t is q_t.dq_t - k_t.dk_t (see `chunked.py`).
Partial results per V-block (dq, dk, the dot products) go to fp32 buffers [NV, ...] that the
caller sums when NV > 1; with one V-block they are written in the final dtype directly.
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


@triton.jit
def _dq_kernel(q, k, v, do, dq, dgq, g, gamma, seg_bos, seg_eos, s_seg, dm_out, scale, TT, H,
               K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr,
               DECAY: tl.constexpr, NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    NV = (V + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_h = (pid // NV) % H
    i_s = pid // (NV * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    rows = tl.arange(0, BT)
    causal = rows[:, None] >= rows[None, :]
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    dt = q.dtype.element_ty
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    smask = (ck < K)[:, None] & (cv < V)[None, :]
    S = tl.load(s_seg + base + ck[:, None] * V + cv[None, :], mask=smask, other=0.)
    dM = tl.zeros([BK, BV], dtype=tl.float32)
    # Partial buffers are [NV, TT, H, ...]; with NV == 1 this offset is 0.
    dq_p = dq + i_v.to(tl.int64) * TT * H * K
    dg_p = dgq + i_v.to(tl.int64) * TT * H
    off = 0.0  # log-decay from the segment start to the current chunk start (<= 0)
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for c in range(0, n_chunks):
        t0 = bos + c * BT
        qt = load_rows(q, t0, eos, i_h, H, K, ck, BT)
        kt = load_rows(k, t0, eos, i_h, H, K, ck, BT)
        vt = load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = load_rows(do, t0, eos, i_h, H, V, cv, BT)
        dA = tl.dot(dot, tl.trans(vt), input_precision=DOT_PREC)
        if DECAY == 0:
            dA = tl.where(causal, dA, 0.)
            dqt = tl.dot(dot, tl.trans(S.to(dt)), input_precision=DOT_PREC)
            dqt = tl.dot(dA.to(dt), kt, dqt, input_precision=DOT_PREC)
            dM = tl.dot(tl.trans(qt), dot, dM, input_precision=DOT_PREC)
            S = tl.dot(tl.trans(kt), vt, S, input_precision=DOT_PREC)
        else:
            b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            dA = dA * tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            # Decays scale the products' rows, or the one operand that must be scaled, so
            # the raw tiles feed the MMAs straight from shared memory.
            dqt = tl.dot(dot, tl.trans(S.to(dt)), input_precision=DOT_PREC) * tl.exp(b)[:, None]
            dqt = tl.dot(dA.to(dt), kt, dqt, input_precision=DOT_PREC)
            dod = (dot * tl.exp(off + b)[:, None]).to(dt)
            dM = tl.dot(tl.trans(qt), dod, dM, input_precision=DOT_PREC)
            off += b_last
            vd = (vt * tl.exp(b_last - b)[:, None]).to(dt)
            S = tl.dot(tl.trans(kt), vd, S * tl.exp(b_last), input_precision=DOT_PREC)
        dqt = dqt * scale
        store_rows(dq_p, dqt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            t = t0 + rows
            tl.store(dg_p + t * H + i_h, tl.sum(qt.to(tl.float32) * dqt, axis=1), mask=t < eos)
    tl.store(dm_out + base + ck[:, None] * V + cv[None, :], dM * scale, mask=smask)


# Not autotuned: the value-block size fixes the partial buffers the caller allocates.
dq_kernel = _dq_kernel


@triton.jit
def _dkv_kernel(q, k, v, do, dk, dv, dgk, g, gamma, seg_bos, seg_eos, e_seg, scale, TT, H,
                K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr,
                DECAY: tl.constexpr, NEED_DG: tl.constexpr, DOT_PREC: tl.constexpr):
    NV = (V + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_h = (pid // NV) % H
    i_s = pid // (NV * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    rows = tl.arange(0, BT)
    # Transposed tiles: entry [j, i] pairs key row j with query row i, kept when i >= j.
    causal_t = rows[:, None] <= rows[None, :]
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    dt = q.dtype.element_ty
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    smask = (ck < K)[:, None] & (cv < V)[None, :]
    dH = tl.load(e_seg + base + ck[:, None] * V + cv[None, :], mask=smask, other=0.)
    dk_p = dk + i_v.to(tl.int64) * TT * H * K
    dg_p = dgk + i_v.to(tl.int64) * TT * H
    n_chunks = tl.cdiv(eos - bos, BT).to(tl.int32)
    for cc in range(0, n_chunks):
        t0 = bos + (n_chunks - 1 - cc) * BT
        qt = load_rows(q, t0, eos, i_h, H, K, ck, BT)
        kt = load_rows(k, t0, eos, i_h, H, K, ck, BT)
        vt = load_rows(v, t0, eos, i_h, H, V, cv, BT)
        dot = load_rows(do, t0, eos, i_h, H, V, cv, BT)
        At = tl.dot(kt, tl.trans(qt), input_precision=DOT_PREC)
        dAt = tl.dot(vt, tl.trans(dot), input_precision=DOT_PREC)
        if DECAY == 0:
            At = tl.where(causal_t, At, 0.) * scale
            dAt = tl.where(causal_t, dAt, 0.) * scale
            dvt = tl.dot(kt, dH.to(dt), input_precision=DOT_PREC)
            dvt = tl.dot(At.to(dt), dot, dvt, input_precision=DOT_PREC)
            dkt = tl.dot(vt, tl.trans(dH.to(dt)), input_precision=DOT_PREC)
            dkt = tl.dot(dAt.to(dt), qt, dkt, input_precision=DOT_PREC)
            dH += tl.dot(tl.trans(qt), dot, input_precision=DOT_PREC) * scale
        else:
            b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
            Dt = tl.exp(tl.where(causal_t, b[None, :] - b[:, None], float("-inf"))) * scale
            At = At * Dt
            dAt = dAt * Dt
            w = tl.exp(b_last - b)[:, None]
            dvt = tl.dot(kt, dH.to(dt), input_precision=DOT_PREC) * w
            dvt = tl.dot(At.to(dt), dot, dvt, input_precision=DOT_PREC)
            dkt = tl.dot(vt, tl.trans(dH.to(dt)), input_precision=DOT_PREC) * w
            dkt = tl.dot(dAt.to(dt), qt, dkt, input_precision=DOT_PREC)
            dod = (dot * (tl.exp(b) * scale)[:, None]).to(dt)
            dH = tl.dot(tl.trans(qt), dod, dH * tl.exp(b_last), input_precision=DOT_PREC)
        store_rows(dv, dvt, t0, eos, i_h, H, V, cv, BT)
        store_rows(dk_p, dkt, t0, eos, i_h, H, K, ck, BT)
        if NEED_DG:
            t = t0 + rows
            tl.store(dg_p + t * H + i_h, tl.sum(kt.to(tl.float32) * dkt, axis=1), mask=t < eos)


dkv_kernel = _dkv_kernel
