"""Communication pieces shared by the context-parallel strategies.

Collectives go through parallel/comm.py (observable by measuring tools).
A `None` group means "not distributed" (a CP group of one rank); everything degrades to
local copies so the strategies run unchanged in a single process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel import comm


def group_size_rank(group) -> tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def all_to_all_rows(x: torch.Tensor, out_rows: list[int], in_rows: list[int], group) -> torch.Tensor:
    """Rows in_rows[j] of x (in order) go to rank j; rows out_rows[j] arrive from rank j."""
    if group_size_rank(group)[0] == 1:
        return x
    out = x.new_empty((sum(out_rows),) + tuple(x.shape[1:]))
    comm.all_to_all_single(out, x.contiguous(), out_rows, in_rows, group)
    return out


class _AllToAllRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_rows, in_rows, group):
        ctx.out_rows, ctx.in_rows, ctx.group = out_rows, in_rows, group
        return all_to_all_rows(x, out_rows, in_rows, group)

    @staticmethod
    def backward(ctx, grad):
        # the adjoint of an all-to-all is the all-to-all with the splits swapped
        return all_to_all_rows(grad, ctx.in_rows, ctx.out_rows, ctx.group), None, None, None


def all_to_all_rows_autograd(x, out_rows: list[int], in_rows: list[int], group) -> torch.Tensor:
    return _AllToAllRows.apply(x, list(out_rows), list(in_rows), group)


class _Pending:
    def __init__(self, reqs, keep, recv, stream):
        self.reqs, self.keep, self.recv, self.stream = reqs, keep, recv, stream


class RingP2P:
    """Send to the next rank of `group` while receiving from the previous one, batched.

    On CUDA the operations are issued from a dedicated communication stream that first
    waits for the compute stream (so the sent tensor is ready); `wait` makes the compute
    stream wait for the transfer. Between `start` and `wait` the caller computes.
    Messages of different purposes use different tags so they never cross.
    """

    def __init__(self, group, device: torch.device):
        self.group = group
        self.size, self.rank = group_size_rank(group)
        self.next = (self.rank + 1) % self.size
        self.prev = (self.rank - 1) % self.size
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and self.size > 1 else None

    def start(self, send: torch.Tensor, recv: torch.Tensor, tag: int = 0) -> _Pending:
        send = send.contiguous()
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(send.device))
            with torch.cuda.stream(self.stream):
                reqs = comm.exchange_with_neighbours(send, recv, self.group, self.next, self.prev, tag)
        else:
            reqs = comm.exchange_with_neighbours(send, recv, self.group, self.next, self.prev, tag)
        return _Pending(reqs, send, recv, self.stream)

    @staticmethod
    def wait(p: _Pending) -> torch.Tensor:
        for r in p.reqs:
            r.wait()
        if p.stream is not None:
            torch.cuda.current_stream(p.recv.device).wait_stream(p.stream)
        p.keep = None  # the send buffer may be freed now
        return p.recv


def all_gather_padded(x: torch.Tensor, pad_rows: int, group, async_op: bool = False):
    """Gather x ([rows <= pad_rows, ...]) from every rank into [N, pad_rows, ...].

    Ranks own different token counts but gloo/NCCL all-gather need equal shapes, so each
    rank pads to the largest count (known to all from the shards). Returns (out, work).
    """
    n, _ = group_size_rank(group)
    if x.shape[0] != pad_rows:
        buf = x.new_zeros((pad_rows,) + tuple(x.shape[1:]))
        buf[:x.shape[0]] = x
    else:
        buf = x.contiguous()
    if n == 1:
        return buf.unsqueeze(0), None
    out = buf.new_empty((n * pad_rows,) + tuple(buf.shape[1:]))
    work = comm.all_gather_into_tensor(out, buf, group, async_op=async_op)
    return out.view((n,) + tuple(buf.shape)), work


def reduce_scatter_padded(x: torch.Tensor, group, async_op: bool = False):
    """x [N, pad_rows, ...] -> the sum over ranks of x[my rank]: [pad_rows, ...]."""
    n, _ = group_size_rank(group)
    if n == 1:
        return x[0], None
    out = x.new_empty(tuple(x.shape[1:]))
    work = comm.reduce_scatter_tensor(out, x.flatten(0, 1).contiguous(), group, async_op=async_op)
    return out, work
