"""Everything a run does before its first step: check the config, build the data and the
parallel plan, join the process group, agree on the run dir and where training starts, then
build the model, the engine and the metrics logger. Every check that can reject the config
runs before the model is built, on every rank alike, so a bad config fails fast and never
leaves a rank waiting in a collective."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from distca.checkpoint import hf_source
from distca.checkpoint import store as ckpt
from distca.config.validate import ConfigError, build_plan, check_attention_kernels, micro_batches_per_step
from distca.data import build_data
from distca.evaluation.tasks import check_tokenizer
from distca.lifecycle import run_lock
from distca.lifecycle.process_group import init_distributed, max_over_ranks
from distca.lifecycle.run_dir import Start, agree, decide_start
from distca.lifecycle.stopping import LONG_STEP_S
from distca.model.transformer import deprecation_messages, head_dim
from distca.observe.console import (clock, cpu_run_warning, cpu_step_seconds, cpu_threads_summary, git_commit,
                                    human, say, start_banner, versions)
from distca.observe.flops import device_peak_tflops, layer_costs
from distca.observe.metrics import MetricsLogger
from distca.optim.adamw import adamw_factory
from distca.parallelize.apply import build_parallel_model
from parallel.data_parallel import build_engine


def vocab_size(cfg, tokenizer, tp: int) -> int:
    """model.vocab_size, or the tokenizer's padded to a multiple of 64 and of tp (the same
    vocabulary, so the same model, for every power-of-two tp up to 64)."""
    v = cfg.model.vocab_size
    if getattr(cfg.model, "init_from", ""):  # the folder's embedding has its rows: nothing to pad or choose
        if v < tokenizer.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model from "
                             f"model.init_from={cfg.model.init_from} has vocab_size {v}; use the model's own "
                             "tokenizer (data.tokenizer=auto with its folder)")
        if v % tp:
            raise ValueError(f"vocab_size {v} of model.init_from={cfg.model.init_from} is not divisible by "
                             f"parallel.tp={tp}; choose a tp that divides it")
        return v
    if v == -1:
        multiple = math.lcm(64, tp)  # matmul-friendly rows, and an equal share per TP rank
        return -(-tokenizer.vocab_size // multiple) * multiple
    if v < tokenizer.vocab_size:
        source = getattr(tokenizer, "path", "") or f"data.tokenizer={getattr(tokenizer, 'name', '?')}"
        raise ValueError(f"model.vocab_size={v} is smaller than the tokenizer's {tokenizer.vocab_size} ids "
                         f"({source}): its ids would index past the embedding. Fix: model.vocab_size=-1 "
                         "(the tokenizer's, padded), a value >= "
                         f"{tokenizer.vocab_size}, or the model's own tokenizer (data.tokenizer_path)")
    if v % tp:
        raise ValueError(f"model.vocab_size={v} must be divisible by parallel.tp={tp} (each TP rank "
                         f"holds an equal share of the vocabulary); set it to a multiple of {tp}, "
                         "or -1 to pad the tokenizer's")
    return v


@dataclass
class Run:
    """What the config decided, agreed by every rank, before anything is built."""
    cfg: object
    device: torch.device
    plan: object          # parallel/plan.py ParallelPlan, its groups not yet made
    vocab: int
    data: object          # the training data: tokenizer and sources (distca/data/dataset.py)
    run_dir: str
    ckpt_dir: str
    start: Start
    rank: int
    init: object = None   # the Hugging Face folder the weights come from (model.init_from), or None
    tokenizer: object = None  # the data's tokenizer (evaluation tasks write prompts with it)
    long_steps: str | None = None  # why a stop aborts the step at once (None: it finishes the step)

    @property
    def loud(self) -> bool:
        """This rank speaks for the run (rank 0)."""
        return self.rank == 0

    @property
    def identity(self) -> dict:
        """What a checkpoint must match to be loaded here (stored in its trainer state)."""
        return checkpoint_identity(self.cfg, self.plan, self.vocab)


def checkpoint_identity(cfg, plan, vocab) -> dict:
    return ckpt.identity(cfg.model, vocab, head_dim(cfg.model), cfg.parallel.zero_stage,
                         plan.dims.tp, plan.dims.pp)


def prepare(cfg) -> Run:
    """Data, plan, process group, run dir, start. Raises ConfigError for a config that cannot
    run: every rank finds the same problem, before any collective but the group's start."""
    try:
        cfg, init = hf_source.resolve(cfg)  # model.init_from: the folder's architecture
        data = build_data(cfg.data, cfg.train.seed, model_dir=cfg.model.init_from or None)
        vocab = vocab_size(cfg, data.tokenizer, cfg.parallel.tp)
        check_tokenizer(cfg, data.tokenizer)  # the evaluation tasks that write text can
        if init is not None:
            init.check(cfg.model, vocab)  # every tensor there, with its shape: before anything is built
        device = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
        world = dist.get_world_size() if dist.is_initialized() else 1
        plan = build_plan(cfg, world, vocab)
        check_attention_kernels(cfg, device)
        long_steps = _check_cpu_step(cfg, device, vocab, world)
        run_dir, ckpt_dir, start = _where_to_start(cfg, plan, vocab)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Run(cfg, device, plan, vocab, data, run_dir, ckpt_dir, start, rank, init, data.tokenizer, long_steps)


def _step_flops(cfg, vocab: int) -> float:
    """Forward + backward FLOPs of one optimizer step (the whole global batch)."""
    costs, embed, head = layer_costs(cfg.model, head_dim(cfg.model), cfg.data.seq_len, vocab)
    return 3 * cfg.train.global_batch_size * cfg.data.seq_len * (sum(costs) + embed + head)


def _check_cpu_step(cfg, device, vocab: int, world: int) -> str | None:
    """A GPU-sized model on the CPU: refused when a step would take over LONG_STEP_S, unless
    train.device=cpu asks for the CPU; then a stop aborts the step (the returned reason)."""
    seconds = cpu_step_seconds(device, _step_flops(cfg, vocab), world)
    if seconds is None or seconds <= LONG_STEP_S:
        return None
    estimate = f"a step takes about {clock(seconds)} on this CPU ({cpu_threads_summary(world)}) at best"
    if cfg.train.device != "cpu":
        raise ValueError(f"this model needs about {human(_step_flops(cfg, vocab))}FLOP per step: {estimate}, "
                         "a GPU-sized run; use a GPU, a CPU-sized model (experiment=tiny), or set "
                         "train.device=cpu to run it here anyway (a stop then aborts the step without saving)")
    return estimate


def _where_to_start(cfg, plan, vocab) -> tuple[str, str, Start]:
    """The agreed run dir, a writable checkpoint dir (held by this run), and where training
    starts."""
    run_dir = agree(cfg.run_dir)
    ckpt_dir = cfg.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    made = [d for d in (ckpt_dir, run_dir) if not os.path.isdir(d)]
    try:
        for field, folder in (("run_dir", run_dir), ("checkpoint.dir", ckpt_dir)):
            problem = ckpt.check_writable(folder)
            if max_over_ranks(int(problem is not None))[0]:  # also: every rank has probed
                raise ValueError(f"{field}={folder} is not a writable folder ({problem or 'on another rank'}); "
                                 f"set {field} to a folder every rank can write")
    finally:
        for folder in made:  # the probes leave no empty folders (the first save makes them)
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    busy = _hold_checkpoint_dir(cfg.checkpoint.dir, run_dir) if rank0 else None
    if max_over_ranks(int(busy is not None))[0]:
        raise ValueError(busy or "checkpoint.dir is in use by another run (rank 0 names it)")
    start = decide_start(cfg.checkpoint, ckpt_dir, cfg.train.steps)
    if start.load_dir is not None and not start.finished:  # before building anything
        ckpt.check_compatible(start.load_dir, start.step, checkpoint_identity(cfg, plan, vocab))
    return run_dir, ckpt_dir, start


def _hold_checkpoint_dir(ckpt_dir: str, run_dir: str) -> str | None:
    """A checkpoint.dir outside the run dir is locked like the run dir (one run prunes and
    cleans it); returns why it cannot be (another run holds it), else None."""
    if not ckpt_dir:
        return None
    inside = os.path.commonpath([os.path.abspath(ckpt_dir), os.path.abspath(run_dir)]) == os.path.abspath(run_dir)
    if inside:
        return None
    try:
        run_lock.acquire(ckpt_dir, what="checkpoint.dir", warn=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as e:  # held by another run, or cannot be made: rank 0 alone knows
        return str(e)
    return None


@dataclass
class Trainer:
    """What the loop trains with, built for this rank."""
    model: torch.nn.Module
    stage: object         # distca/parallelize/pipeline_stage.py PipelineStage, or None
    engine: object        # parallel/data_parallel.py: DDP, DeepSpeed or a pool rank's
    state: object         # the plan's process groups
    amp: object           # the autocast context of train.dtype
    logger: MetricsLogger
    loader: object        # this rank's data, step by step (distca/data/loader.py)
    num_params: int       # the whole model's
    peak_tflops: float    # the device's (0: unknown), for MFU
    device: torch.device


def build_trainer(run: Run) -> Trainer:
    """The model, the engine (loading the checkpoint training starts from), the saved config and
    the metrics logger; rank 0 prints the banner."""
    cfg, plan, t, loud = run.cfg, run.plan, run.cfg.train, run.loud
    for msg in deprecation_messages(cfg.model):
        say(f"warning: {msg}", loud)
    if loud:  # before the model is built: a 1B model on a CPU takes minutes to get to step 1
        if (w := cpu_run_warning(run.device, _step_flops(cfg, run.vocab), plan.dims.world_size)):
            say(f"warning: {w}")
    state = plan.setup(run.device)
    n_micro = micro_batches_per_step(t, plan.dims.dp)
    # weights from model.init_from only when the run starts fresh: a resumed run loads its own
    built = build_parallel_model(cfg, plan, run.vocab, run.device, n_micro,
                                 init=run.init if run.start.load_dir is None else None)
    stage = built.stage
    announce_deepspeed_build(cfg.parallel.zero_stage if plan.dims.tp == plan.dims.pp == 1 else 0, loud)
    engine = build_engine(built.model, state, adamw_factory(t, fused=run.device.type == "cuda"), t.grad_clip,
                          cfg.parallel.zero_stage, n_micro, tied=stage.tied_copies() if stage else (),
                          tied_names=("lm_head.weight", "embed.weight") if cfg.model.tie_embeddings else None)
    amp = (torch.autocast(run.device.type, dtype=torch.bfloat16) if t.dtype == "bf16"
           else contextlib.nullcontext())
    loader = run.data.loader(plan, t.global_batch_size, t.micro_batch_size, run.device,
                             steps=t.steps - run.start.step)
    if run.start.load_dir is not None:
        trainer_state = ckpt.load(run.start.load_dir, run.start.step, engine)
        loader.load_state_dict(trainer_state.get("data", trainer_state.get("packer")))  # "packer": older checkpoints
    loader.start()  # the first step's data, while the banner prints and the loop starts
    if loud:
        save_config(run)
        if run.init is not None:
            run.init.copy_small_files(run.run_dir)
    logger = MetricsLogger(run.run_dir, dataclasses.asdict(cfg), cfg.logger, t.steps, enabled=loud,
                           log_every=t.log_every, start_step=run.start.step)
    peak = device_peak_tflops(run.device)
    if loud:
        print(start_banner(cfg, plan, run.device, run.run_dir, run.ckpt_dir, run.start, built.num_params,
                           run.vocab, peak, logger.wandb_where, run.long_steps), file=sys.stderr, flush=True)
    return Trainer(built.model, stage, engine, state, amp, logger, loader, built.num_params, peak, run.device)


def save_config(run: Run) -> None:
    """config.yaml with every placeholder resolved, plus what ran it (not part of the schema)."""
    cfg, plan = run.cfg, run.plan
    d = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    d["model"].update(vocab_size=run.vocab, head_dim=head_dim(cfg.model))
    d["parallel"]["dp"] = plan.dims.dp
    d["run_dir"], d["checkpoint"]["dir"] = run.run_dir, run.ckpt_dir
    argv = [a for a in sys.argv if not a.startswith(("hydra", "run_dir="))]  # what the user typed
    d["run"] = {"world_size": plan.dims.world_size, "git_commit": git_commit(), "versions": versions(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": argv}
    OmegaConf.save(OmegaConf.create(d), os.path.join(run.run_dir, "config.yaml"))


def announce_deepspeed_build(zero_stage: int, loud: bool) -> None:
    if zero_stage == 0:
        return
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    if not (os.path.isdir(cache) and os.listdir(cache)):
        say(f"parallel.zero_stage={zero_stage}: DeepSpeed may compile its C++ ops now (once, a few "
            f"minutes; cached in {cache})", loud)
