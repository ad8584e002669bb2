"""Held-out evaluation (`eval.every`, `eval.batches`): loss and perplexity on data training never
sees, logged beside the training metrics as `eval_loss` and `eval_ppl`.

The held-out data is the same source as training (distca/data/holdout.py): for file and stdlib
sources the last `data.holdout` share of the documents, which the training packer never
reaches; for synthetic data another stream of the same language. Every evaluation reads the
same `eval.batches` global batches from the start of that data, so the curve compares steps.

The forward runs the way a training step does, over the same parallel layout: each rank takes
its DP share of every global batch, cut into micro-batches and sharded by the plan, through the
engine (DDP / DeepSpeed, TP slices, CP or CAD strategies); with pipeline parallelism the
micro-batches go through the chunks in order, activations sent stage to stage. Forward only,
no grad (so no activation recompute); the loss sum is reduced like the training loss and
divided by the global label count.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from functools import lru_cache

import torch
import torch.distributed as dist

from distca.data.batching import global_label_count, rank_micro_batches
from distca.observe.console import say
from distca.data import build_dataset
from parallel import comm
from parallel.pipeline.timeline import owner
from parallel.tensor.comm import rows_per_rank


def eval_enabled(cfg) -> bool:
    return cfg.eval.every > 0 and cfg.eval.batches > 0


def check_eval_config(cfg) -> None:
    """Config-time checks (called by distca/config/validate.py): a ValueError naming field and fix."""
    e = cfg.eval
    for name in ("every", "batches"):
        if getattr(e, name) < 0:
            raise ValueError(f"eval.{name}={getattr(e, name)} must be >= 0 (0 turns evaluation off)")
    cad = cfg.parallel.cad
    # CAD pool ranks and stages pooled into one CAD group (parallel/cad/pool.py, cad.pipeline=
    # joint) join attention rounds they run no micro-batch for: the evaluation forward does not
    # drive those rounds (yet)
    pooled = [f"parallel.cad.pool={cad.pool}"] if getattr(cad, "pool", 0) > 0 else []
    pooled += ["parallel.cad.pipeline=joint"] if str(getattr(cad, "pipeline", "")) == "joint" else []
    if eval_enabled(cfg) and pooled:
        raise ValueError(f"eval.every={e.every} does not run with {pooled[0]} yet. Fix: set "
                         "eval.every=0, or leave that option at its default")
    if eval_enabled(cfg) and cfg.data.source != "synthetic" and cfg.data.holdout <= 0:
        raise ValueError(
            f"eval.every={e.every} evaluates on held-out documents, but data.holdout=0 keeps none out "
            f"of training (data.source={cfg.data.source}). Fix: add data.holdout=0.01 (the last 1% of "
            "the documents leave the training stream), or set eval.every=0")


def evaluate(cfg, step: int, plan, engine, stage, amp, device) -> dict:
    """{} unless an evaluation is due after `step` (every `eval.every` steps, and the last);
    then {"eval_loss", "eval_ppl"}. Every rank calls it at the same step."""
    if not eval_enabled(cfg) or (step % cfg.eval.every and step != cfg.train.steps):
        return {}
    loss = eval_loss(cfg, plan, engine, stage, amp, device)
    ppl = math.exp(min(loss, 700.0))
    say(f"eval after step {step}: loss {loss:.4f} ppl {ppl:.2f} ({cfg.eval.batches} held-out batches)",
        not dist.is_initialized() or dist.get_rank() == 0)
    return {"eval_loss": loss, "eval_ppl": ppl}


def eval_loss(cfg, plan, engine, stage, amp, device) -> float:
    """Mean next-token loss over the held-out batches (token-weighted, like the training loss)."""
    state, t = plan.state, cfg.train
    total = torch.zeros((), device=device, dtype=torch.float64)
    labels = 0
    with torch.no_grad():
        for batch in _held_out_batches(_data_key(cfg), t.seed, t.global_batch_size, cfg.eval.batches):
            labels += global_label_count(batch)
            micro = rank_micro_batches(batch, plan, t.micro_batch_size, device)
            if stage is not None:
                total += _pipeline_forward(stage, micro, amp)
            else:
                for mb in micro:
                    with amp:
                        total += engine(mb.input_ids, mb.shard, mb.labels).double()
    if dist.is_initialized() and state.dpcp_group is not None:
        dist.all_reduce(total, group=state.dpcp_group)
    if state.pp_group is not None:  # the loss lives on the last stage
        dist.all_reduce(total, group=state.pp_group)
    plan.step_metrics()  # drop what the strategies measured here: the next step's are its own
    return float(total) / max(labels, 1)


def _data_key(cfg) -> str:
    return json.dumps(asdict(cfg.data), sort_keys=True, default=str)


@lru_cache(maxsize=2)
def _held_out_batches(data_key: str, seed: int, batch_size: int, batches: int) -> tuple:
    """The held-out global batches, the same at every evaluation (built once: indexing a
    corpus can be slow); a few batches of samples, small beside the model."""
    _, packer = build_dataset(json.loads(data_key), seed, split="eval")
    return tuple([packer.next_sample() for _ in range(batch_size)] for _ in range(batches))


def _pipeline_forward(stage, micro, amp) -> torch.Tensor:
    """This rank's summed loss over `micro` (non-zero on the last stage only): each micro-batch
    through every chunk in order, the owner of chunk c receiving its input from the owner of
    chunk c - 1. Every rank walks the same (micro-batch, chunk) order, so the sends and
    receives pair up without a schedule; evaluation is not worth one."""
    model, plan = stage.model, stage.plan
    pp, me, group = plan.dims.pp, plan.state.pp_rank, plan.state.pp_group
    chunks, last = plan.chunks, len(plan.chunks) - 1
    param = next(model.parameters())
    total = torch.zeros((), device=param.device, dtype=torch.float64)
    for mb in micro:
        rows = mb.shard.num_tokens
        shape = (rows_per_rank(rows, stage.tp) if stage.tp > 1 else rows, model.cfg.hidden)
        for c in range(len(chunks)):
            if owner(c, pp) != me:
                continue
            if c == 0:
                with amp:
                    x = model.embed_tokens(mb.input_ids)
            else:
                x = torch.empty(shape, dtype=param.dtype, device=param.device)
                comm.exchange([], [(x, owner(c - 1, pp))], group)
            with amp:
                x = model.run_blocks(x, mb.shard, chunks[c])
                if c == last:
                    total += model.head(x, mb.labels).double()
                    continue
            comm.exchange([(x.to(param.dtype), owner(c + 1, pp))], [], group)
    return total
