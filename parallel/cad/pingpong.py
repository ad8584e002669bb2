"""The CAD forward/backward schedule as one autograd function.

Forward, per half h (one half without ping-pong):
    dispatch[h] (q, k, v -> servers) | serve[h] | return[h] (o -> origins)
With two halves, half 1's dispatch is in flight while half 0 is served, and half 0's
return is in flight while half 1 is served:

    comm:     d0 | d1        | r0       | r1
    compute:     | serve 0   | serve 1  |

A key goes to a server once per step: half 1's server reads the keys half 0 received
(its layout indexes [recv 0; recv 1]). The backward mirrors the forward in reverse half
order, dO going out and [dq | dk | dv] coming back: half 1's gradient of half 0's keys is
added into half 0's return, which goes last; gradients of a key sent to several servers are
summed at its origin (`row_sums.py`: a copy where no row repeats, else index_add).

Every rank issues the same collectives in the same order (d0, d1, r0, r1; backward dO1, dO0,
r1, r0), so the all-to-alls match up across the group whatever each rank's share of the work is.

What is kept for the backward goes through `ctx.save_for_backward`, the same number of
tensors on every rank, so activation checkpointing frees it after the forward and recomputes
it once with the rest of the block. Two modes (`parallel.cad.backward`):
- stateful: each server keeps the rows it received, o and the LSE of its tasks; the
  backward sends only dO out. Memory follows the plan (what a rank serves).
- resend: servers keep nothing. The LSE comes back with o; each origin keeps q, k, v (the
  block's own activations), o and LSE of its tokens, and the backward resends q, k, v, o,
  LSE and dO. Memory follows token ownership, at the price of a second q/k/v dispatch.
"""
from __future__ import annotations

import torch

from distca_kernels.precision import accumulator_dtype
from parallel.cad.dispatch import Exchange, Layout
from parallel.cad.row_sums import add_rows_into_zeros
from parallel.cad.server import serve_backward, serve_forward


class StepRuntime:
    """What one call needs: this rank's layouts (one per half), the group and the mode.

    CAD pooled across pipeline stages plans each lock-step tick anew, so a resend backward
    runs with the plan of the tick it runs in: `backward_layouts()` returns that plan's
    layouts (None: the forward's). `silent` is an idle stage's dummy forward in a backward
    tick: no exchange (its peers are running backwards), only the node whose backward then
    serves the tick's tasks with the others."""

    def __init__(self, layouts: list[Layout] | None, group, softmax_scale: float, resend: bool = False,
                 backward_layouts=None, silent: bool = False, exchange=Exchange):
        self.layouts, self.group, self.scale, self.resend = layouts, group, softmax_scale, resend
        self.backward_layouts, self.silent = backward_layouts, silent
        self.exchange = exchange  # the all-to-all in flight (dispatch.Exchange unless injected)


def pool_rows(q, k, v):
    """q, k, v as one [rows, head_dim] buffer, the rows every layout's send_rows index."""
    d = q.shape[-1]
    return torch.cat([q.reshape(-1, d), k.reshape(-1, d), v.reshape(-1, d)])


def lse_rows(L: Layout, lse_srv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The server's LSE [hq, kernel queries] as rows in arrival order, one per (token, head),
    the order of the o rows it returns. One dtype on every rank (the all-to-all's buffers
    must agree, also on ranks that served nothing)."""
    return lse_srv.index_select(1, L.srv_q_pos).t().reshape(-1).to(dtype).contiguous()


class CADFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rt: StepRuntime):
        T, hq, d = q.shape
        hkv = k.shape[1]
        if rt.silent:  # (resend only) nothing sent: the backward resends what it needs
            o = q.new_zeros(q.shape)
            ctx.save_for_backward(q, k, v, o, q.new_zeros((T, hq), dtype=accumulator_dtype(q.dtype)))
            ctx.rt, ctx.shape = rt, (T, hq, hkv, d)
            return o
        pool = pool_rows(q, k, v)
        halves = rt.layouts
        lse_dtype = accumulator_dtype(q.dtype)

        def dispatch(h):
            L = halves[h]
            return rt.exchange(pool.index_select(0, L.send_rows), L.send_splits, L.recv_splits,
                            rt.group, async_op=True)

        inflight = dispatch(0)
        returns, saved, recvs = [], [], []
        for h, L in enumerate(halves):
            recv = inflight.wait()
            recvs.append(recv)
            if h + 1 < len(halves):
                inflight = dispatch(h + 1)  # overlaps this half's kernel
            buf = torch.cat(recvs) if L.prior_rows else recv  # keys an earlier half received
            o_rows, (o_srv, lse_srv) = serve_forward(L, buf, hq, hkv, d, rt.scale)
            back = [rt.exchange(o_rows, L.q_recv_splits, L.q_send_splits, rt.group, async_op=True)]
            if rt.resend:
                back.append(rt.exchange(lse_rows(L, lse_srv, lse_dtype), L.q_recv_splits, L.q_send_splits,
                                     rt.group, async_op=True))
            else:
                saved += [recv, o_srv, lse_srv]
            returns.append(back)
        # every local query is served exactly once, in one half: the halves' rows cover o
        o = q.new_empty(q.shape)
        lse = q.new_empty((T, hq), dtype=lse_dtype) if rt.resend else None
        for L, back in zip(halves, returns):
            o.index_copy_(0, L.q_tok, back[0].wait().view(-1, hq, d))
            if rt.resend:
                lse.index_copy_(0, L.q_tok, back[1].wait().view(-1, hq))
        if any(ctx.needs_input_grad[:3]):
            if rt.resend:  # o is saved as a copy: the caller owns (and may change) the output
                ctx.save_for_backward(q, k, v, o.clone(), lse)
            else:
                ctx.save_for_backward(*saved)
        ctx.rt, ctx.shape = rt, (T, hq, hkv, d)
        return o

    @staticmethod
    def backward(ctx, d_o):
        T, hq, hkv, d = ctx.shape
        rt = ctx.rt
        halves = rt.backward_layouts() if rt.backward_layouts is not None else rt.layouts
        saved = ctx.saved_tensors
        d_o = d_o.contiguous()
        # halves in reverse: a later half's gradient of keys an earlier half received is
        # added into that earlier half's return, which therefore goes last
        order = list(range(len(halves)))[::-1]
        if rt.resend:
            q, k, v, o, lse = saved
            pool = pool_rows(q, k, v)
            # every half's q/k/v up front: a later half's server also reads earlier halves' keys
            qkv = [rt.exchange(pool.index_select(0, L.send_rows), L.send_splits, L.recv_splits,
                            rt.group, async_op=True) for L in halves]

        def dispatch(h):
            L = halves[h]
            rows = d_o.index_select(0, L.q_tok).reshape(-1, d)
            if not rt.resend:
                return [rt.exchange(rows, L.q_send_splits, L.q_recv_splits, rt.group, async_op=True)]
            # dO and o share one exchange (same rows); the fp32 LSE goes apart
            do_o = torch.cat([rows, o.index_select(0, L.q_tok).reshape(-1, d)], dim=1)
            return [rt.exchange(do_o, L.q_send_splits, L.q_recv_splits, rt.group, async_op=True),
                    rt.exchange(lse.index_select(0, L.q_tok).reshape(-1), L.q_send_splits,
                             L.q_recv_splits, rt.group, async_op=True)]

        inflight = dispatch(order[0])
        returns, extra = {}, {}
        for i, h in enumerate(order):
            L = halves[h]
            got = [ex.wait() for ex in inflight]
            if i + 1 < len(order):
                inflight = dispatch(order[i + 1])
            if rt.resend:
                do_o, lse_got = got
                recvs = [ex.wait() for ex in qkv[:h + 1]]
                d_o_recv = do_o[:, :d]
                o_srv = do_o[:, d:].reshape(-1, hq, d).index_select(0, L.srv_q_slots)
                lse_srv = lse_got.view(-1, hq).index_select(0, L.srv_q_slots).t().contiguous()
            else:
                d_o_recv = got[0]
                recvs = [saved[3 * j] for j in range(h + 1)]
                o_srv, lse_srv = saved[3 * h + 1:3 * h + 3]
            buf = torch.cat(recvs) if L.prior_rows else recvs[-1]
            d_buf = serve_backward(L, buf, o_srv, lse_srv, d_o_recv, hq, hkv, d, rt.scale)
            if L.prior_rows:  # hand the earlier halves their keys' gradients
                parts = torch.split(d_buf, [r.shape[0] for r in recvs])
                for j, part in enumerate(parts[:-1]):
                    extra[j] = extra[j] + part if j in extra else part
                d_recv = parts[-1]
            else:
                d_recv = d_buf
            if h in extra:
                d_recv = d_recv + extra.pop(h)
            returns[h] = rt.exchange(d_recv.contiguous(), L.recv_splits, L.send_splits, rt.group,
                                  async_op=True)
        d_pool = d_o.new_zeros((T * (hq + 2 * hkv), d))
        for i, h in enumerate(order):  # a key sent in two halves (to two servers) adds up
            add_rows_into_zeros(d_pool, halves[h].send_rows, returns[h].wait(),
                                unique=i == 0 and halves[h].send_rows_unique)
        dq, dk, dv = torch.split(d_pool, [T * hq, T * hkv, T * hkv])
        return dq.view(T, hq, d), dk.view(T, hkv, d), dv.view(T, hkv, d), None
