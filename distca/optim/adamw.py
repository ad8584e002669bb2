"""The optimizer: AdamW with weight decay on matrices only (norm weights and biases exempt).

A factory over parameters, so a data-parallel engine can build it where it needs to
(DeepSpeed takes it as its client optimizer); the trainer owns the choice and its settings.
Given a `shard_group`, the optimizer state is partitioned over it (ZeRO stage 1, torch's
ZeroRedundancyOptimizer: each rank keeps and updates the state of its share of the
parameters, then broadcasts them).
"""
from __future__ import annotations

import torch


def adamw_factory(tcfg, fused: bool):
    """params -> AdamW with train.{lr, beta1, beta2, weight_decay}; fused on the GPU."""
    def build(params, shard_group=None) -> torch.optim.Optimizer:
        params = list(params)
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        kw = {"lr": tcfg.lr, "betas": (tcfg.beta1, tcfg.beta2), "eps": 1e-8}
        if fused:
            kw["fused"] = True
        if shard_group is None:
            return torch.optim.AdamW(groups, **kw)
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW,
                                       process_group=shard_group, **kw)
    return build
