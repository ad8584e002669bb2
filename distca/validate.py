"""Config checks that must fail early, on every rank alike, before any collective can hang."""
from __future__ import annotations

from distca.model.transformer import validate_model_config
from parallel.dims import ParallelDims


def resolve_dims(cfg, world_size: int) -> ParallelDims:
    p = cfg.parallel
    validate_model_config(cfg.model, tp=p.tp)
    dims = ParallelDims.resolve(world_size, p.dp, p.tp, p.pp, p.cp, p.cp_algo, p.ulysses)
    if dims.tp > 1:
        raise ValueError(f"parallel.tp={dims.tp}: tensor parallelism is not implemented yet; "
                         "use parallel.tp=1 (and scale with parallel.dp / parallel.cp)")
    if dims.pp > 1:
        raise ValueError(f"parallel.pp={dims.pp}: pipeline parallelism is not implemented yet; "
                         "use parallel.pp=1")
    t = cfg.train
    if t.dtype not in ("fp32", "bf16"):
        raise ValueError(f"train.dtype={t.dtype!r} must be fp32 or bf16")
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
    if cfg.parallel.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage={cfg.parallel.zero_stage} must be 0 (DDP) or 1, 2, 3 (ZeRO)")
    if cfg.checkpoint.every < 0:
        raise ValueError(f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0 = only at the end)")
    return dims
