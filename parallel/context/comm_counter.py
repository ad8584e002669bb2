"""Count the bytes each rank sends, by wrapping torch.distributed's collectives.

    with CommCounter() as c:
        strategy(q, k, v, shard, scale)
    c.bytes_sent, c.by_op            # this rank only; reduce across ranks yourself

While a counter is active, the module-level functions of `torch.distributed` (all_gather,
reduce_scatter, all_to_all, all_reduce, batch_isend_irecv, ...) are replaced by wrappers
that record what the calling rank puts on the wire, then call the original. Code must call
them as `dist.<name>` (looked up at call time) to be counted; counters nest.

Convention: bytes a rank sends under the bandwidth-optimal algorithm for each collective,
so numbers compare across algorithms independent of the backend's actual choice:
all_gather (N-1)*input; reduce_scatter (N-1)/N*input; all_to_all input minus the rank's own
chunk; all_reduce 2(N-1)/N*input (ring); broadcast (N-1)*input at the source; p2p the tensor.
Collectives over a group of one rank send nothing.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

_active: list["CommCounter"] = []
_originals: dict[str, object] = {}


def _nbytes(t) -> int:
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _group_rank(group) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def _arg(args, kwargs, pos: int, name: str, default=None):
    return kwargs[name] if name in kwargs else (args[pos] if len(args) > pos else default)


# one rule per collective: (args, kwargs) -> bytes the calling rank sends
def _all_gather(a, k):
    n = _group_size(_arg(a, k, 2, "group"))
    return (n - 1) * _nbytes(_arg(a, k, 1, "tensor"))


def _all_gather_into_tensor(a, k):
    n = _group_size(_arg(a, k, 2, "group"))
    return (n - 1) * _nbytes(_arg(a, k, 1, "input_tensor"))


def _reduce_scatter(a, k):
    group = _arg(a, k, 3, "group")
    inputs = _arg(a, k, 1, "input_list")
    me = _group_rank(group)
    return sum(_nbytes(t) for i, t in enumerate(inputs) if i != me) if _group_size(group) > 1 else 0


def _reduce_scatter_tensor(a, k):
    n = _group_size(_arg(a, k, 3, "group"))
    return _nbytes(_arg(a, k, 1, "input")) * (n - 1) // n


def _all_to_all(a, k):
    group = _arg(a, k, 2, "group")
    inputs = _arg(a, k, 1, "input_tensor_list")
    me = _group_rank(group)
    return sum(_nbytes(t) for i, t in enumerate(inputs) if i != me)


def _all_to_all_single(a, k):
    group = _arg(a, k, 4, "group")
    inp = _arg(a, k, 1, "input")
    splits = _arg(a, k, 3, "input_split_sizes")
    n, me = _group_size(group), _group_rank(group)
    if n == 1:
        return 0
    rows = inp.shape[0] if inp.dim() else 1
    row_bytes = _nbytes(inp) // max(rows, 1)
    own = splits[me] if splits else rows // n
    return (rows - own) * row_bytes


def _all_reduce(a, k):
    n = _group_size(_arg(a, k, 2, "group"))
    return 2 * (n - 1) * _nbytes(_arg(a, k, 0, "tensor")) // n


def _broadcast(a, k):
    group = _arg(a, k, 2, "group")
    src, group_src = _arg(a, k, 1, "src"), k.get("group_src")
    is_src = (dist.get_rank() == src) if src is not None else _group_rank(group) == group_src
    return (_group_size(group) - 1) * _nbytes(_arg(a, k, 0, "tensor")) if is_src else 0


def _send(a, k):
    return _nbytes(_arg(a, k, 0, "tensor"))


def _batch_isend_irecv(a, k):
    ops = _arg(a, k, 0, "p2p_op_list")
    return sum(_nbytes(op.tensor) for op in ops if getattr(op.op, "__name__", "") in ("isend", "send"))


_RULES = {
    "all_gather": _all_gather, "all_gather_into_tensor": _all_gather_into_tensor,
    "reduce_scatter": _reduce_scatter, "reduce_scatter_tensor": _reduce_scatter_tensor,
    "all_gather_single": _all_gather_into_tensor, "reduce_scatter_single": _reduce_scatter_tensor,
    "all_to_all": _all_to_all, "all_to_all_single": _all_to_all_single,
    "all_reduce": _all_reduce, "broadcast": _broadcast,
    "send": _send, "isend": _send, "batch_isend_irecv": _batch_isend_irecv,
}


def _wrap(name: str, fn):
    rule = _RULES[name]

    def counted(*args, **kwargs):
        if _active:
            nbytes = rule(args, kwargs)
            for c in _active:
                c.record(name, nbytes)
        return fn(*args, **kwargs)

    counted.__name__ = name
    counted.__wrapped__ = fn
    return counted


class CommCounter:
    """Bytes and calls per collective for the calling rank while active (a context manager)."""

    def __init__(self):
        self.by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    @property
    def bytes_sent(self) -> int:
        return sum(self.by_op.values())

    def record(self, op: str, nbytes: int) -> None:
        self.by_op[op] += int(nbytes)
        self.calls[op] += 1

    def reset(self) -> None:
        self.by_op.clear()
        self.calls.clear()

    def __enter__(self) -> "CommCounter":
        if not _active:
            for name in _RULES:
                if not hasattr(dist, name):  # not in this torch version
                    continue
                _originals[name] = getattr(dist, name)
                setattr(dist, name, _wrap(name, _originals[name]))
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.remove(self)
        if not _active:
            for name, fn in _originals.items():
                setattr(dist, name, fn)
            _originals.clear()
