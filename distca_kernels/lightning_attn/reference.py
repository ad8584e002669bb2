"""Plain-torch linear attention with decay: the definition the Triton kernel is checked against.

o_t = scale * sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + scale * exp(G_t) q_t S0,
where G_t is the inclusive cumulative sum of the per-step log-decay within a sequence.
The final state is S_T = sum_s exp(G_T - G_s) k_s v_s^T + exp(G_T) S0.
This is the dense O(T^2) masked form, computed per sequence in fp32 (fp64 for fp64 input).
"""
from __future__ import annotations

import torch

from distca_kernels.precision import accumulator_dtype


def _log_decay(g_gamma, g, b, t, h, device, dtype):
    """Per-step log-decay [B, T, H] from either form (or zeros for no decay)."""
    if g is not None:
        return g.to(dtype)
    if g_gamma is not None:
        return g_gamma.to(dtype).view(1, 1, h).expand(b, t, h)
    return torch.zeros(b, t, h, device=device, dtype=dtype)


def _one_sequence(q, k, v, gl, s0, scale):
    """q,k [T,H,K], v [T,H,V], gl [T,H], s0 [H,K,V] or None -> (o [T,H,V], sT [H,K,V])."""
    t = q.shape[0]
    G = torch.cumsum(gl, dim=0)  # [T, H]
    diff = G.unsqueeze(1) - G.unsqueeze(0)  # [t, s, H]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    # Mask before exponentiating so future positions (positive exponents) never overflow.
    decay = torch.exp(diff.masked_fill(~causal.unsqueeze(-1), float("-inf")))
    scores = torch.einsum("thk,shk->tsh", q, k) * decay
    o = torch.einsum("tsh,shv->thv", scores, v)
    g_end = G[-1] if t > 0 else torch.zeros(q.shape[1], dtype=q.dtype, device=q.device)
    k_to_end = k * torch.exp(g_end.unsqueeze(0) - G).unsqueeze(-1)
    sT = torch.einsum("thk,thv->hkv", k_to_end, v)
    if s0 is not None:
        o = o + torch.einsum("thk,hkv->thv", q * torch.exp(G).unsqueeze(-1), s0)
        sT = sT + torch.exp(g_end).view(-1, 1, 1) * s0
    return o * scale, sT


def lightning_attn_reference(q, k, v, g_gamma=None, g=None, scale=None, initial_state=None,
                             output_final_state=False, cu_seqlens=None):
    """Same signature and shapes as `chunk_lightning_attn`; see the module docstring."""
    b, t, h, kd = q.shape
    scale = kd ** -0.5 if scale is None else scale
    acc = accumulator_dtype(q.dtype)
    gl = _log_decay(g_gamma, g, b, t, h, q.device, acc)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    s0 = initial_state.to(acc) if initial_state is not None else None
    if cu_seqlens is None:
        bounds = [(bi, 0, t) for bi in range(b)]
    else:
        cs = cu_seqlens.tolist()
        bounds = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    outs = torch.zeros(b, t, h, v.shape[-1], dtype=acc, device=q.device)
    finals = []
    for n, (bi, lo, hi) in enumerate(bounds):
        o, sT = _one_sequence(qa[bi, lo:hi], ka[bi, lo:hi], va[bi, lo:hi], gl[bi, lo:hi],
                              None if s0 is None else s0[n], scale)
        outs[bi, lo:hi] = o
        finals.append(sT)
    o = outs.to(q.dtype)
    final = torch.stack(finals).float() if acc != torch.float64 else torch.stack(finals)
    return o, (final if output_final_state else None)


def lightning_attn_recurrent_reference(q, k, v, g_gamma=None, g=None, scale=None,
                                       initial_state=None, output_final_state=False,
                                       cu_seqlens=None):
    """The same function as `lightning_attn_reference`, written as the token-by-token
    recurrence S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale * q_t S_t.

    O(T) steps of O(K*V) work: slow, but an independent derivation of the dense form (no
    cumulative sums, no masks), so agreement between the two checks both.
    """
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    scale = kd ** -0.5 if scale is None else scale
    acc = accumulator_dtype(q.dtype)
    gl = _log_decay(g_gamma, g, b, t, h, q.device, acc)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    if cu_seqlens is None:
        bounds = [(bi, 0, t) for bi in range(b)]
    else:
        cs = cu_seqlens.tolist()
        bounds = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    rows = [[None] * t for _ in range(b)]
    finals = []
    for n, (bi, lo, hi) in enumerate(bounds):
        state = (initial_state[n].to(acc) if initial_state is not None
                 else torch.zeros(h, kd, vd, dtype=acc, device=q.device))
        for s in range(lo, hi):
            decay = torch.exp(gl[bi, s]).view(h, 1, 1)
            state = decay * state + ka[bi, s].unsqueeze(-1) * va[bi, s].unsqueeze(-2)
            rows[bi][s] = scale * torch.einsum("hk,hkv->hv", qa[bi, s], state)
        finals.append(state)
    zero = torch.zeros(h, vd, dtype=acc, device=q.device)
    o = torch.stack([torch.stack([r if r is not None else zero for r in row]) for row in rows])
    final = torch.stack(finals)
    final = final if acc == torch.float64 else final.float()
    return o.to(q.dtype), (final if output_final_state else None)
