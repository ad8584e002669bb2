"""An all-to-all that keeps CAD's collectives but drops their payloads: the "no bytes" baseline of
benchmarks/multigpu_overlap.py.

`CutExchange` has the interface of `parallel.cad.dispatch.Exchange` and is handed to the
strategy (`CADAttention(..., exchange=CutExchange)`): every exchange sends one element per peer
instead of its payload and receives zeros of the payload's shape, so a step keeps its
collectives' count, order and latency but moves about no bytes. Its results are WRONG: only time
such a run. The product has no switch for it; the benchmark injects it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel import comm


class CutExchange:
    def __init__(self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int], group,
                 async_op: bool):
        # zeros, not garbage: NaNs could change the kernels' speed
        self.recv = send.new_zeros((sum(recv_splits),) + tuple(send.shape[1:]))
        self.work = None
        if group is None or dist.get_world_size(group) == 1:
            self.recv = send
            return
        peers = dist.get_world_size(group)
        self._send, self._cut = send.new_zeros(peers), send.new_empty(peers)
        self.work = comm.all_to_all_single(self._cut, self._send, [1] * peers, [1] * peers, group,
                                           async_op=async_op)

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.recv
