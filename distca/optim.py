"""The optimizer: AdamW with weight decay on matrices only (norm weights and biases exempt).

A factory over parameters, so a data-parallel engine can build it where it needs to
(DeepSpeed takes it as its client optimizer); the trainer owns the choice and its settings.
"""
from __future__ import annotations

import torch


def adamw_factory(tcfg, fused: bool):
    """params -> AdamW with train.{lr, beta1, beta2, weight_decay}; fused on the GPU."""
    def build(params) -> torch.optim.Optimizer:
        params = list(params)
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        kw = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=1e-8, **kw)
    return build
