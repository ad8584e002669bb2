"""The tensor-parallel collectives as autograd functions over a TP group.

Sequence parallelism keeps the residual stream sharded along tokens: rank r of tp holds rows
[r * P, (r + 1) * P) of the T tokens, P = ceil(T / tp), zero-padded on the last ranks (any T
works; the padding rows stay zero and never reach a matmul).

- `gather_sequence`: [P, d] per rank -> the [T, d] rows of all ranks (before a column-parallel
  linear); backward: reduce-scatter, summing the partial gradients every rank computed for
  its heads or features.
- `scatter_sequence`: [T, d] partial sums per rank (after a row-parallel linear) -> this
  rank's [P, d] rows of their sum; backward: all-gather.
With no group (tp = 1) both are the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel import comm


def _size_rank(group) -> tuple[int, int]:
    if group is None:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def rows_per_rank(tokens: int, tp: int) -> int:
    return -(-tokens // tp)


def _all_gather_rows(x: torch.Tensor, group, tp: int) -> torch.Tensor:
    out = x.new_empty((tp * x.shape[0],) + tuple(x.shape[1:]))
    comm.all_gather_into_tensor(out, x.contiguous(), group)
    return out


def _reduce_scatter_rows(x: torch.Tensor, group, tp: int, rows: int) -> torch.Tensor:
    """Sum over ranks of x [T, ...] padded to tp * rows, this rank's rows."""
    if x.shape[0] != tp * rows:
        x = torch.cat([x, x.new_zeros((tp * rows - x.shape[0],) + tuple(x.shape[1:]))])
    out = x.new_empty((rows,) + tuple(x.shape[1:]))
    comm.reduce_scatter_tensor(out, x.contiguous(), group)
    return out


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tokens: int, group):
        tp, _ = _size_rank(group)
        ctx.group, ctx.tp, ctx.rows = group, tp, x.shape[0]
        return _all_gather_rows(x, group, tp)[:tokens]

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_rows(grad, ctx.group, ctx.tp, ctx.rows), None, None


class _ScatterSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        tp, _ = _size_rank(group)
        rows = rows_per_rank(x.shape[0], tp)
        ctx.group, ctx.tp, ctx.tokens = group, tp, x.shape[0]
        return _reduce_scatter_rows(x, group, tp, rows)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_rows(grad.contiguous(), ctx.group, ctx.tp)[:ctx.tokens], None


def gather_sequence(x: torch.Tensor, tokens: int | None, group) -> torch.Tensor:
    """This rank's sequence rows [P, ...] -> all T rows [T, ...] (see the module doc); with
    tokens=None all tp * P rows, padding included (for layers that map zero rows to zero)."""
    tp = _size_rank(group)[0]
    tokens = tp * x.shape[0] if tokens is None else tokens
    if tp == 1:
        return x[:tokens]
    return _GatherSequence.apply(x, tokens, group)


def scatter_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """Partial sums over all T rows [T, ...] -> this rank's rows of their sum [P, ...]."""
    if _size_rank(group)[0] == 1:
        return x
    return _ScatterSequence.apply(x, group)


def local_rows(x: torch.Tensor, group) -> torch.Tensor:
    """This rank's rows [P, ...] of a tensor every rank holds whole [T, ...] (zero-padded);
    no communication, so not differentiable across ranks (inputs and labels only)."""
    tp, r = _size_rank(group)
    if tp == 1:
        return x
    rows = rows_per_rank(x.shape[0], tp)
    out = x.new_zeros((rows,) + tuple(x.shape[1:]))
    part = x[r * rows:(r + 1) * rows]
    out[:part.shape[0]] = part
    return out
