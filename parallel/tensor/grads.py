"""Between the backward and the optimizer step: the gradient reductions data parallelism does
not do, and the norm of the whole model's gradient.

Data parallelism (DDP, ZeRO) reduces over the DP x CP group of each (tp, pp) position. Under
tensor parallelism with sequence parallelism, a replicated parameter (a norm weight, the
linear-attention output norm shared by all heads) gets a partial gradient on every TP rank
(its tokens, or its heads): those are summed over the TP group here. Sliced parameters
(`param.tp_slice`) already hold their full gradient. Under pipeline parallelism with tied
embeddings the first stage's embedding and the last stage's LM head are two copies of one
weight: their gradients are summed over the pair (`tied`), so both copies take the same step.
The norm counts every sliced parameter's squares once per slice (summed over TP), replicated
ones once, sums over the pipeline stages, and counts a tied weight on one stage only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel import comm


class GradSync:
    def __init__(self, params, tp_group=None, pp_group=None, tied=(), tied_group=None,
                 count_tied: bool = True):
        params = [p for p in params if p.requires_grad]
        self.sliced = [p for p in params if getattr(p, "tp_slice", None) is not None]
        self.replicated = [p for p in params if getattr(p, "tp_slice", None) is None]
        self.tp_group = _group(tp_group)
        self.pp_group = _group(pp_group)
        self.tied, self.tied_group = list(tied), _group(tied_group)
        self.uncounted = set() if count_tied else {id(p) for p in self.tied}

    def finalize(self) -> None:
        """Sum the replicated parameters' partial gradients over TP and the tied copies'
        gradients over the first and last pipeline stage (one flat all-reduce each)."""
        if self.tp_group is not None:
            sum_over([p.grad for p in self.replicated if p.grad is not None], self.tp_group)
        if self.tied_group is not None:
            sum_over([p.grad for p in self.tied if p.grad is not None], self.tied_group)

    def norm(self) -> torch.Tensor:
        """The L2 norm of the whole model's gradient (call after finalize)."""
        def squares(ps):
            gs = [p.grad for p in ps if p.grad is not None and id(p) not in self.uncounted]
            if not gs:
                return torch.zeros((), dtype=torch.float32)
            return torch.stack([g.detach().float().pow(2).sum() for g in gs]).sum().cpu()

        sliced = squares(self.sliced)
        if self.tp_group is not None:
            device = next((p.grad.device for p in self.sliced if p.grad is not None), sliced.device)
            sliced = sliced.to(device)
            comm.all_reduce(sliced, dist.ReduceOp.SUM, self.tp_group)
            sliced = sliced.cpu()
        total = sliced + squares(self.replicated)
        if self.pp_group is not None:  # every stage holds its own layers
            total = total.to(self._device())
            comm.all_reduce(total, dist.ReduceOp.SUM, self.pp_group)
            total = total.cpu()
        return total.sqrt()

    def _device(self):
        return next((p.grad.device for p in self.sliced + self.replicated if p.grad is not None),
                    torch.device("cpu"))

    def clip(self, max_norm: float) -> float:
        """Scale every gradient so the whole model's norm is at most max_norm (no clipping
        when max_norm <= 0); returns the norm before clipping."""
        params = self.sliced + self.replicated
        if self.tp_group is None and self.pp_group is None:  # torch's own, exactly as before
            if max_norm > 0:
                return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            return float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in params if p.grad is not None])))
        total = self.norm()
        if max_norm > 0:
            grads = [p.grad for p in self.sliced + self.replicated if p.grad is not None]
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.to(g.device))
        return float(total)


def _group(group):
    """None for a missing group or a group of one rank (nothing to reduce)."""
    return group if group is not None and dist.get_world_size(group) > 1 else None


def sum_over(grads: list, group, average: bool = False) -> None:
    """Sum (or average) tensors over a group in place, as one flat all-reduce."""
    if not grads or group is None:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    comm.all_reduce(flat, dist.ReduceOp.SUM, group)
    if average:
        flat /= dist.get_world_size(group)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
