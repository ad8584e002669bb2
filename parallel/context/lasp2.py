"""LASP-2: sequence parallelism for linear-attention layers with one state all-gather per pass.

Forward, per layer and rank: compute the state each local segment hands on (d_k x d_v per
head, fp32 or fp64, keys decayed to the segment end) with its total log-decay and a
"has a document start" flag; start ONE asynchronous all-gather of these records over
`state.cp_group`; run the intra-rank chunked kernel meanwhile (pieces from the shard, no
initial state); then form each segment's carried-in state as a segmented, decayed prefix
over all gathered slots in global order and add q-side contributions. Backward mirrors it:
the prefix gradients are all-gathered (overlapped with the intra backward), the decayed
suffix gives the cross-rank terms of dk, dv and, with the saved prefix, of dq and the gates.

The bytes sent per pass depend on cp, heads and head dims, never on the sequence length.
Segment order comes from the gathered start indices, so contiguous and zigzag shards both
work (with zigzag a rank holds two chunks, i.e. two slots). The math lives in
`lasp2_states`, the token-layout bookkeeping in `lasp2_plan`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from distca_kernels.lightning_attn import chunk_lightning_attn_backward, chunk_lightning_attn_forward
from distca_kernels.precision import accumulator_dtype
from parallel import comm
from parallel.context.lasp2_plan import LAYOUT_SLOTS, Lasp2Plan, plan_from_shard
from parallel.context.strategy import Strategy
from parallel.context.lasp2_states import (META, add_cross_output, cross_grads, decays_from,
                                           pack_states, prefix_grads, prefix_weights, unpack_meta)


def _start_all_gather(send: torch.Tensor, group):
    """Launch the all-gather of `send` (rows stacked rank by rank); returns (out, work)."""
    if group is None:  # not distributed: this rank is the whole group
        return send, None
    size = dist.get_world_size(group)
    out = send.new_empty((size * send.shape[0],) + tuple(send.shape[1:]))
    return out, comm.all_gather_into_tensor(out, send.contiguous(), group, async_op=True)


def _intra(q, k, v, g_gamma, g, cu_seqlens, scale):
    """Intra-rank attention on the local pieces, without autograd: (o, residuals). The kernel's
    residuals are saved by the Function with its own tensors, so activation checkpointing
    frees and recomputes them with the rest (an autograd graph built here would not be)."""
    if q.shape[0] == 0:
        return q.new_zeros(q.shape[:2] + (v.shape[-1],)), None
    o, res = chunk_lightning_attn_forward(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                          g_gamma=g_gamma, g=None if g is None else g.unsqueeze(0),
                                          scale=scale, cu_seqlens=cu_seqlens)
    return o.squeeze(0), res


def _intra_backward(do, q, k, v, g_gamma, g, cu_seqlens, saved, res, need_decay_grad):
    """(dq, dk, dv, dg_gamma, dg) of the intra-rank part; None where there is no token."""
    if res is None:
        return [None] * 5
    dq, dk, dv, dgg, dg = chunk_lightning_attn_backward(
        do.unsqueeze(0), q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), saved, res,
        g_gamma=g_gamma, g=None if g is None else g.unsqueeze(0), cu_seqlens=cu_seqlens,
        need_decay_grad=need_decay_grad)
    return [dq.squeeze(0), dk.squeeze(0), dv.squeeze(0), dgg, None if dg is None else dg.squeeze(0)]


class _Lasp2Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g_gamma, g, plan: Lasp2Plan, cu_seqlens, scale: float, group,
                rank: int):
        acc = accumulator_dtype(q.dtype)
        t, h, kd = q.shape
        vd = v.shape[-1]
        gl = decays_from(g_gamma, g, t, h, q.device, acc)
        record = pack_states(plan, k, v, gl)
        gathered, work = _start_all_gather(record, group)
        o_intra, res = _intra(q, k, v, g_gamma, g, cu_seqlens, scale)
        if work is not None:
            work.wait()
        key, a, flag = unpack_meta(gathered, h)
        own = slice(rank * plan.slots, (rank + 1) * plan.slots)
        weights = prefix_weights(key, a, flag)
        carried = torch.einsum("jlh,lhkv->jhkv", weights[own],
                               gathered[:, META + h:].reshape(-1, h, kd, vd))
        # a copy: the cross terms are added in place and o_intra must stay as the kernel made it
        o = add_cross_output(o_intra.to(acc, copy=True), plan, q, gl, carried, scale)
        o = o.to(q.dtype)

        intra_saved = res.tensors if res is not None else ()
        ctx.save_for_backward(q, k, v, g_gamma, g, cu_seqlens, gl, carried, key, a, flag,
                              *intra_saved)
        ctx.intra = res
        ctx.plan, ctx.scale, ctx.group, ctx.rank = plan, scale, group, rank
        ctx.decay_mode = "g" if g is not None else ("g_gamma" if g_gamma is not None else None)
        ctx.gate_dtype = g.dtype if g is not None else (g_gamma.dtype if g_gamma is not None else None)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, g_gamma, g, cu_seqlens, gl, carried, key, a, flag, *intra_saved = ctx.saved_tensors
        plan, scale, rank = ctx.plan, ctx.scale, ctx.rank
        dp = prefix_grads(plan, q, do, gl, scale)
        gathered, work = _start_all_gather(dp, ctx.group)
        need_g = ctx.decay_mode is not None and any(ctx.needs_input_grad[3:5])
        # the intra-rank backward runs while the prefix gradients are gathered
        intra = _intra_backward(do, q, k, v, g_gamma, g, cu_seqlens, intra_saved, ctx.intra, need_g)
        if work is not None:
            work.wait()
        own = slice(rank * plan.slots, (rank + 1) * plan.slots)
        weights = prefix_weights(key, a, flag)
        suffix = torch.einsum("jlh,jhkv->lhkv", weights[:, own], gathered)
        dq, dk, dv, dg = cross_grads(plan, q, k, v, do, gl, carried, suffix, a[own], scale, need_g)

        def total(i, cross, dtype):
            if not ctx.needs_input_grad[i]:
                return None
            if intra[i] is not None:
                cross = cross + intra[i].to(cross.dtype)
            return cross.to(dtype)

        grads = [total(0, dq, q.dtype), total(1, dk, k.dtype), total(2, dv, v.dtype), None, None]
        if need_g and ctx.decay_mode == "g":
            grads[4] = total(4, dg, ctx.gate_dtype)
        elif need_g:  # g_gamma is shared by every token: its gradient sums them (this rank's part)
            grads[3] = total(3, dg.sum(0), ctx.gate_dtype)
        return (*grads, None, None, None, None, None)


class Lasp2LinearAttention(Strategy):
    """Linear-attention strategy for cp > 1: `strategy(q, k, v, shard, g_gamma, g, scale) -> o`.

    q/k [T_local, H, K], v [T_local, H, V], g_gamma [H] or g [T_local, H] (log-decays <= 0),
    in the shard's local order. The shard may use the contiguous or the zigzag layout.
    """
    layouts = tuple(LAYOUT_SLOTS)

    def __init__(self, group=None):
        self.group = group  # the CP group (None: one rank)

    def __call__(self, q, k, v, shard, g_gamma=None, g=None, scale=None):
        _check_inputs(q, k, v, shard, g_gamma, g)
        group = self.group
        rank, size = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
        plan = shard.memo(("lasp2", rank, size), lambda: plan_from_shard(shard, rank, size))
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return _Lasp2Function.apply(q, k, v, g_gamma, g, plan, shard.cu_seqlens.to(q.device), scale,
                                    group, rank)


def _check_inputs(q, k, v, shard, g_gamma, g):
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [T_local, H, K]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}")
    t, h, _ = q.shape
    if v.dim() != 3 or v.shape[:2] != (t, h):
        raise ValueError(f"v must be [T_local, H, V] = [{t}, {h}, V]; got {tuple(v.shape)}")
    if t != shard.num_tokens:
        raise ValueError(f"q has {t} tokens but the shard owns {shard.num_tokens}; pass this "
                         "rank's tokens in the shard's local order")
    if g_gamma is not None and g is not None:
        raise ValueError("pass either g_gamma (constant per-head decay) or g (per-token decay), "
                         "not both")
    if g_gamma is not None and tuple(g_gamma.shape) != (h,):
        raise ValueError(f"g_gamma must be [H] = [{h}]; got {tuple(g_gamma.shape)}")
    if g is not None and tuple(g.shape) != (t, h):
        raise ValueError(f"g must be [T_local, H] = [{t}, {h}]; got {tuple(g.shape)}")
