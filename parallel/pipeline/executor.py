"""Run this rank's part of a pipeline schedule: forwards and backwards of its chunks, and the
activations and gradients that cross pipeline ranks after every tick.

The timeline (timeline.py) is the same on every rank, so after tick t each rank knows what it
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
from parallel.pipeline.timeline import Action, bubble_fraction, lockstep_timeline, owner, tick_kind, timeline


@dataclass
class PipelineRun:
    losses: dict = field(default_factory=dict)  # micro-batch -> last chunk's output (detached)
    busy_s: float = 0.0                         # this rank's time in forwards and backwards
    wall_s: float = 0.0                         # (device time on a GPU: CUDA events, see Spans)
    schedule_bubble: float = 0.0                # idle share of the timeline (equal-cost actions)


class Spans:
    """Time spent inside marked spans and in the whole run, as the device sees it: on a GPU
    CUDA events (the host only queues kernels, so its clock would measure launches), read
    once at the end; on the CPU, where work runs as it is issued, the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.pairs: list = []
        self.busy_s = 0.0
        self._start = self._mark()

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def begin(self):
        return self._mark()

    def end(self, begun) -> None:
        end = self._mark()
        if self.cuda:
            self.pairs.append((begun, end))
        else:
            self.busy_s += end - begun

    def finish(self) -> tuple[float, float]:
        """(busy seconds, wall seconds)."""
        end = self._mark()
        if not self.cuda:
            return self.busy_s, end - self._start
        end.synchronize()
        busy = sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        return busy, self._start.elapsed_time(end) / 1e3


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
        spans = Spans(device)
        for row in self.ticks:
            a = row[self.rank]
            if tick is not None:
                tick(tick_kind(row), a)
            if a is not None:
                begun = spans.begin()
                self._compute(a, forward, inputs, outputs, grads, out, loss_scale, last)
                spans.end(begun)
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
        out.busy_s, out.wall_s = spans.finish()
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
