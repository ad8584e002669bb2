"""How a layer's parameters are sliced over the TP group, and sequence parallelism around a
layer, without changing the layer's code or its parameter names.

A `TPSlice` says which dimension of a parameter is split and which logical parts are
concatenated along it: a fused QKV weight is [q | k | v] rows, so every part is split into tp
pieces and rank r keeps [q_r | k_r | v_r] (splitting the fused rows naively would hand rank 0
all of q). The slice is recorded on the parameter (`param.tp_slice`): gradient reduction
treats every parameter without one as replicated, and checkpoints store each part as its own
tensor, sharded, so they load at any tp.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from parallel.tensor.comm import gather_sequence, scatter_sequence


@dataclass(frozen=True)
class TPSlice:
    dim: int                 # the dimension split over TP
    parts: tuple[int, ...]   # full sizes of the logical parts concatenated along `dim`

    def local(self, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
        """This rank's slice of the full tensor: its piece of every part, concatenated."""
        for p in self.parts:
            if p % tp:
                raise ValueError(f"a part of {p} along dim {self.dim} cannot be split over tp={tp}")
        pieces = [part.chunk(tp, self.dim)[rank] for part in full.split(list(self.parts), self.dim)]
        return torch.cat(pieces, self.dim).contiguous()

    def local_parts(self, local: torch.Tensor, tp: int) -> list[torch.Tensor]:
        """Views of this rank's piece of every part, inside its local slice."""
        return list(local.split([p // tp for p in self.parts], self.dim))


def shard_parameter(module: nn.Module, name: str, tp_slice: TPSlice, rank: int, tp: int) -> None:
    """Replace module.<name> by this rank's slice (a new Parameter, same name), tagged."""
    full = getattr(module, name)
    param = nn.Parameter(tp_slice.local(full.detach(), rank, tp), requires_grad=full.requires_grad)
    param.tp_slice = tp_slice
    setattr(module, name, param)


def shard_buffer(module: nn.Module, name: str, tp_slice: TPSlice, rank: int, tp: int,
                 persistent: bool) -> None:
    module.register_buffer(name, tp_slice.local(getattr(module, name), rank, tp), persistent=persistent)


def sequence_parallel(module: nn.Module, group, tokens_from=None) -> None:
    """Run `module` on all tokens of the TP group while the stream around it stays sharded:
    all-gather its first input before it runs, reduce-scatter its (partial) output after.
    tokens_from(args) gives the token count to gather (None: all rows, padding included, for
    layers that map zero rows to zero rows)."""
    def gather(_module, args):
        tokens = tokens_from(args) if tokens_from is not None else None
        return (gather_sequence(args[0], tokens, group),) + tuple(args[1:])

    def scatter(_module, _args, output):
        return scatter_sequence(output, group)

    module.register_forward_pre_hook(gather)
    module.register_forward_hook(scatter)
