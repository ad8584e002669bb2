"""Data parallelism behind one small interface: torch DDP (zero_stage=0) or DeepSpeed ZeRO 1-3.

Gradients are reduced over every rank that holds a full replica of the weights and sees
different tokens: the DP x CP group. Both backends *average* over that group, so callers pass
a loss already normalised by the global token count and multiplied by the group size; the
average then equals the gradient of the global mean loss, whatever the layout.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def _adamw(params, tcfg, fused: bool):
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=1e-8, **kw)


class DDPEngine:
    """Plain torch: DDP over the DP x CP group (or nothing for a single replica)."""
    backend = "ddp"

    def __init__(self, model: torch.nn.Module, state, tcfg):
        self.module = model
        self.group = state.dpcp_group
        self.group_size = dist.get_world_size(self.group) if self.group is not None else 1
        if self.group_size > 1:
            ids = [state.device.index] if state.device.type == "cuda" else None
            self.model = DDP(model, device_ids=ids, process_group=self.group, broadcast_buffers=False)
        else:
            self.model = model
        self.optimizer = _adamw(list(model.parameters()), tcfg, fused=state.device.type == "cuda")
        self.grad_clip = tcfg.grad_clip

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
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in self.module.parameters() if p.grad is not None]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1-3. Our AdamW is the client optimizer so the math matches DDP."""
    backend = "deepspeed"

    def __init__(self, model: torch.nn.Module, state, tcfg, zero_stage: int, grad_accum: int):
        import deepspeed  # lazy: heavy import, only when asked for

        if dist.get_world_size() != dist.get_world_size(state.dpcp_group):
            raise ValueError("parallel.zero_stage>0 needs the DP x CP group to span the world "
                             "(tp=pp=1); set parallel.zero_stage=0 to use DDP")
        self.group_size = dist.get_world_size(state.dpcp_group)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": grad_accum * self.group_size,
            "gradient_clipping": tcfg.grad_clip,
            "zero_optimization": {"stage": zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.module = model
        opt = _adamw(list(model.parameters()), tcfg, fused=False)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                                                config=ds_config)

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
        return float(norm) if norm is not None else float("nan")


def build_engine(model, state, tcfg, zero_stage: int, grad_accum: int):
    if zero_stage == 0:
        return DDPEngine(model, state, tcfg)
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"parallel.zero_stage={zero_stage} must be 0 (DDP) or 1, 2, 3 (DeepSpeed ZeRO)")
    if not dist.is_initialized():
        raise ValueError("parallel.zero_stage>0 needs a distributed launch (torchrun); "
                         "use parallel.zero_stage=0 for a single process")
    return DeepSpeedEngine(model, state, tcfg, zero_stage, grad_accum)
