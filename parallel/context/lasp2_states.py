"""Per-rank state math of LASP-2 in plain torch: what crosses ranks and what it does locally.

Notation for one segment of local tokens (see `lasp2_plan`), per head, log-decays g <= 0:
  first piece F (continues a document from before the segment):
      G_t = sum_{lo <= u <= t} g_u,   o_t += scale * exp(G_t) q_t P      (P: carried-in state)
  last piece L (hands its state on):
      R_s = sum_{s < u < hi} g_u,     M = sum_{s in L} exp(R_s) k_s v_s^T
  a = sum_{lo <= u < hi} g_u (only used when the segment has no document start).
Across segments in global order the carried-in state is the segmented, decayed prefix
  P_j = sum_{l before j, no document start strictly between} exp(sum_{l<m<j} a_m) M_l,
and backward mirrors it with the suffix D_l = sum_j W[j, l] dP_j of the prefix gradients
dP_j = scale * sum_{t in F_j} exp(G_t) q_t^T do_t. Every exponent is a direct sum of
log-decays (never a difference of large cumulative sums), so every weight is <= 1 and exact.

The gate gradient of the cross terms needs no extra communication: through P_j it is
scale * sum_{t>=u in F} exp(G_t) (q_t P_j).do_t (a local reverse cumsum), through M it is
the forward cumsum of k_s.dk_s over L, and through a_m it is exp(a_m) <P_m, D_m>.
"""
from __future__ import annotations

import torch

# the start index travels as two floats (start // 2**16, start % 2**16) so it stays exact in fp32
_START_BASE = 65536.0
_PAD_HI = float(2 ** 24)  # puts unused slots after every real segment (identity elements anyway)
META = 3  # start_hi, start_lo, has_doc_start; then a[H], then M[H*K*V]


def decays_from(g_gamma, g, t: int, h: int, device, dtype) -> torch.Tensor:
    """Per-token log-decay [T, H] in the accumulation dtype, zeros for no decay."""
    if g is not None:
        return g.to(dtype)
    if g_gamma is not None:
        return g_gamma.to(dtype).view(1, h).expand(t, h)
    return torch.zeros(t, h, device=device, dtype=dtype)


def first_piece_weights(g_first: torch.Tensor) -> torch.Tensor:
    """exp(G_t), G the inclusive cumsum from the segment start: [T_F, H], each <= 1."""
    return torch.exp(torch.cumsum(g_first, 0))


def last_piece_weights(g_last: torch.Tensor) -> torch.Tensor:
    """exp(R_s), R the exclusive reverse cumsum to the segment end: [T_L, H], each <= 1."""
    rc = torch.flip(torch.cumsum(torch.flip(g_last, [0]), 0), [0])
    excl = torch.cat([rc[1:], torch.zeros_like(rc[:1])])  # summed from the end, no cancellation
    return torch.exp(excl)


def pack_states(plan, k, v, gl) -> torch.Tensor:
    """This rank's all-gather record: [slots, META + H + H*K*V] in the accumulation dtype."""
    h, kd, vd = k.shape[1], k.shape[2], v.shape[2]
    rec = torch.zeros(plan.slots, META + h + h * kd * vd, device=k.device, dtype=gl.dtype)
    rec[:, 0] = _PAD_HI
    for i, s in enumerate(plan.segments):
        ew = last_piece_weights(gl[s.last_start:s.hi])
        m = torch.einsum("th,thk,thv->hkv", ew, k[s.last_start:s.hi].to(gl.dtype),
                         v[s.last_start:s.hi].to(gl.dtype))
        rec[i, 0] = float(s.start // int(_START_BASE))
        rec[i, 1] = float(s.start % int(_START_BASE))
        rec[i, 2] = float(s.has_doc_start)
        if not s.has_doc_start:
            rec[i, META:META + h] = gl[s.lo:s.hi].sum(0)
        rec[i, META + h:] = m.reshape(-1)
    return rec


def unpack_meta(gathered: torch.Tensor, h: int):
    """(sort key [S] fp64, total log-decay a [S, H], has-document-start flag [S] bool)."""
    key = gathered[:, 0].double() * _START_BASE + gathered[:, 1].double()
    return key, gathered[:, META:META + h], gathered[:, 2] > 0.5


def prefix_weights(key: torch.Tensor, a: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """W[j, l, h]: weight of slot l's state in slot j's carried-in state (segmented scan).

    Slots are ordered by `key` (their global start), whatever rank holds them, so any layout
    whose segments tile the stream works. O(S^3) on S = cp * slots entries: tiny.
    """
    before = key.unsqueeze(0) < key.unsqueeze(1)                                    # [j, l]
    between = (key.view(1, -1, 1) < key.view(1, 1, -1)) & (key.view(1, 1, -1) < key.view(-1, 1, 1))
    expo = torch.einsum("jlm,mh->jlh", between.to(a.dtype), a)
    blocked = (between & flag.view(1, 1, -1)).any(-1)
    valid = (before & ~blocked).unsqueeze(-1)
    # mask before exponentiating: invalid pairs get weight exactly 0, valid ones exp(<=0) <= 1
    return torch.exp(expo.masked_fill(~valid, float("-inf")))


def add_cross_output(o, plan, q, gl, carried, scale):
    """o[F] += scale * exp(G) q P for each segment's first piece (o in the accumulation dtype)."""
    for i, s in enumerate(plan.segments):
        if s.first_end == s.lo:
            continue
        ew = first_piece_weights(gl[s.lo:s.first_end])
        qp = torch.einsum("thk,hkv->thv", q[s.lo:s.first_end].to(gl.dtype), carried[i])
        o[s.lo:s.first_end] += scale * ew.unsqueeze(-1) * qp
    return o


def prefix_grads(plan, q, do, gl, scale) -> torch.Tensor:
    """dP per slot [slots, H, K, V]: the gradient of the loss w.r.t. each carried-in state."""
    h, kd, vd = q.shape[1], q.shape[2], do.shape[2]
    out = torch.zeros(plan.slots, h, kd, vd, device=q.device, dtype=gl.dtype)
    for i, s in enumerate(plan.segments):
        if s.first_end == s.lo:
            continue
        ew = first_piece_weights(gl[s.lo:s.first_end])
        out[i] = scale * torch.einsum("th,thk,thv->hkv", ew, q[s.lo:s.first_end].to(gl.dtype),
                                      do[s.lo:s.first_end].to(gl.dtype))
    return out


def cross_grads(plan, q, k, v, do, gl, carried, suffix, a_own, scale, need_g: bool):
    """Cross-rank parts of (dq, dk, dv, dg), in the accumulation dtype, from the carried-in
    states P (forward prefix) and the suffix gradients D of this rank's slots."""
    acc = gl.dtype
    dq = torch.zeros(q.shape, device=q.device, dtype=acc)
    dk = torch.zeros(k.shape, device=k.device, dtype=acc)
    dv = torch.zeros(v.shape, device=v.device, dtype=acc)
    dg = torch.zeros(gl.shape, device=gl.device, dtype=acc) if need_g else None
    # the states may come back in bf16 when the forward ran under autocast (CAD nano-batches)
    carried, suffix = carried.to(acc), suffix.to(acc)
    for i, s in enumerate(plan.segments):
        if s.first_end > s.lo:  # first piece read P
            f = slice(s.lo, s.first_end)
            ew = first_piece_weights(gl[f])
            dq[f] = scale * ew.unsqueeze(-1) * torch.einsum("thv,hkv->thk", do[f].to(acc), carried[i])
            if need_g:  # d/dg_u of exp(G_t), t >= u: reverse cumsum of q_t . dq_t
                x = (q[f].to(acc) * dq[f]).sum(-1)
                dg[f] += torch.flip(torch.cumsum(torch.flip(x, [0]), 0), [0])
        lp = slice(s.last_start, s.hi)  # last piece wrote M
        ew = last_piece_weights(gl[lp]).unsqueeze(-1)
        dk[lp] = ew * torch.einsum("hkv,thv->thk", suffix[i], v[lp].to(acc))
        dv[lp] = ew * torch.einsum("hkv,thk->thv", suffix[i], k[lp].to(acc))
        if need_g:
            # d/dg_u of exp(R_s), s < u: exclusive forward cumsum of k_s . dk_s
            y = (k[lp].to(acc) * dk[lp]).sum(-1)
            cy = torch.cumsum(y, 0)
            dg[lp] += torch.cat([torch.zeros_like(cy[:1]), cy[:-1]])
            if not s.has_doc_start:  # the segment's total decay a carried earlier states past it
                da = torch.exp(a_own[i]) * (carried[i] * suffix[i]).sum((-2, -1))
                dg[s.lo:s.hi] += da
    return dq, dk, dv, dg
