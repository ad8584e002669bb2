"""The config schema. YAML groups under configs/ extend these dataclasses; an override of a
field that does not exist is a Hydra error naming the key, so typos never pass silently, and
a choice field (an enum) rejects an unknown value at composition, listing the choices.
The `parallel` section is defined in `parallel/config.py` (what `parallel/` consumes lives
there, so it never imports the trainer); `data` in `distca/data/config.py`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from distca.data.config import DataConfig
from parallel.config import Choice, ParallelConfig


class Dtype(Choice):
    fp32 = "fp32"
    bf16 = "bf16"   # autocast; master weights stay fp32


class Device(Choice):
    auto = "auto"   # cuda when a GPU is visible
    cpu = "cpu"
    cuda = "cuda"


class LinearDecay(Choice):
    head = "head"    # a constant log-decay per head (TransNormerLLM slopes)
    token = "token"  # data-dependent, per token
    none = "none"


class Recompute(Choice):
    none = "none"            # keep every activation: fastest where memory allows
    selective = "selective"  # keep the attention half (projections, q/k/v, output, LSE); recompute the MLP half
    full = "full"            # keep each block's input only; recompute the whole block in backward


class WandbMode(Choice):
    online = "online"
    offline = "offline"


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
    linear_decay: LinearDecay = LinearDecay.head
    tie_embeddings: bool = False
    init_std: float = 0.02
    loss_chunk_tokens: int = 4096
    recompute: Recompute = Recompute.none
    # deprecated: true = recompute full, false = none; kept working for one release
    checkpoint_activations: Optional[bool] = None


@dataclass
class TrainConfig:
    steps: int = 200
    global_batch_size: int = 8  # samples per optimizer step
    micro_batch_size: int = 1   # samples per forward/backward on one rank
    dtype: Dtype = Dtype.fp32
    seed: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    device: Device = Device.auto
    # bitwise-reproducible GPU kernels (distca/determinism.py): the attention backward takes
    # its two-kernel path, torch its deterministic ops; off by default because it is slower
    deterministic: bool = False
    log_every: int = 1
    collective_timeout_s: int = 1800  # a collective waiting longer for a peer fails the run


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "distca"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: WandbMode = WandbMode.online  # W&B's own modes; the WANDB_MODE variable overrides
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
