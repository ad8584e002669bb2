"""The interface between the model's nano-batch path and a core-attention strategy that runs
two nano-batches in phases (CAD with `parallel.cad.overlap=nanobatch` or `auto`), declared here
because the model never imports `parallel/`: strategies implement it structurally.

A softmax block whose strategy is a `NanoBatchAttention` asks it, per micro-batch, whether to
split (`nano_rows`). If so, the block runs each nano-batch's norm and q/k/v projection, posts
its attention (`start`), lets both be served (`serve`), and finishes each (`collect`, output
projection, MLP) while the other's communication is in flight:

    proj 0, start 0, proj 1, start 1, serve 0, serve 1, collect 0, out+MLP 0, collect 1, out+MLP 1

Between consecutive blocks that split, the residual stream stays split (`NanoStream`): it is
reordered into the two nano-batches' rows once, where the first such block starts, and back
once after the last, instead of in every block. Under sequence parallelism the move is a
`NanoSequenceLayout` (parallel/tensor/reshard.py: NanoSequenceParallel, injected per block by
distca/parallelize/apply.py): each nano-batch's rows sharded over the TP group on their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class NanoLayer:
    """What a block tells its strategy about itself: the attention's shapes on this rank (what
    the plan is made for) and its linear FLOPs per token, forward + backward, before attention
    (norm, q/k/v projection) and after (output projection, MLP): what CAD's overlap=auto weighs
    the exchange against."""
    heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    flops_before: float
    flops_after: float


@runtime_checkable
class NanoBatchAttention(Protocol):
    """A core-attention strategy that runs a micro-batch as two nano-batches in phases."""

    def nano_rows(self, shard, device: torch.device, layer: NanoLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This rank's rows (in the shard's local order) of nano-batch 0 and of nano-batch 1,
        together every row once, or None: run this micro-batch as one ordinary call. The same
        answer for every layer of the micro-batch with the same `layer` shapes."""

    def start(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shard, nano: int,
              softmax_scale: float) -> Any:
        """Post nano-batch `nano`'s attention (q, k, v of its rows, in rows' order); a handle."""

    def serve(self, handle: Any) -> Any:
        """Run what this rank serves of that nano-batch; a handle for `collect`."""

    def collect(self, handle: Any) -> torch.Tensor:
        """The nano-batch's attention output [tokens, heads, head_dim]."""


@runtime_checkable
class NanoSequenceLayout(Protocol):
    """Under sequence parallelism: the residual stream's move into nano-batch rows and back,
    and one nano-batch's gather before its projection and scatter after its output."""

    def split(self, x: torch.Tensor, shard, rows) -> list[torch.Tensor]: ...

    def gather(self, h: torch.Tensor, tokens: int) -> torch.Tensor: ...

    def scatter(self, a: torch.Tensor) -> torch.Tensor: ...

    def merge(self, outs: list[torch.Tensor], shard) -> torch.Tensor: ...


class _Permute(torch.autograd.Function):
    """Rows of x in `order`. The rows form a permutation, so the backward is a gather by the
    inverse: no zero-filled gradient and no scatter-add (what index_select's backward does)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.inverse = inverse
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(0, ctx.inverse), None, None


def _order(shard, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The permutation [rows 0; rows 1] and its inverse, once per micro-batch."""
    def build():
        order = torch.cat(rows)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return order, inverse
    # keyed by the rows' tensor itself (kept alive by the memo), so a key is never reused
    return shard.memo(("nano_batches_order", _Key(rows[0])), build)


class _Key:
    """Hashable by identity around an object (a tensor's own == is elementwise)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Key) and other.obj is self.obj


class NanoStream:
    """The residual stream as its two nano-batches (`parts`), with each one's RoPE rows, while
    consecutive blocks run nano-batches."""

    def __init__(self, x: torch.Tensor, shard, rows, layout: NanoSequenceLayout | None, rope):
        self.shard, self.rows, self.layout = shard, rows, layout
        if layout is not None:
            self.parts = layout.split(x, shard, rows)
        else:
            order, inverse = _order(shard, rows)
            self.parts = list(_Permute.apply(x, order, inverse).split([r.numel() for r in rows]))
        self.ropes = tuple(tuple(t.index_select(0, r) for t in rope) for r in rows)

    def leave(self) -> torch.Tensor:
        """The stream in the shard's local order (row-sharded under sequence parallelism)."""
        if self.layout is not None:
            return self.layout.merge(self.parts, self.shard)
        order, inverse = _order(self.shard, self.rows)
        return _Permute.apply(torch.cat(self.parts), inverse, order)
