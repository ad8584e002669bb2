"""The evaluation forward: micro-batches through this rank's part of the model, forward only,
under the training layout (DP share, CP/CAD strategies, TP slices, pipeline stages), and what
to do with the result on the rank that holds the last stage.

Without pipeline parallelism every rank runs the whole model on its tokens. With it, each
micro-batch goes through every chunk in order, the owner of chunk c receiving its input from
the owner of chunk c - 1: every rank walks the same (micro-batch, chunk) order, so the sends
and receives pair up without a schedule (evaluation is not worth one).
"""
from __future__ import annotations

from typing import Callable

import torch

from parallel import comm
from parallel.pipeline.timeline import owner
from parallel.tensor.comm import rows_per_rank

# finish(model, x, micro_batch) on the last stage's output x (before the final norm)
Finish = Callable[[torch.nn.Module, torch.Tensor, object], object]


def final_hidden(model, x: torch.Tensor, mb) -> torch.Tensor:
    return model.head(x, None)  # the final norm's output (sequence-parallel rows under TP)


def summed_loss(model, x: torch.Tensor, mb) -> torch.Tensor:
    return model.head(x, mb.labels).double()


@torch.no_grad()
def run_forward(model, stage, micro, amp, finish: Finish) -> list:
    """finish's result for each micro-batch whose last stage this rank holds (in order)."""
    if stage is None:
        out = []
        for mb in micro:
            with amp:
                x = model.run_blocks(model.embed_tokens(mb.input_ids), mb.shard, range(len(model.blocks)))
                out.append(finish(model, x, mb))
        return out
    return _pipeline(stage, micro, amp, finish)


def _pipeline(stage, micro, amp, finish: Finish) -> list:
    model, plan = stage.model, stage.plan
    pp, me, group = plan.dims.pp, plan.state.pp_rank, plan.state.pp_group
    chunks, last = plan.chunks, len(plan.chunks) - 1
    param = next(model.parameters())
    out = []
    for mb in micro:
        rows = mb.shard.num_tokens
        shape = (rows_per_rank(rows, stage.tp) if stage.tp > 1 else rows, model.cfg.hidden)
        for c in range(len(chunks)):
            if owner(c, pp) != me:
                continue
            if c == 0:
                with amp:
                    x = model.embed_tokens(mb.input_ids)
            else:
                x = torch.empty(shape, dtype=param.dtype, device=param.device)
                comm.exchange([], [(x, owner(c - 1, pp))], group)
            with amp:
                x = model.run_blocks(x, mb.shard, chunks[c])
                if c == last:
                    out.append(finish(model, x, mb))
                    continue
            comm.exchange([(x.to(param.dtype), owner(c + 1, pp))], [], group)
    return out
