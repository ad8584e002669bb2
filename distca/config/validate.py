"""Config checks that must fail early, on every rank alike, before any collective can hang.

`build_plan` is the one entry: the model's own rules, then the parallel plan (degrees, CP
algorithm, layout, strategy options: parallel/plan.py), then the trainer's fields that
depend on the layout. Every error is a ValueError naming the field and the fix.
"""
from __future__ import annotations

import dataclasses

from distca.config.errors import ConfigError, unknown_key_message
from distca.evaluation.tasks import check_eval_config
from distca.observe.flops import layer_costs
from distca.model.transformer import head_dim, validate_model_config
from parallel.config import ModelShape
from parallel.plan import ParallelPlan


__all__ = ["ConfigError", "build_plan", "check_known_keys", "micro_batches_per_step"]


def micro_batches_per_step(tcfg, dp: int) -> int:
    """Micro-batches each DP replica runs per optimizer step (gradient accumulation)."""
    return tcfg.global_batch_size // (tcfg.micro_batch_size * dp)


def build_plan(cfg, world_size: int, vocab: int | None = None) -> ParallelPlan:
    """The validated parallel plan for this config and world size (no process group yet);
    `vocab` (the padded vocabulary) prices the LM head for the pipeline split."""
    validate_model_config(cfg.model)
    _check_fields(cfg)
    m = cfg.model
    p = cfg.parallel
    need = max(p.tp, 1) * max(p.pp, 1) * max(p.cp, 1) * max(p.dp, 1)
    if world_size < need:
        # both problems at once: a user who fixes the process count should not then meet the second
        algo = (f"; and parallel.cp={p.cp} needs a context-parallel algorithm: set parallel.cp_algo to "
                "ring, allgather, ulysses, usp or cad" if p.cp > 1 and p.cp_algo == "local" else "")
        raise ValueError(
            f"parallel.dp={p.dp} tp={p.tp} pp={p.pp} cp={p.cp} needs {need} processes but this run has "
            f"{world_size}; start {need}: python -m launch.local --nproc {need} ... (or torchrun "
            f"--nproc_per_node {need}), or lower the degrees{algo}")
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
    check_eval_config(cfg)
    return plan


def check_attention_kernels(cfg, device) -> None:
    """Head sizes the attention kernels cannot run, when this run uses them: on a GPU, or on
    the CPU in fp32 with TRITON_INTERPRET=1 (Triton's interpreter). The CPU's torch
    references take any size, so a CPU run is not refused for one."""
    from distca_kernels.triton_loader import interpreter_requested
    m, d = cfg.model, head_dim(cfg.model)
    if device.type == "cuda":
        where = "on the GPU"
    elif device.type == "cpu" and interpreter_requested() and cfg.train.dtype == "fp32":
        where = "under TRITON_INTERPRET=1 (CPU fp32 runs the Triton kernels)"
    else:
        return
    from distca_kernels.flash_attn.block_config import SUPPORTED_HEAD_DIMS
    size = f"model.head_dim={m.head_dim}" if m.head_dim > 0 else f"the head size {d} (model.hidden / model.heads)"
    if "S" in m.layers and d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{size} cannot run in the softmax attention kernel {where}: it takes head sizes "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}; set model.head_dim (or model.hidden / "
                         "model.heads) to one of them")
    from distca_kernels.lightning_attn.chunked import MAX_HEAD_DIM
    if "L" in m.layers and d > MAX_HEAD_DIM:
        raise ValueError(f"{size} cannot run in the linear attention kernel {where}: it takes head sizes up to "
                         f"{MAX_HEAD_DIM}; set model.head_dim (or model.hidden / model.heads) to at most that")


def _check_fields(cfg) -> None:
    """Single-field rules Hydra's types cannot express."""
    t, c, d = cfg.train, cfg.checkpoint, cfg.data
    for name, val in (("lr", t.lr), ("weight_decay", t.weight_decay), ("grad_clip", t.grad_clip),
                      ("warmup_steps", t.warmup_steps)):
        if val < 0:
            raise ValueError(f"train.{name}={val} must be >= 0")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ValueError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1] (the final lr / train.lr)")
    for name, val in (("beta1", t.beta1), ("beta2", t.beta2)):
        if not 0 <= val < 1:
            raise ValueError(f"train.{name}={val} must be in [0, 1) (AdamW's moment decay)")
    if t.log_every < 1:
        raise ValueError(f"train.log_every={t.log_every} must be >= 1 (print every N steps)")
    if c.keep < 0 or c.every_minutes < 0:
        raise ValueError(f"checkpoint.keep={c.keep} and checkpoint.every_minutes={c.every_minutes} "
                         "must be >= 0 (0: keep all / no time-based saves)")
    if d.paths and d.source in ("stdlib", "synthetic"):
        raise ValueError(f"data.paths is set but data.source={d.source} does not read files; add "
                         "data=jsonl (or data=parquet, data=tokens) to train on them")


def check_known_keys(raw, schema=None, prefix: str = "") -> None:
    """Every key of the composed config is a schema field: `+parallel.cpp=2` (which Hydra lets
    through, `+` adds keys) fails naming the key and the closest field."""
    from distca.config.schema import RootConfig
    schema = schema or RootConfig
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw.keys():
        if key not in fields:
            raise ValueError(unknown_key_message(f"{prefix}{key}"))
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and hasattr(raw[key], "keys"):
            check_known_keys(raw[key], sub, f"{prefix}{key}.")
