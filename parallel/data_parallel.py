"""Data parallelism behind one small interface: torch DDP (zero_stage=0) or DeepSpeed ZeRO 1-3.

Gradients are reduced over every rank that holds a full replica of the weights and sees
different tokens: the DP x CP group. Both backends *average* over that group, so callers pass
a loss already normalised by the global token count and multiplied by the group size; the
average then equals the gradient of the global mean loss, whatever the layout.

The trainer hands each engine an optimizer factory (params -> optimizer) and the gradient
clip; each engine saves and loads its own state (`save(dir, tag)` / `load(dir, tag)`), in
its own format, so checkpointing never looks inside an engine.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)
from torch.nn.parallel import DistributedDataParallel as DDP

from parallel.cad.pool import PoolEngine
from parallel.tensor.checkpoint import layout_free, rename_tied
from parallel.tensor.grads import GradSync, sum_over


class DDPEngine:
    """Plain torch: DDP over the DP x CP group (or nothing for a single replica). Checkpoints
    are torch.distributed.checkpoint folders (sharded, loadable at another world size).

    With pipeline parallelism (`wrap=False`) the stages' forwards do not go through a DDP
    module, so the gradients are averaged over the group by one flat all-reduce before the
    step instead (as DeepSpeed's pipeline engine does)."""

    def __init__(self, model: torch.nn.Module, state, make_optimizer, grad_clip: float,
                 grad_sync: GradSync | None = None, wrap: bool = True, tied_names=None,
                 shard_optimizer_over=None):
        self.module = model
        self.tied_names = tied_names  # (alias, name) of a weight tied across stages, or None
        self.grad_sync = grad_sync or GradSync(model.parameters())
        self.tp_group = self.grad_sync.tp_group
        self.group = state.dpcp_group
        self.save_group = state.model_group  # None: the world; with a CAD pool, the model ranks
        self.group_size = dist.get_world_size(self.group) if self.group is not None else 1
        self.manual_average = wrap is False and self.group_size > 1
        if self.group_size > 1 and wrap:
            ids = [state.device.index] if state.device.type == "cuda" else None
            self.model = DDP(model, device_ids=ids, process_group=self.group, broadcast_buffers=False)
        else:
            self.model = model
        self.optimizer = make_optimizer(model.parameters(), shard_group=shard_optimizer_over)
        # what checkpoints see: ZeRO-1's own optimizer over this rank's share of the parameters
        self.local_optimizer = getattr(self.optimizer, "optim", self.optimizer)
        self.grad_clip = grad_clip

    def __call__(self, *args):
        return self.model(*args)

    @contextlib.contextmanager
    def accumulate(self, last: bool):
        """Skip the gradient all-reduce on every micro-batch but the last of a step."""
        if self.group_size > 1 and not last:
            with self.model.no_sync():
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.manual_average:
            sum_over([p.grad for p in self.module.parameters() if p.grad is not None], self.group,
                     average=True)
        self.grad_sync.finalize()
        norm = float(self.grad_sync.clip(self.grad_clip))  # the whole model's: every rank agrees
        if math.isfinite(norm):  # a NaN/inf gradient skips the update (the trainer counts it)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _state(self):
        """(model state, optimizer state, their layout-free views for DCP)."""
        opts = StateDictOptions(flatten_optimizer_state_dict=True)
        model_sd, optim_sd = get_state_dict(self.module, self.local_optimizer, options=opts)
        sliced = {name: p.tp_slice for name, p in self.module.named_parameters()
                  if getattr(p, "tp_slice", None) is not None}
        device = next(self.module.parameters()).device.type
        views = {"model": layout_free(model_sd, sliced, self.tp_group, device),
                 "optim": layout_free(optim_sd, sliced, self.tp_group, device)}
        if self.tied_names is not None:
            views = {k: rename_tied(v, *self.tied_names) for k, v in views.items()}
        return model_sd, optim_sd, views

    def save(self, ckpt_dir: str, tag: str) -> None:
        dcp.save(self._state()[2], checkpoint_id=str(Path(ckpt_dir) / tag), process_group=self.save_group)

    def load(self, ckpt_dir: str, tag: str) -> None:
        model_sd, optim_sd, views = self._state()
        dcp.load(views, checkpoint_id=str(Path(ckpt_dir) / tag),  # in place, through the views
                 process_group=self.save_group)
        set_state_dict(self.module, self.local_optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=StateDictOptions(flatten_optimizer_state_dict=True))


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1-3, with the trainer's optimizer as the client optimizer so the
    math matches DDP. Checkpoints are DeepSpeed's (its optimizer state is partitioned)."""

    def __init__(self, model: torch.nn.Module, state, make_optimizer, grad_clip: float,
                 zero_stage: int, grad_accum: int):
        import deepspeed  # lazy: heavy import, only when asked for

        if dist.get_world_size() != dist.get_world_size(state.dpcp_group):
            raise ValueError("parallel.zero_stage>0 needs the DP x CP group to span the world "
                             "(tp=pp=1); set parallel.zero_stage=0 to use DDP")
        self.group_size = dist.get_world_size(state.dpcp_group)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": grad_accum * self.group_size,
            "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.module = model
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(model.parameters()), config=ds_config)

    def __call__(self, *args):
        return self.model(*args)

    @contextlib.contextmanager
    def accumulate(self, last: bool):
        yield  # DeepSpeed counts micro-steps itself and reduces at the boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)
        # DeepSpeed counts micro-steps in step(): call it after every backward but the last,
        # where it only advances the counter; the real update happens in self.step().
        if not self.model.is_gradient_accumulation_boundary():
            self.model.step()

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.step()
        norm = self.model.get_global_grad_norm()
        # None: DeepSpeed measured none this step (not a bad step). DeepSpeed applies the
        # update itself, so a non-finite step is counted by the trainer but not skipped.
        return float(norm) if norm is not None else None

    def save(self, ckpt_dir: str, tag: str) -> None:
        self.model.save_checkpoint(ckpt_dir, tag=tag, save_latest=False)

    def load(self, ckpt_dir: str, tag: str) -> None:
        self.model.load_checkpoint(ckpt_dir, tag=tag)


def build_engine(model, state, make_optimizer, grad_clip: float, zero_stage: int, grad_accum: int,
                 tied=(), tied_names=None):
    """DDP (zero_stage 0) or DeepSpeed ZeRO 1-3 around `model`; make_optimizer(params) builds
    the optimizer (the trainer's choice). With tensor and pipeline parallelism the gradients
    that data parallelism does not reduce are (GradSync), and the norm covers the whole model;
    `tied` are this stage's copies of weights tied across the first and last pipeline stage,
    `tied_names` (alias, name) how checkpoints call such a weight (one entry whatever the stage).
    A rank of the CAD attention pool gets a `PoolEngine` (parallel/cad/pool.py)."""
    if state.pool_index is not None:  # a CAD pool rank: no weights, nothing to reduce or step
        return PoolEngine(model)
    tp_or_pp = state.dims.tp > 1 or state.dims.pp > 1
    if zero_stage == 0 or (zero_stage == 1 and tp_or_pp):
        pp = state.dims.pp > 1
        sync = GradSync(model.parameters(), state.tp_group, state.pp_group, tied, state.embed_group,
                        count_tied=not pp or state.pp_rank == 0)
        shard = (state.dpcp_group if zero_stage == 1 and state.dpcp_group is not None
                 and dist.get_world_size(state.dpcp_group) > 1 else None)
        return DDPEngine(model, state, make_optimizer, grad_clip, sync, wrap=not pp, tied_names=tied_names,
                         shard_optimizer_over=shard)
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"parallel.zero_stage={zero_stage} must be 0 (DDP) or 1, 2, 3 (DeepSpeed ZeRO)")
    if not dist.is_initialized():
        raise ValueError("parallel.zero_stage>0 needs a distributed launch (torchrun); "
                         "use parallel.zero_stage=0 for a single process")
    return DeepSpeedEngine(model, state, make_optimizer, grad_clip, zero_stage, grad_accum)
