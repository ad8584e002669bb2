"""Count the bytes and collectives each rank sends, by subscribing to parallel/comm.py.

    with CommCounter() as c:
        strategy(q, k, v, shard, scale)
    c.bytes_sent, c.by_op, c.calls     # this rank only; reduce across ranks yourself

Every collective `parallel/` issues goes through `parallel.comm`, which reports it to
subscribers; nothing is patched. Counters nest. (Collectives outside `parallel/`, such as
DDP's gradient all-reduce, are not counted.)

Convention: bytes a rank sends under the bandwidth-optimal algorithm of each collective, so
numbers compare across algorithms whatever the backend actually does: all-gather (N-1) x
input; reduce-scatter (N-1)/N x input; all-reduce 2(N-1)/N x input (ring); all-to-all the
input minus the rank's own rows; p2p the tensor. Collectives over a group of one rank send nothing.
"""
from __future__ import annotations

from collections import defaultdict

import torch.distributed as dist

from parallel import comm


def _size_rank(group) -> tuple[int, int]:
    if not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def bytes_sent(event: comm.CommEvent) -> int:
    """What the calling rank puts on the wire for this collective (see the convention)."""
    n, me = _size_rank(event.group)
    if n == 1 or event.send is None:
        return 0
    nbytes = event.send.numel() * event.send.element_size()
    if event.op in ("all_gather", "all_gather_into_tensor"):
        return (n - 1) * nbytes
    if event.op == "reduce_scatter_tensor":
        return nbytes * (n - 1) // n
    if event.op == "all_to_all_single":
        rows = event.send.shape[0] if event.send.dim() else 1
        own = event.splits[me] if event.splits else rows // n
        return (rows - own) * (nbytes // max(rows, 1))
    if event.op == "isend":
        return nbytes
    if event.op == "all_reduce":  # ring: reduce-scatter then all-gather
        return 2 * (n - 1) * nbytes // n
    raise ValueError(f"no byte rule for collective {event.op!r}")


class CommCounter:
    """Bytes and calls per collective for the calling rank while active (a context manager)."""

    def __init__(self):
        self.by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._sub = None

    @property
    def bytes_sent(self) -> int:
        return sum(self.by_op.values())

    def record(self, event: comm.CommEvent) -> None:
        if event.op == "wait":
            return
        self.by_op[event.op] += bytes_sent(event)
        self.calls[event.op] += 1

    def reset(self) -> None:
        self.by_op.clear()
        self.calls.clear()

    def __enter__(self) -> "CommCounter":
        self._sub = comm.observe(self.record)
        self._sub.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._sub.__exit__(*exc)
