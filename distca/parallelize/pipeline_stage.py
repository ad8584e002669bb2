"""Pipeline parallelism applied to the model from outside its code: this rank keeps the layers
of its chunks (the plan's split, `parallel/pipeline/split.py`), the embedding if it runs the
first chunk, the final norm and LM head if it runs the last, and runs micro-batches through
its chunks on the schedule's timeline (`parallel/pipeline/executor.py`).

Layers of other stages become placeholders, so every kept parameter keeps its name
(`blocks.<global index>....`) and checkpoints load at any pipeline layout. With tied
embeddings and pp > 1 the first stage's embedding and the last stage's LM head are separate
copies of one weight, kept equal by summing their gradients (GradSync's `tied`).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn

from distca.model.transformer import HybridLM
from parallel.context.shard import empty_shard
from parallel.pipeline.executor import PipelineExecutor
from parallel.tensor.comm import rows_per_rank


class OtherStage(nn.Module):
    """A layer another pipeline stage runs (no parameters here)."""

    def forward(self, *args):
        raise RuntimeError("this layer belongs to another pipeline stage")


class PipelineStage:
    def __init__(self, model: HybridLM, plan, micro_batches: int):
        state, dims = plan.state, plan.dims
        self.model, self.plan = model, plan
        self.mine = plan.chunks_of(state.pp_rank)
        self.last_chunk = len(plan.chunks) - 1
        owned = {i for c in self.mine for i in plan.chunks[c]}
        for i in range(len(model.blocks)):
            if i not in owned:
                model.blocks[i] = OtherStage()
        self.tied_embeddings = model.lm_head.weight is model.embed.weight
        self.first, self.last = 0 in self.mine, self.last_chunk in self.mine
        if not self.first:
            model.embed = None
        if not self.last:
            model.norm = None
            model.lm_head = None
        self.tp = dims.tp
        # NCCL: a batched point-to-point call must not be the first call on its group unless
        # every rank of the group joins it; one collective first makes the ticks safe
        dist.barrier(group=state.pp_group)
        self.joint = plan.joint_pipeline  # CAD pooled across stages: lock-step ticks
        self.executor = PipelineExecutor(state.pp_group, dims.pp, state.pp_rank,
                                         len(plan.chunks) // dims.pp, micro_batches, lockstep=self.joint)

    def _joint_tick(self, forward, micro, param, amp):
        """The tick hook of CAD pooled across stages: plan the tick over every stage's shard,
        and on an idle stage run a dummy pass over no tokens that joins the tick's attention
        rounds (DistCA's dummy ticks): a forward tick's forward, or a backward tick's backward
        (after a silent forward that exchanges nothing, so that only the rounds its peers run
        are run: with full recompute the recomputed forward's, then the backward's)."""
        cad, device = self.plan.core_attention, param.device
        chunk = self.mine[0]  # lock-step runs 1F1B: one chunk per rank
        empty = SimpleNamespace(input_ids=torch.zeros(0, dtype=torch.long, device=device),
                                labels=torch.zeros(0, dtype=torch.long, device=device),
                                shard=empty_shard(self.plan.layout, self.plan.state.cp_rank,
                                                  self.plan.dims.cp).to(device))

        def tick(forward_tick: bool, action):
            shard = micro[action.micro_batch].shard if action is not None else empty.shard
            cad.begin_tick(shard, device, forward_tick)
            if action is not None:
                return
            x = None if chunk == 0 else torch.zeros((0, self.model.cfg.hidden), dtype=param.dtype,
                                                    device=device, requires_grad=True)
            if forward_tick:
                with torch.no_grad():
                    self._run_chunk(chunk, empty, x, amp)
                return
            with cad.silent():
                y = self._run_chunk(chunk, empty, x, amp)
            if y.dim() == 0:
                y.backward()
            else:
                torch.autograd.backward(y, torch.zeros_like(y))
        return tick

    def _run_chunk(self, chunk, mb, x, amp):
        model = self.model
        with amp:
            if chunk == 0:
                x = model.embed_tokens(mb.input_ids)
            x = model.run_blocks(x, mb.shard, self.plan.chunks[chunk])
            return model.head(x, mb.labels) if chunk == self.last_chunk else x

    def tied_copies(self) -> list:
        """This stage's copy of a weight tied across the first and last stage (call after
        tensor parallelism has sliced the model: the parameters are new then)."""
        if not self.tied_embeddings or self.first == self.last:
            return []  # untied, a middle stage, or both ends here (one parameter)
        return [self.model.embed.weight if self.first else self.model.lm_head.weight]

    def forward_backward(self, micro, loss_scale: float, amp) -> tuple[torch.Tensor, dict]:
        """Run a step's micro-batches through this rank's chunks, forward and backward; returns
        (this rank's summed loss: non-zero on the last stage only, pipeline metrics)."""
        model = self.model

        def forward(chunk, m, x):
            return self._run_chunk(chunk, micro[m], x, amp)

        def act_shape(m):
            t = micro[m].shard.num_tokens
            return (rows_per_rank(t, self.tp) if self.tp > 1 else t, model.cfg.hidden)

        param = next(model.parameters())
        tick = self._joint_tick(forward, micro, param, amp) if self.joint else None
        try:
            run = self.executor.run(forward, act_shape, param.dtype, param.device, loss_scale, tick)
        finally:
            if self.joint:
                self.plan.core_attention.end_ticks()
        total = sum(run.losses.values(), torch.zeros((), device=param.device, dtype=torch.float32))
        times = torch.tensor([run.busy_s, run.wall_s], dtype=torch.float64, device=param.device)
        dist.all_reduce(times, group=self.plan.state.pp_group)  # every stage's, summed
        return total, {"pp_bubble": run.schedule_bubble,
                       "pp_bubble_measured": 1.0 - float(times[0] / times[1]) if times[1] > 0 else 0.0}
