"""A rank of the dedicated CAD attention pool (`parallel.cad.pool` = K).

A pool rank holds no weights and owns no tokens; it serves core attention for its CAD group.
Rather than a second program that would have to replay the model ranks' sequence of
all-to-alls (forward, activation recompute, nano-batch phases, backward in reverse), it runs
the *same* training loop on the same model code with an empty shard: every layer runs on
zero tokens, so the pool rank reaches each CAD collective exactly when the model ranks do,
and the planner sends it every attention task (it is the group's only server).

`PoolEngine` is the engine such a rank trains with: its weights become zero-byte phantoms
(a 0-d zero expanded to each shape), nothing is reduced, stepped or saved.
"""
from __future__ import annotations

import contextlib

import torch


def phantomize(model: torch.nn.Module) -> None:
    """Drop every parameter's storage: each becomes a stride-0 view of one zero, without
    gradient. Shapes stay, so the layers still run (on zero tokens) and build their graph."""
    for p in model.parameters():
        p.data = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
        p.requires_grad_(False)


class PoolEngine:
    """The engine interface (`parallel.data_parallel.DDPEngine`'s) for a pool rank."""

    group_size = 1  # the loss it returns is an empty sum; it joins no gradient reduction

    def __init__(self, model: torch.nn.Module):
        phantomize(model)
        self.module = self.model = model
        # With no weight needing a gradient nothing would require grad, and autograd would
        # skip the CAD backward all-to-alls the model ranks wait for: the embedding's
        # (empty) output becomes the leaf the backward runs down to.
        embed = model.embed_tokens
        model.embed_tokens = lambda ids: embed(ids).requires_grad_()

    def __call__(self, *args):
        return self.model(*args)

    def accumulate(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        return 0.0  # no weights: the step's gradient norm is the model ranks'

    def save(self, ckpt_dir: str, tag: str) -> None:
        pass  # nothing to keep: model ranks save the weights (over their own group)

    def load(self, ckpt_dir: str, tag: str) -> None:
        pass
