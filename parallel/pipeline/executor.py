"""Run this rank's part of a pipeline schedule: forwards and backwards of its chunks, and the
activations and gradients that cross pipeline ranks after every tick.

The timeline (schedule.py) is the same on every rank, so after tick t each rank knows what it
sends (the output of its own action at t) and what it receives (the outputs of the other
ranks' actions at t that feed its chunks); both ends post the pair in one batched exchange
(parallel/comm.py), which needs no size handshake because every rank can compute every
micro-batch's activation shape. Activations enter a chunk as leaves that require gradients;
a chunk's backward is `torch.autograd.backward(output, received gradient)`, or on the last
chunk the backward of its scaled loss; the input's gradient goes to the previous chunk.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from parallel import comm
from parallel.pipeline.schedule import Action, bubble_fraction, lockstep_timeline, owner, tick_kind, timeline


@dataclass
class PipelineRun:
    losses: dict = field(default_factory=dict)  # micro-batch -> last chunk's output (detached)
    busy_s: float = 0.0                         # this rank's time in forwards and backwards
    wall_s: float = 0.0
    schedule_bubble: float = 0.0                # idle share of the timeline (equal-cost actions)


class PipelineExecutor:
    def __init__(self, group, pp: int, pp_rank: int, virtual: int, micro_batches: int,
                 lockstep: bool = False):
        self.group, self.pp, self.rank = group, pp, pp_rank
        self.chunks = pp * virtual
        # lockstep (CAD pooled across stages): every tick all-forward or all-backward
        self.ticks = lockstep_timeline(pp, micro_batches) if lockstep else timeline(pp, virtual, micro_batches)

    def run(self, forward, act_shape, dtype, device, loss_scale: float, tick=None) -> PipelineRun:
        """forward(chunk, micro_batch, x) -> the chunk's output (its input x is None on chunk
        0; the last chunk returns the loss); act_shape(micro_batch) -> the shape of the
        activation between chunks. tick(forward_tick, action or None), if given, runs on
        every rank at the start of every tick (lock-step CAD plans the tick there, and an
        idle rank runs its dummy pass)."""
        out = PipelineRun(schedule_bubble=bubble_fraction(self.ticks))
        inputs, outputs, grads = {}, {}, {}
        last = self.chunks - 1
        start = time.perf_counter()
        for row in self.ticks:
            a = row[self.rank]
            if tick is not None:
                tick(tick_kind(row), a)
            if a is not None:
                t0 = time.perf_counter()
                self._compute(a, forward, inputs, outputs, grads, out, loss_scale, last)
                out.busy_s += time.perf_counter() - t0
            sends, recvs = [], []
            for r, b in enumerate(row):
                if b is None:
                    continue
                dest_chunk = b.chunk + 1 if b.forward else b.chunk - 1
                if not 0 <= dest_chunk <= last:
                    continue
                if r == self.rank:
                    sends.append((self._payload(b, inputs, outputs), owner(dest_chunk, self.pp)))
                elif owner(dest_chunk, self.pp) == self.rank:
                    buf = torch.empty(act_shape(b.micro_batch), dtype=dtype, device=device)
                    (inputs if b.forward else grads)[(dest_chunk, b.micro_batch)] = buf
                    recvs.append((buf, r))
            comm.exchange(sends, recvs, self.group)
        out.wall_s = time.perf_counter() - start
        return out

    @staticmethod
    def _payload(a: Action, inputs, outputs) -> torch.Tensor:
        if a.forward:
            return outputs[(a.chunk, a.micro_batch)].detach()
        return inputs.pop((a.chunk, a.micro_batch)).grad

    def _compute(self, a: Action, forward, inputs, outputs, grads, out, loss_scale, last):
        key = (a.chunk, a.micro_batch)
        if a.forward:
            x = inputs.get(key)
            if x is not None:
                x.requires_grad_()
            y = forward(a.chunk, a.micro_batch, x)
            outputs[key] = y
            if a.chunk == last:
                out.losses[a.micro_batch] = y.detach()
            return
        y = outputs.pop(key)
        if a.chunk == last:
            (y * loss_scale).backward()
        else:
            torch.autograd.backward(y, grads.pop(key))
        if a.chunk == 0:
            inputs.pop(key, None)
