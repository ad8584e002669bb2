"""A rank of the dedicated CAD attention pool (`parallel.cad.pool` = K).

A pool rank holds no weights and owns no tokens; it serves core attention for its CAD group.
Rather than a second program that would have to replay the model ranks' sequence of
all-to-alls (forward, activation recompute, nano-batch phases, backward in reverse), it runs
the *same* training loop on the same model code with an empty shard: every layer runs on
zero tokens, so the pool rank reaches each CAD collective exactly when the model ranks do,
and the planner sends it every attention task (it is the group's only server).

`PoolEngine` is the engine such a rank trains with: nothing is reduced, stepped or saved.
Its model was made weight-free before (zero-byte phantoms, a 0-d zero expanded to each shape:
`distca/parallelize/pool_rank.py`, applied with the other model transformations).
"""
from __future__ import annotations

import contextlib

import torch


class PoolEngine:
    """The engine interface (`parallel.data_parallel.DDPEngine`'s) for a pool rank."""

    group_size = 1  # the loss it returns is an empty sum; it joins no gradient reduction

    def __init__(self, model: torch.nn.Module):
        self.module = self.model = model

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
