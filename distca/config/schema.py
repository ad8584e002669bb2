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
    fp32 = "fp32"   # fp32 everywhere
    bf16 = "bf16"   # autocast; master weights stay fp32


class Device(Choice):
    auto = "auto"   # cuda when a GPU is visible
    cpu = "cpu"     # the CPU (gloo between processes), also for a model whose CPU step would exceed 10 min (auto refuses it)
    cuda = "cuda"   # one GPU per process (NCCL); fails when none is visible


class LinearDecay(Choice):
    head = "head"    # a constant log-decay per head (TransNormerLLM slopes)
    token = "token"  # data-dependent, per token
    none = "none"    # no decay (plain linear attention)


class Recompute(Choice):
    none = "none"            # keep every activation: fastest where memory allows
    selective = "selective"  # keep the attention half (projections, q/k/v, output, LSE); recompute the MLP half
    full = "full"            # keep each block's input only; recompute the whole block in backward


class RopeScaling(Choice):
    none = "none"      # inv_freq = theta^(-2i/d) (raise model.rope_theta for "ABF")
    linear = "linear"  # every frequency divided by model.rope_factor (position interpolation)
    yarn = "yarn"      # YaRN: ramp between interpolated and original frequencies, attention factor
    llama3 = "llama3"  # Llama 3.1: long wavelengths divided by the factor, short kept, blended between


class WandbMode(Choice):
    online = "online"  # stream to the W&B server while training
    offline = "offline"  # write under run_dir/wandb; upload later with `wandb sync`


@dataclass
class ModelConfig:
    name: str = "tiny"          # the preset's name (run dir names)
    # one letter per layer: S = softmax attention, L = linear attention (e.g. LLLS = 3:1 hybrid)
    layers: str = "SSSS"
    hidden: int = 128           # model width (the residual stream)
    heads: int = 4              # query heads
    kv_heads: int = 2           # key/value heads (grouped-query attention); must divide heads
    head_dim: int = -1          # per-head width (-1: hidden // heads)
    ffn_hidden: int = 352       # SwiGLU inner width
    vocab_size: int = -1        # embedding rows (-1: the tokenizer's, padded to a multiple of 64)
    rope_theta: float = 500000.0  # RoPE base frequency
    rope_scaling: RopeScaling = RopeScaling.none  # RoPE scaling for context extension (distca/model/rope.py)
    rope_factor: float = 1.0    # linear / yarn / llama3: how many times the original context
    rope_original_max_position: int = 8192  # yarn / llama3: the context the model was pretrained at
    rope_low_freq_factor: float = 1.0   # llama3: wavelengths above original / this are divided by the factor
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original / this are kept
    rope_beta_fast: float = 32.0  # yarn: rotations over the original context above which a frequency is kept
    rope_beta_slow: float = 1.0   # yarn: rotations below which a frequency is fully interpolated
    rope_attention_factor: float = -1.0  # yarn: cos/sin multiplier (-1: 0.1 ln(factor) + 1)
    rope_truncate: bool = True  # yarn: round the correction range to whole dimensions (transformers' default)
    norm_eps: float = 1e-5      # RMSNorm epsilon
    linear_decay: LinearDecay = LinearDecay.head  # linear-attention layers' decay
    tie_embeddings: bool = False  # one weight for the embedding and the LM head
    qkv_bias: bool = False      # bias on the q/k/v projection (Qwen2, or attention_bias in config.json)
    out_bias: bool = False      # bias on the attention output projection (attention_bias in Llama/Qwen3 config.json)
    qk_norm: bool = False       # RMSNorm over each head of q and k before RoPE (Qwen3)
    # a local Hugging Face model folder (config.json + *.safetensors) to start from: the
    # architecture comes from its config.json, the weights stream into each rank's part
    # (distca/checkpoint/hf_import.py); "" = random init from train.seed
    init_from: str = ""
    init_std: float = 0.02      # std of the normal weight init
    loss_chunk_tokens: int = 4096  # tokens per chunk of the fused LM head + loss (bounds logits memory)
    recompute: Recompute = Recompute.none  # activation recompute in backward (memory vs time)
    # deprecated: true = recompute full, false = none; kept working for one release
    checkpoint_activations: Optional[bool] = None


@dataclass
class TrainConfig:
    steps: int = 200            # optimizer steps to run
    global_batch_size: int = 8  # samples per optimizer step
    micro_batch_size: int = 1   # samples per forward/backward on one rank
    dtype: Dtype = Dtype.fp32   # compute precision
    seed: int = 0               # weights and data order (the same model at every parallel layout)
    lr: float = 3e-3            # peak learning rate (each model preset sets one suited to its size)
    min_lr_ratio: float = 0.1   # the cosine decay ends at min_lr_ratio x lr
    warmup_steps: int = 10      # linear warm-up steps before the cosine decay
    weight_decay: float = 0.1   # AdamW weight decay
    beta1: float = 0.9          # AdamW first-moment decay
    beta2: float = 0.95         # AdamW second-moment decay
    grad_clip: float = 1.0      # clip the global gradient norm to this (0: no clipping)
    device: Device = Device.auto  # where to train
    # bitwise-reproducible GPU kernels (distca/lifecycle/determinism.py): the attention backward takes
    # its two-kernel path, torch its deterministic ops; off by default because it is slower
    deterministic: bool = False
    log_every: int = 1          # console / train.log / W&B line every N steps (metrics.jsonl: every step)
    collective_timeout_s: int = 300  # a collective waiting longer for a lost or stuck peer fails the run
    hang_timeout_s: float = 1800.0  # no step progress this long: every rank dumps its stacks to <run_dir>/hang and exits 124 (0: off)
    max_bad_steps: int = 5      # stop after this many steps in a row with a non-finite loss or gradient norm (skipped; 0: never stop)


@dataclass
class LoggerConfig:
    wandb: bool = False         # also log to Weights & Biases (rank 0)
    project: str = "distca"     # W&B project
    entity: Optional[str] = None  # W&B team or user (null: your default)
    name: Optional[str] = None  # W&B run name (null: W&B picks one)
    mode: WandbMode = WandbMode.online  # W&B's own modes; the WANDB_MODE variable overrides
    progress: bool = True       # console progress bar (rank 0)


class Resume(Choice):
    auto = "auto"    # continue from this run's newest checkpoint (checkpoint.dir), if any
    never = "never"  # always start at step 1; refuses a checkpoint.dir that already holds checkpoints


@dataclass
class CheckpointConfig:
    dir: str = ""               # "" : <run_dir>/checkpoints
    every: int = 0              # save every N optimizer steps (0: by time only, see every_minutes)
    every_minutes: float = 30.0  # also save when this many minutes passed since the last save (0: off)
    keep: int = 3               # keep the newest K checkpoints, delete older ones (0: keep all)
    save_final: bool = True     # save after the last step
    resume: Resume = Resume.auto  # auto: continue this run's own checkpoints; never: start fresh
    load: str = ""              # start from another run: its run dir, checkpoints dir or step_N folder


class EvalTask(Choice):
    loss = "loss"                    # held-out loss and perplexity: eval_loss, eval_ppl
    position_loss = "position_loss"  # held-out loss by position inside the document: eval_position_loss
    passkey = "passkey"              # a key hidden in filler, retrieved greedily: eval_passkey_acc


@dataclass
class PasskeyConfig:
    lengths: list[int] = field(default_factory=list)  # prompt lengths in tokens (empty: data.seq_len)
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # where the key sits (0 start .. 1 end)
    samples: int = 2            # samples per length and depth (each a different key)


@dataclass
class EvalConfig:
    every: int = 0              # evaluate every N optimizer steps and after the last (0: off)
    batches: int = 4            # held-out global batches (train.global_batch_size samples) for loss and position_loss
    tasks: list[EvalTask] = field(default_factory=lambda: [EvalTask.loss])  # what to evaluate: loss, position_loss, passkey
    position_buckets: int = 8   # position_loss: equal buckets of position over data.seq_len
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)  # the passkey task's grid


@dataclass
class RootConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the network: widths, heads, layer pattern
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # dp x tp x pp x cp, CP algorithm, CAD
    data: DataConfig = field(default_factory=DataConfig)  # documents, tokenizer, packing
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, batch sizes, precision
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # metrics.jsonl, console, W&B
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # saving and resuming
    eval: EvalConfig = field(default_factory=EvalConfig)  # tasks: held-out evaluation (loss, by position), passkey
    run_dir: str = "runs/default"  # set by distca-train: runs/<experiment or model>-<time>; reuse one to resume
