"""The config schema. YAML groups under configs/ extend these dataclasses; an override of a
field that does not exist is a Hydra error naming the key, so typos never pass silently."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from distca.data.config import DataConfig


@dataclass
class ModelConfig:
    name: str = "tiny"
    # one letter per layer: S = softmax attention, L = linear attention (e.g. LLLS = 3:1 hybrid)
    layers: str = "SSSS"
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = -1          # -1: hidden // heads
    ffn_hidden: int = 352
    vocab_size: int = -1        # -1: the tokenizer's, padded to a multiple of 64
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    linear_decay: str = "head"  # head (constant per head) | token (data-dependent) | none
    tie_embeddings: bool = False
    init_std: float = 0.02
    loss_chunk_tokens: int = 4096
    checkpoint_activations: bool = False


@dataclass
class CADConfig:
    tolerance: float = 0.1      # servers balanced to within (1 + tolerance) x the mean cost
    servers: int = 0            # 0: every rank serves in place; K > 0: K dedicated servers
    block: int = 128            # cuts on multiples of this (the kernel's tile); halved per step
                                # while pieces are too short to balance at it (metric cad_block)
    ping_pong: bool = True


@dataclass
class ParallelConfig:
    dp: int = -1                # -1: the rest of the world
    tp: int = 1
    pp: int = 1
    cp: int = 1
    cp_algo: str = "local"      # local | ring | allgather | ulysses | usp | cad
    ulysses: int = 1            # ulysses degree inside usp (cp = ulysses x ring)
    zero_stage: int = 0         # 0: torch DDP; 1-3: DeepSpeed ZeRO
    cad: CADConfig = field(default_factory=CADConfig)


@dataclass
class TrainConfig:
    steps: int = 200
    global_batch_size: int = 8  # samples per optimizer step
    micro_batch_size: int = 1   # samples per forward/backward on one rank
    dtype: str = "fp32"         # fp32 | bf16 (autocast; master weights stay fp32)
    seed: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    device: str = "auto"        # auto (cuda when present) | cpu | cuda
    # bitwise-reproducible GPU kernels (distca/determinism.py): the attention backward takes
    # its two-kernel path, torch its deterministic ops; off by default because it is slower
    deterministic: bool = False
    log_every: int = 1


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "distca"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: str = "online"        # online | offline (W&B's own modes); WANDB_MODE overrides
    progress: bool = True       # console progress bar (rank 0)


@dataclass
class CheckpointConfig:
    dir: str = ""               # "" : <run_dir>/checkpoints
    every: int = 0              # save every N optimizer steps (0: only on SIGTERM / at the end)
    save_final: bool = True
    resume: bool = True         # continue from the newest checkpoint in dir, if any


@dataclass
class RootConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run_dir: str = "runs/default"
