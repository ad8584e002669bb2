"""Config checks that must fail early, on every rank alike, before any collective can hang.

`build_plan` is the one entry: the model's own rules, then the parallel plan (degrees, CP
algorithm, layout, strategy options: parallel/plan.py), then the trainer's fields that
depend on the layout. Every error is a ValueError naming the field and the fix.
"""
from __future__ import annotations

from distca.model.transformer import validate_model_config
from parallel.config import ModelShape
from parallel.plan import ParallelPlan


def micro_batches_per_step(tcfg, dp: int) -> int:
    """Micro-batches each DP replica runs per optimizer step (gradient accumulation)."""
    return tcfg.global_batch_size // (tcfg.micro_batch_size * dp)


def build_plan(cfg, world_size: int) -> ParallelPlan:
    """The validated parallel plan for this config and world size (no process group yet)."""
    validate_model_config(cfg.model)
    m = cfg.model
    plan = ParallelPlan(cfg.parallel, ModelShape(m.heads, m.kv_heads, m.layers, m.ffn_hidden), world_size)
    dims, t = plan.dims, cfg.train
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        raise ValueError("train.global_batch_size and train.micro_batch_size must be >= 1")
    if t.global_batch_size % (t.micro_batch_size * dims.dp):
        raise ValueError(
            f"train.global_batch_size={t.global_batch_size} must be a multiple of "
            f"train.micro_batch_size*parallel.dp = {t.micro_batch_size}*{dims.dp}; "
            f"e.g. train.global_batch_size={t.micro_batch_size * dims.dp * max(1, t.global_batch_size // (t.micro_batch_size * dims.dp))}")
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
