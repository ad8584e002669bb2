"""Plain-torch varlen attention: the readable definition every kernel and strategy is checked against.

Slow (a Python loop over segments) but differentiable through autograd in any dtype,
including fp64, and it returns the log-sum-exp so partial results can be merged.
"""
from __future__ import annotations

import torch


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
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    outs, lses = [], []
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs = q[cq[i]:cq[i + 1]].to(acc_dtype)
        ks = k[ck[i]:ck[i + 1]].to(acc_dtype).repeat_interleave(group, dim=1)
        vs = v[ck[i]:ck[i + 1]].to(acc_dtype).repeat_interleave(group, dim=1)
        m, n = qs.shape[0], ks.shape[0]
        if m == 0:
            continue
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if causal:
            qi = torch.arange(m, device=q.device).unsqueeze(1)
            kj = torch.arange(n, device=q.device).unsqueeze(0)
            scores = scores.masked_fill(kj > qi + (n - m), float("-inf"))
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


def merge_partials_reference(
    outs: list[torch.Tensor], lses: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets: o [T, H, D], lse [H, T] each.

    Works in fp32 (fp64 for fp64 input); partials with lse = -inf contribute nothing.
    """
    acc = torch.float64 if lses[0].dtype == torch.float64 else torch.float32
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
