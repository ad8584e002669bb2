"""Nano-batch ping-pong (`parallel.cad.overlap=nanobatch`, DistCA's schedule).

A micro-batch's documents are split into two nano-batches (whole documents, so a nano-batch's
queries only need its own keys), about equal in tokens on every rank. Each is planned from its
own pieces and runs as three phases, each its own autograd Function, so the model can put
the other nano-batch's work between them:

    start(A)  pre(B)  start(B)  serve(A)  serve(B)  collect(A) post(A)  collect(B) post(B)
    dispatch A in flight during B's projections; A's return in flight during B's kernel;
    B's return in flight during A's output projection and MLP.

start posts the q/k/v all-to-all, serve waits for it, runs the kernel and posts the o
return, collect waits for o. The backward runs the phases' mirrors in autograd's order
(the same on every rank, as the graphs are the same): collect posts dO, serve serves the
backward and posts [dq|dk|dv], start waits for it. Phases hand each other a zero-size
tensor (the autograd edge) and a `NanoCall` (the exchanges in flight); what the backward
needs goes through `ctx.save_for_backward` (activation checkpointing frees and recomputes it).

With `backward=resend` the server keeps nothing: serve returns the LSE beside o, collect keeps
the origin's q, k, v, o and LSE, and collect's backward resends q/k/v (the forward's dispatch
rows) with [dO | o] and the LSE; serve's backward rebuilds its rows from them.

A nano-batch whose plan moves nothing (parallel/cad/in_place.py) exchanges nothing: start only
hands q, k, v on, serve runs the kernel on them in place, collect returns o; the phases and
their order stay, so the model's schedule does not change.
"""
from __future__ import annotations

import numpy as np
import torch

from distca_kernels.precision import accumulator_dtype
from parallel.cad import in_place
from parallel.cad.dispatch import Exchange
from parallel.cad.pingpong import lse_rows, pool_rows
from parallel.cad.row_sums import add_rows_into_zeros
from parallel.cad.server import serve_backward, serve_forward
from parallel.cad.tasks import PieceTable, expand_ranges


def split_documents(pieces: PieceTable) -> np.ndarray:
    """Nano-batch (0 or 1) of every piece: whole documents, largest first, each to the side
    that leaves its ranks' token counts of the two nano-batches closest."""
    docs, inv = np.unique(pieces.doc, return_inverse=True)
    side = np.zeros(docs.size, dtype=np.int64)
    n = int(pieces.rank.max()) + 1 if pieces.rank.size else 0
    count = np.zeros((2, n), dtype=np.int64)
    size = np.bincount(inv, pieces.length, minlength=docs.size)
    for d in np.argsort(-size, kind="stable"):
        m = inv == d
        ranks, toks = pieces.rank[m], pieces.length[m]
        gap = []
        for s in (0, 1):
            after = count.copy()
            np.add.at(after[s], ranks, toks)
            gap.append(int(np.abs(after[0] - after[1]).sum()))
        s = 0 if (gap[0], count[0].sum()) <= (gap[1], count[1].sum()) else 1
        side[d] = s
        np.add.at(count[s], ranks, toks)
    return side[inv]


def sub_pieces(pieces: PieceTable, keep: np.ndarray) -> tuple[PieceTable, np.ndarray]:
    """The pieces of one nano-batch, their local offsets counted within its rows, and for
    every kept piece its old local offset (to find the rows in the micro-batch)."""
    idx = np.nonzero(keep)[0]
    idx = idx[np.lexsort((pieces.local[idx], pieces.rank[idx]))]
    rank, length = pieces.rank[idx], pieces.length[idx]
    first = np.r_[True, rank[1:] != rank[:-1]] if idx.size else np.zeros(0, dtype=bool)
    csum = np.cumsum(length) - length
    base = np.maximum.accumulate(np.where(first, csum, 0)) if idx.size else csum
    local = csum - base
    return PieceTable(rank, pieces.doc[idx], pieces.start[idx], length, local), pieces.local[idx]


def nano_rows(pieces: PieceTable, keep: np.ndarray, me: int) -> np.ndarray:
    """This rank's rows (micro-batch local order) of one nano-batch, in the nano-batch's order."""
    sub, old_local = sub_pieces(pieces, keep)
    mine = sub.rank == me
    return expand_ranges(old_local[mine], sub.length[mine])


class NanoCall:
    """One nano-batch's attention in one layer: its layout (an `in_place.InPlace` when its plan
    moves nothing) and the exchanges in flight."""

    def __init__(self, layout, group, scale: float, resend: bool = False, exchange=Exchange):
        self.L, self.group, self.scale, self.resend = layout, group, scale, resend
        self.exchange = exchange  # the all-to-all in flight (dispatch.Exchange unless injected)
        self.local = isinstance(layout, in_place.InPlace)
        self.shape = None
        # forward: dispatch, then the return (o; o and LSE with resend); backward: dO (with
        # resend: q/k/v, [dO | o], LSE), then [dq|dk|dv]. In place: q/k/v, then o; dO, then
        # (dq, dk, dv)
        self.inflight = None
        self.d_pool_template = None


def _dispatch(call: NanoCall, q, k, v) -> Exchange:
    L = call.L
    return call.exchange(pool_rows(q, k, v).index_select(0, L.send_rows), L.send_splits, L.recv_splits,
                         call.group, async_op=True)


class NanoStart(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, call: NanoCall):
        T, hq, d = q.shape
        call.shape = (T, hq, k.shape[1], d)
        call.inflight = (q, k, v) if call.local else _dispatch(call, q, k, v)
        ctx.call = call
        return q.new_empty(0)

    @staticmethod
    def backward(ctx, _):
        call = ctx.call
        if call.local:
            grads, call.inflight = call.inflight, None
            return (*grads, None)
        T, hq, hkv, d = call.shape
        d_pool = call.d_pool_template.new_zeros((T * (hq + 2 * hkv), d))
        add_rows_into_zeros(d_pool, call.L.send_rows, call.inflight.wait(), call.L.send_rows_unique)
        call.inflight = None
        dq, dk, dv = torch.split(d_pool, [T * hq, T * hkv, T * hkv])
        return dq.view(T, hq, d), dk.view(T, hkv, d), dv.view(T, hkv, d), None


class NanoServe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, handle, call: NanoCall):
        T, hq, hkv, d = call.shape
        L = call.L
        ctx.call = call
        if call.local:
            call.inflight, saved = in_place.forward(L, *call.inflight, call.scale)
            # detached aliases: o (when the kernel order is local order) is also what NanoCollect
            # returns, so saving it here would tie o -> NanoCollectBackward -> this node -> o,
            # a cycle in the C++ graph that Python's collector never frees; under recompute
            # the recomputed graph is never run backward and leaked every step (issue 32)
            ctx.save_for_backward(*(t.detach() for t in saved))
            return handle.new_empty(0)
        recv = call.inflight.wait()
        o_rows, (o_srv, lse_srv) = serve_forward(L, recv, hq, hkv, d, call.scale)
        call.inflight = [call.exchange(o_rows, L.q_recv_splits, L.q_send_splits, call.group, async_op=True)]
        if call.resend:
            lse = lse_rows(L, lse_srv, accumulator_dtype(recv.dtype))
            call.inflight.append(call.exchange(lse, L.q_recv_splits, L.q_send_splits, call.group,
                                               async_op=True))
        else:
            ctx.save_for_backward(recv, o_srv, lse_srv)
        return handle.new_empty(0)

    @staticmethod
    def backward(ctx, _):
        call, L = ctx.call, ctx.call.L
        T, hq, hkv, d = call.shape
        if call.local:
            call.inflight = in_place.backward(L, call.inflight, ctx.saved_tensors, call.scale)
            return call.inflight[0].new_empty(0), None
        if call.resend:
            recv, do_o, lse = [ex.wait() for ex in call.inflight]
            d_o_recv = do_o[:, :d]
            o_srv = do_o[:, d:].reshape(-1, hq, d).index_select(0, L.srv_q_slots)
            lse_srv = lse.view(-1, hq).index_select(0, L.srv_q_slots).t().contiguous()
        else:
            recv, o_srv, lse_srv = ctx.saved_tensors
            d_o_recv = call.inflight.wait()
        d_recv = serve_backward(L, recv, o_srv, lse_srv, d_o_recv, hq, hkv, d, call.scale)
        call.d_pool_template = d_recv
        call.inflight = call.exchange(d_recv, L.recv_splits, L.send_splits, call.group, async_op=True)
        return recv.new_empty(0), None


class NanoCollect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, handle, q, k, v, call: NanoCall):
        T, hq, hkv, d = call.shape
        L = call.L
        ctx.call = call
        if call.local:
            o, call.inflight = call.inflight, None
            return o
        back = [ex.wait() for ex in call.inflight]
        call.inflight = None
        o = q.new_empty((T, hq, d))  # every query of the nano-batch comes back exactly once
        o.index_copy_(0, L.q_tok, back[0].view(-1, hq, d))
        if call.resend:  # the origin keeps what the server needs again; o as a copy (the caller owns o)
            lse = q.new_empty((T, hq), dtype=accumulator_dtype(q.dtype))
            lse.index_copy_(0, L.q_tok, back[1].view(-1, hq))
            ctx.save_for_backward(q, k, v, o.clone(), lse)
        return o

    @staticmethod
    def backward(ctx, d_o):
        call, L = ctx.call, ctx.call.L
        if call.local:
            call.inflight = d_o
            return d_o.new_empty(0), None, None, None, None
        d = call.shape[3]
        rows = d_o.contiguous().index_select(0, L.q_tok).reshape(-1, d)
        if not call.resend:
            call.inflight = call.exchange(rows, L.q_send_splits, L.q_recv_splits, call.group, async_op=True)
            return d_o.new_empty(0), None, None, None, None
        q, k, v, o, lse = ctx.saved_tensors
        do_o = torch.cat([rows, o.index_select(0, L.q_tok).reshape(-1, d)], dim=1)
        call.inflight = [_dispatch(call, q, k, v),
                         call.exchange(do_o, L.q_send_splits, L.q_recv_splits, call.group, async_op=True),
                         call.exchange(lse.index_select(0, L.q_tok).reshape(-1), L.q_send_splits,
                                       L.q_recv_splits, call.group, async_op=True)]
        return d_o.new_empty(0), None, None, None, None
