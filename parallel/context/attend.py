"""One block of attention for the ring-style strategies: forward, lse merge, and backward.

The blockwise backward re-runs the block's local kernel under autograd and feeds it the
gradient of the *merged* output. With o = sum_b w_b o_b and w_b = exp(lse_b - lse), the
gradients a block's (o_b, lse_b) receive are
    do_b   = w_b * dO
    dlse_b = w_b * <dO, o_b - o>          (per query and head)
so the kernel's autograd must differentiate its returned lse too (the torch reference does;
a kernel that cannot fails loudly in torch.autograd.grad rather than giving wrong values).
"""
from __future__ import annotations

import torch

from distca_kernels.flash_attn import flash_attn_varlen_func, merge_attention_partials
from parallel.context.block_plan import BlockPlan


def _rows(x: torch.Tensor, rows: torch.Tensor | None, dim: int = 0) -> torch.Tensor:
    return x if rows is None else x.index_select(dim, rows)


def attend_block(q, k, v, plan: BlockPlan, scale: float):
    """(o_b [rows, Hq, D], lse_b [Hq, rows]) for the plan's query rows against this key block."""
    return flash_attn_varlen_func(_rows(q, plan.q_rows), _rows(k, plan.k_rows), _rows(v, plan.k_rows),
                                  plan.cu_q, plan.cu_k, plan.max_q, plan.max_k,
                                  softmax_scale=scale, causal=plan.causal, return_lse=True)


def merge_into(o: torch.Tensor, lse: torch.Tensor, rows, o_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Fold a partial result into the running (o [T,H,D], lse [H,T]) accumulators in place."""
    # a kernel run under autocast on CPU (the torch reference) returns a bf16 lse; merge in the accumulator's
    o_new, lse_new = merge_attention_partials([_rows(o, rows), o_b], [_rows(lse, rows, 1), lse_b.to(lse.dtype)])
    if rows is None:
        o.copy_(o_new)
        lse.copy_(lse_new)
    else:
        o.index_copy_(0, rows, o_new.to(o.dtype))
        lse.index_copy_(1, rows, lse_new.to(lse.dtype))


def attend_block_backward(q, k, v, plan: BlockPlan, scale: float, do, o, lse):
    """(dq_b, dk_b, dv_b) of one block, for the plan's query rows / key rows.

    do, o: [T, Hq, D] gradient and merged output, lse [Hq, T] merged (accumulator dtype)."""
    rows = plan.q_rows
    with torch.enable_grad():
        qs = _rows(q, rows).detach().requires_grad_()
        ks = _rows(k, plan.k_rows).detach().requires_grad_()
        vs = _rows(v, plan.k_rows).detach().requires_grad_()
        o_b, lse_b = flash_attn_varlen_func(qs, ks, vs, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k,
                                            softmax_scale=scale, causal=plan.causal, return_lse=True)
    do_r, o_r = _rows(do, rows), _rows(o, rows)
    w = torch.exp(lse_b.detach().to(lse.dtype) - _rows(lse, rows, 1))        # [H, m]
    do_b = do_r * w.t().unsqueeze(-1)
    dlse_b = w * (do_r * (o_b.detach().to(do.dtype) - o_r)).sum(-1).t()
    return torch.autograd.grad((o_b, lse_b), (qs, ks, vs),
                               (do_b.to(o_b.dtype), dlse_b.to(lse_b.dtype)))
