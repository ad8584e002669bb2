"""A rank of the dedicated CAD attention pool (`parallel.cad.pool` = K) holds the model's
shapes but none of its weights: it runs the same training loop on zero tokens so that it
reaches every CAD collective when the model ranks do (parallel/cad/pool.py says why), and
serves the attention the planner sends it."""
from __future__ import annotations

import torch


def phantomize(model: torch.nn.Module) -> None:
    """Drop every parameter's storage: each becomes a stride-0 view of one zero, without
    gradient. Shapes stay, so the layers still run (on zero tokens) and build their graph."""
    for p in model.parameters():
        p.data = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
        p.requires_grad_(False)


def make_pool_rank(model) -> None:
    """Phantom weights, and a backward that still runs: with no weight needing a gradient
    autograd would skip the CAD backward all-to-alls the model ranks wait for, so the
    embedding's (empty) output becomes the leaf the backward runs down to."""
    phantomize(model)
    model.grad_from_embedding = True
