"""The collectives `parallel/` issues, in one place, observable without patching anything.

Every strategy sends through these thin functions over `torch.distributed`. Each call tells
the subscribed observers what it puts on the wire (`CommEvent`), and an asynchronous call
returns a `Pending` whose `wait()` is reported too, so a measuring tool (the byte counter in
parallel/comm_counter.py, order checks in tests) subscribes with `observe(fn)` instead of
replacing `torch.distributed` functions. With no observer a call costs one empty-list check.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class CommEvent:
    op: str                            # all_to_all_single, all_gather_into_tensor, ..., wait
    group: object = None               # the process group (None: the default group)
    send: torch.Tensor | None = None   # what this rank contributes (the whole input)
    splits: list[int] | None = field(default=None)  # all_to_all_single: rows per destination


_observers: list = []


@contextlib.contextmanager
def observe(fn):
    """Call fn(event) for every collective issued (and every wait) while the block runs."""
    _observers.append(fn)
    try:
        yield fn
    finally:
        _observers.remove(fn)


def _emit(op: str, group=None, send=None, splits=None) -> None:
    if _observers:
        event = CommEvent(op, group, send, splits)
        for fn in list(_observers):
            fn(event)


class Pending:
    """An asynchronous collective in flight; `wait()` blocks until it is done (once)."""

    def __init__(self, work, op: str, group):
        self.work, self.op, self.group = work, op, group

    def wait(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None
            _emit("wait", self.group)


def _result(work, op, group, async_op):
    return Pending(work, op, group) if async_op else None


def all_to_all_single(out, inp, out_splits, in_splits, group, async_op: bool = False):
    """Rows in_splits[j] of inp go to rank j; out_splits[j] rows arrive from rank j."""
    _emit("all_to_all_single", group, inp, list(in_splits))
    work = dist.all_to_all_single(out, inp, list(out_splits), list(in_splits), group=group,
                                  async_op=async_op)
    return _result(work, "all_to_all_single", group, async_op)


def all_gather_into_tensor(out, inp, group, async_op: bool = False):
    """out [N * rows, ...] = every rank's inp [rows, ...], in rank order."""
    _emit("all_gather_into_tensor", group, inp)
    # torch renamed the flat-tensor collective; either name works
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return _result(fn(out, inp, group=group, async_op=async_op), "all_gather_into_tensor", group,
                   async_op)


def reduce_scatter_tensor(out, inp, group, async_op: bool = False):
    """out = the sum over ranks of their inp's slice for this rank (inp [N * rows, ...])."""
    _emit("reduce_scatter_tensor", group, inp)
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return _result(fn(out, inp, group=group, async_op=async_op), "reduce_scatter_tensor", group,
                   async_op)


def all_gather(outs: list, inp, group) -> None:
    """outs[j] = rank j's inp (same shape everywhere); synchronous."""
    _emit("all_gather", group, inp)
    dist.all_gather(outs, inp, group=group)


def exchange_with_neighbours(send, recv, group, next_rank: int, prev_rank: int, tag: int) -> list:
    """Send `send` to group rank next_rank while receiving `recv` from prev_rank (batched p2p);
    returns the requests to wait on."""
    _emit("isend", group, send)
    ops = [dist.P2POp(dist.isend, send, group=group, tag=tag, group_peer=next_rank),
           dist.P2POp(dist.irecv, recv, group=group, tag=tag, group_peer=prev_rank)]
    return dist.batch_isend_irecv(ops)


def all_reduce(x, op, group, async_op: bool = False):
    """x <- op over the group's x (in place); op a torch.distributed.ReduceOp."""
    _emit("all_reduce", group, x)
    return _result(dist.all_reduce(x, op=op, group=group, async_op=async_op), "all_reduce", group,
                   async_op)


def exchange(sends: list, recvs: list, group) -> None:
    """Point-to-point messages in one batch, then wait: sends [(tensor, group peer)], recvs
    [(buffer, group peer)]. Both ends must post the matching pair in the same round."""
    if not sends and not recvs:
        return
    ops = []
    for t, peer in sends:
        _emit("isend", group, t)
        ops.append(dist.P2POp(dist.isend, t.contiguous(), group=group, group_peer=peer))
    ops += [dist.P2POp(dist.irecv, t, group=group, group_peer=peer) for t, peer in recvs]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
