"""Plain-torch varlen attention: the readable definition every kernel and strategy is checked against.

Slow (a Python loop over segments) but differentiable through autograd in any dtype,
including fp64, and it returns the log-sum-exp so partial results can be merged.
"""
from __future__ import annotations

import torch

from distca_kernels.precision import accumulator_dtype


def _segment_scores(qs: torch.Tensor, ks: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """Scaled scores [h, m, n] of one segment, -inf where the bottom-right causal mask hides a key."""
    m, n = qs.shape[0], ks.shape[0]
    scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
    if causal:
        qi = torch.arange(m, device=qs.device).unsqueeze(1)
        kj = torch.arange(n, device=qs.device).unsqueeze(0)
        scores = scores.masked_fill(kj > qi + (n - m), float("-inf"))
    return scores


def attention_varlen_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [total_q, Hq, D], k/v [total_k, Hkv, D] -> (o [total_q, Hq, D], lse [Hq, total_q]).

    Causal masks are aligned bottom-right: a segment with m queries and n keys lets query i
    see keys 0..n-m+i. Queries that see no key get o = 0 and lse = -inf. lse is fp32, or
    fp64 when the inputs are fp64 (so fp64 tests stay exact).
    """
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    acc_dtype = accumulator_dtype(q.dtype)
    outs, lses = [], []
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs = q[cq[i]:cq[i + 1]].to(acc_dtype)
        ks = k[ck[i]:ck[i + 1]].to(acc_dtype).repeat_interleave(group, dim=1)
        vs = v[ck[i]:ck[i + 1]].to(acc_dtype).repeat_interleave(group, dim=1)
        if qs.shape[0] == 0:
            continue
        scores = _segment_scores(qs, ks, scale, causal)
        lse = torch.logsumexp(scores, dim=-1)  # [h, m]; -inf where a row sees nothing
        safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        p = torch.exp(scores - safe_lse.unsqueeze(-1))
        outs.append(torch.einsum("hqk,khd->qhd", p, vs))
        lses.append(lse)
    if outs:
        o = torch.cat(outs, 0).to(q.dtype)
        lse = torch.cat(lses, 1)
    else:
        o = q.new_zeros(q.shape)
        lse = torch.full((hq, total_q), float("-inf"), dtype=acc_dtype, device=q.device)
    return o, lse


def attention_varlen_reference_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = True,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of `attention_varlen_reference` from the saved (o, lse), in the
    kernels' form: P = exp(S - lse), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O) + dlse),
    dQ = scale dS K, dK = scale dS^T Q (summed over the query heads of a KV head). `do` may be
    None when only lse was used, `dlse` [Hq, total_q] None when only o was.

    Written out rather than differentiated by autograd, so that a caller can run it inside an
    autograd Function's backward without building (or recomputing) a graph of its own."""
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    acc_dtype = accumulator_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=q.device)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qa, qb, ka, kb = cq[i], cq[i + 1], ck[i], ck[i + 1]
        m, n = qb - qa, kb - ka
        if m == 0 or n == 0:
            continue
        qs = q[qa:qb].to(acc_dtype)
        ks = k[ka:kb].to(acc_dtype).repeat_interleave(group, dim=1)
        vs = v[ka:kb].to(acc_dtype).repeat_interleave(group, dim=1)
        dos = do[qa:qb].to(acc_dtype) if do is not None else torch.zeros_like(qs)
        scores = _segment_scores(qs, ks, scale, causal)
        row_lse = lse[:, qa:qb].to(acc_dtype)
        safe = torch.where(torch.isinf(row_lse), torch.zeros_like(row_lse), row_lse)
        p = torch.exp(scores - safe.unsqueeze(-1))                       # [h, m, n]; 0 where masked
        delta = (dos * o[qa:qb].to(acc_dtype)).sum(-1).t()                # [h, m]
        if dlse is not None:  # lse = logsumexp(S) adds dlse * P to dS
            delta = delta - dlse[:, qa:qb].to(acc_dtype)
        dp = torch.einsum("qhd,khd->hqk", dos, vs)
        ds = p * (dp - delta.unsqueeze(-1))
        dq[qa:qb] = torch.einsum("hqk,khd->qhd", ds, ks) * scale
        dk[ka:kb] = (torch.einsum("hqk,qhd->khd", ds, qs) * scale).view(n, hkv, group, d).sum(2)
        dv[ka:kb] = torch.einsum("hqk,qhd->khd", p, dos).view(n, hkv, group, d).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def merge_partials_reference(
    outs: list[torch.Tensor], lses: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets: o [T, H, D], lse [H, T] each.

    Works in fp32 (fp64 for fp64 input); partials with lse = -inf contribute nothing.
    """
    acc = accumulator_dtype(lses[0].dtype)
    lse_stack = torch.stack([l.to(acc) for l in lses])  # [P, H, T]
    # logsumexp by hand: torch.logsumexp's gradient is NaN where every partial is -inf
    # (a query that no rank's keys reach), and that NaN would flow back into the kernels.
    shift = lse_stack.detach().amax(dim=0)
    shift = torch.where(torch.isinf(shift), torch.zeros_like(shift), shift)
    total = torch.exp(lse_stack - shift).sum(dim=0)
    empty = total == 0
    lse = torch.where(empty, torch.full_like(total, float("-inf")),
                      shift + torch.log(torch.where(empty, torch.ones_like(total), total)))
    safe = torch.where(empty, torch.zeros_like(lse), lse)
    w = torch.exp(lse_stack - safe.unsqueeze(0))  # [P, H, T]
    o = sum(w_i.transpose(0, 1).unsqueeze(-1) * o_i.to(acc) for w_i, o_i in zip(w, outs))
    return o.to(outs[0].dtype), lse
