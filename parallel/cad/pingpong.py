"""The CAD forward/backward schedule as one autograd function.

Forward, per half h (one half without ping-pong):
    dispatch[h] (q, k, v -> servers) | serve[h] | return[h] (o -> origins)
With two halves, half 1's dispatch is in flight while half 0 is served, and half 0's
return is in flight while half 1 is served:

    comm:     d0 | d1        | r0       | r1
    compute:     | serve 0   | serve 1  |

The backward mirrors it with dO going out and [dq | dk | dv] coming back; gradients of a
key sent to several servers are summed at its origin by index_add.

Every rank issues the same collectives in the same order (d0, d1, r0, r1), so the
all-to-alls match up across the group whatever each rank's share of the work is.

What the server keeps for the backward (received rows, o, lse per half) goes through
`ctx.save_for_backward`, the same number of tensors on every rank, so activation
checkpointing frees it after the forward and recomputes it once with the rest of the block.
"""
from __future__ import annotations

import torch

from parallel.cad.dispatch import Exchange, Layout
from parallel.cad.server import serve_backward, serve_forward


class StepRuntime:
    """What one call needs: this rank's layouts (one per half) and the group."""

    def __init__(self, layouts: list[Layout], group, softmax_scale: float):
        self.layouts, self.group, self.scale = layouts, group, softmax_scale


class CADFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rt: StepRuntime):
        T, hq, d = q.shape
        hkv = k.shape[1]
        pool = torch.cat([q.reshape(-1, d), k.reshape(-1, d), v.reshape(-1, d)])
        halves = rt.layouts

        def dispatch(h):
            L = halves[h]
            return Exchange(pool.index_select(0, L.send_rows), L.send_splits, L.recv_splits,
                            rt.group, async_op=True)

        inflight = dispatch(0)
        returns, saved = [], []
        for h, L in enumerate(halves):
            recv = inflight.wait()
            if h + 1 < len(halves):
                inflight = dispatch(h + 1)  # overlaps this half's kernel
            o_rows, (o_srv, lse_srv) = serve_forward(L, recv, hq, hkv, d, rt.scale)
            saved += [recv, o_srv, lse_srv]
            returns.append(Exchange(o_rows, L.q_recv_splits, L.q_send_splits, rt.group,
                                    async_op=True))
        o = q.new_zeros(q.shape)
        for L, ex in zip(halves, returns):
            o.index_copy_(0, L.q_tok, ex.wait().view(-1, hq, d))
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(*saved)
        ctx.rt, ctx.shape = rt, (T, hq, hkv, d)
        return o

    @staticmethod
    def backward(ctx, d_o):
        T, hq, hkv, d = ctx.shape
        rt, halves = ctx.rt, ctx.rt.layouts
        saved = ctx.saved_tensors
        d_o = d_o.contiguous()

        def dispatch(h):
            L = halves[h]
            return Exchange(d_o.index_select(0, L.q_tok).reshape(-1, d), L.q_send_splits,
                            L.q_recv_splits, rt.group, async_op=True)

        inflight = dispatch(0)
        returns = []
        for h, L in enumerate(halves):
            d_o_recv = inflight.wait()
            if h + 1 < len(halves):
                inflight = dispatch(h + 1)
            recv, o_srv, lse_srv = saved[3 * h:3 * h + 3]
            d_recv = serve_backward(L, recv, o_srv, lse_srv, d_o_recv, hq, hkv, d, rt.scale)
            returns.append(Exchange(d_recv, L.recv_splits, L.send_splits, rt.group,
                                    async_op=True))
        d_pool = d_o.new_zeros((T * (hq + 2 * hkv), d))
        for L, ex in zip(halves, returns):
            d_pool.index_add_(0, L.send_rows, ex.wait())
        dq, dk, dv = torch.split(d_pool, [T * hq, T * hkv, T * hkv])
        return dq.view(T, hq, d), dk.view(T, hkv, d), dv.view(T, hkv, d), None
