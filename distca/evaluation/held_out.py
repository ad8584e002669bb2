"""Held-out data and its loss (the `loss` task of `eval.tasks`, `eval.batches` global batches):
loss and perplexity on data training never sees, logged as `eval_loss` and `eval_ppl`.

The held-out data is the same source as training (distca/data/holdout.py): for file and stdlib
sources the last `data.holdout` share of the documents, which the training packer never
reaches; for synthetic data another stream of the same language. Every evaluation reads the
same `eval.batches` global batches from the start of that data, so the curve compares steps.

The forward runs the way a training step does, over the same parallel layout: each rank reads
its DP share of every global batch (distca/data/loader.py, no prefetch), cut into micro-batches
and sharded by the plan, through the
engine (DDP / DeepSpeed, TP slices, CP or CAD strategies); with pipeline parallelism the
micro-batches go through the chunks in order, activations sent stage to stage. Forward only,
no grad (so no activation recompute); the loss sum is reduced like the training loss and
divided by the global label count.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import asdict

import torch
import torch.distributed as dist

from distca.data import build_data
from distca.evaluation.forward import run_forward, summed_loss


def eval_loss(cfg, plan, engine, stage, amp, device) -> float:
    """Mean next-token loss over the held-out batches (token-weighted, like the training loss)."""
    state = plan.state
    total = torch.zeros((), device=device, dtype=torch.float64)
    labels = 0
    with torch.no_grad():
        for batch in _held_out_batches(cfg, plan, device):
            labels += batch.n_labels
            micro = batch.micro
            if stage is not None:
                total += sum(run_forward(None, stage, micro, amp, summed_loss), torch.zeros((), device=device,
                                                                                       dtype=torch.float64))
            else:
                for mb in micro:
                    with amp:
                        total += engine(mb.input_ids, mb.shard, mb.labels).double()
    if dist.is_initialized() and state.dpcp_group is not None:
        dist.all_reduce(total, group=state.dpcp_group)
    if state.pp_group is not None:  # the loss lives on the last stage
        dist.all_reduce(total, group=state.pp_group)
    return float(total) / max(labels, 1)


def held_out_micro_batches(cfg, plan, device) -> list[list]:
    """This rank's micro-batches of every held-out global batch (for the per-token tasks)."""
    return [batch.micro for batch in _held_out_batches(cfg, plan, device)]


# this rank's held-out batches, per plan (a plan lives as long as its run): built once,
# indexing a corpus can be slow; a few batches, small beside the model
_BATCHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _held_out_batches(cfg, plan, device) -> list:
    """The held-out global batches (distca/data/loader.py StepBatch: this rank's micro-batches
    and the global label count), the same at every evaluation."""
    t = cfg.train
    key = (json.dumps(asdict(cfg.data), sort_keys=True, default=str), t.seed, t.global_batch_size,
           t.micro_batch_size, cfg.eval.batches, str(device))
    cached = _BATCHES.setdefault(plan, {})
    if key not in cached:
        data = build_data(cfg.data, t.seed, split="eval", model_dir=cfg.model.init_from or None)
        loader = data.loader(plan, t.global_batch_size, t.micro_batch_size, device, prefetch=False)
        cached.clear()
        cached[key] = [loader.next_step() for _ in range(cfg.eval.batches)]
    return cached[key]
