"""Config checks that must fail early, on every rank alike, before any collective can hang.

`build_plan` is the one entry: the model's own rules, then the parallel plan (degrees, CP
algorithm, layout, strategy options: parallel/plan.py), then the trainer's fields that
depend on the layout. Every error is a ValueError naming the field and the fix.
"""
from __future__ import annotations

from distca.flops import layer_costs
from distca.model.transformer import head_dim, validate_model_config
from parallel.config import ModelShape
from parallel.plan import ParallelPlan


def micro_batches_per_step(tcfg, dp: int) -> int:
    """Micro-batches each DP replica runs per optimizer step (gradient accumulation)."""
    return tcfg.global_batch_size // (tcfg.micro_batch_size * dp)


def build_plan(cfg, world_size: int, vocab: int | None = None) -> ParallelPlan:
    """The validated parallel plan for this config and world size (no process group yet);
    `vocab` (the padded vocabulary) prices the LM head for the pipeline split."""
    validate_model_config(cfg.model)
    m = cfg.model
    costs, embed_cost, head_cost = layer_costs(m, head_dim(m), cfg.data.seq_len,
                                               vocab or max(m.vocab_size, 0))
    shape = ModelShape(m.heads, m.kv_heads, m.layers, m.ffn_hidden, tuple(costs), embed_cost,
                       head_cost, m.tie_embeddings)
    plan = ParallelPlan(cfg.parallel, shape, world_size)
    dims, t = plan.dims, cfg.train
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        raise ValueError("train.global_batch_size and train.micro_batch_size must be >= 1")
    if t.global_batch_size % (t.micro_batch_size * dims.dp):
        raise ValueError(
            f"train.global_batch_size={t.global_batch_size} must be a multiple of "
            f"train.micro_batch_size*parallel.dp = {t.micro_batch_size}*{dims.dp}; "
            f"e.g. train.global_batch_size={t.micro_batch_size * dims.dp * max(1, t.global_batch_size // (t.micro_batch_size * dims.dp))}")
    if dims.pp > 1 and plan.cfg.pp_virtual > 1 and micro_batches_per_step(t, dims.dp) % dims.pp:
        raise ValueError(
            f"the interleaved pipeline needs micro-batches per step (train.global_batch_size / "
            f"(train.micro_batch_size x parallel.dp) = {micro_batches_per_step(t, dims.dp)}) to be "
            f"a multiple of parallel.pp={dims.pp}; change train.global_batch_size")
    if t.steps < 1:
        raise ValueError(f"train.steps={t.steps} must be >= 1")
    if cfg.data.seq_len < 2 * dims.cp:
        raise ValueError(f"data.seq_len={cfg.data.seq_len} is too short for parallel.cp={dims.cp}; "
                         f"use data.seq_len >= {2 * dims.cp}")
    if t.collective_timeout_s <= 0:
        raise ValueError(f"train.collective_timeout_s={t.collective_timeout_s} must be > 0 seconds")
    if cfg.checkpoint.every < 0:
        raise ValueError(f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0 = only at the end)")
    return plan
