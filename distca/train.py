"""The training loop. `train(cfg)` is plain Python (tests call it inside their own process
group); `main()` is the thin Hydra/torchrun entry point (`distca-train`, `python -m distca.train`)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import signal
import sys
import time
import uuid

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from distca import checkpoint as ckpt
from distca.batching import global_label_count, rank_micro_batches
from distca.config import to_typed
from distca.data import build_dataset
from distca.determinism import deterministic_kernels
from distca.distributed import init_distributed
from distca.flops import attention_flops, dense_flops, device_peak_tflops
from distca.metrics import MetricsLogger
from distca.model import build_model
from distca.model.transformer import deprecation_messages, head_dim
from distca.optim import adamw_factory
from distca.parallelize import apply_tensor_parallel
from distca.pipeline_stage import PipelineStage
from distca.schedule import lr_at
from distca.validate import build_plan, micro_batches_per_step
from parallel.data_parallel import build_engine


class _StopFlag:
    """Set by SIGTERM; checked between steps so the checkpoint is consistent across ranks."""
    def __init__(self):
        self.set = False

    def install(self):
        with contextlib.suppress(ValueError):  # not the main thread (some test runners)
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))


def _any_rank(flag: bool, device) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _max_mem_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _vocab_size(cfg, tokenizer, tp: int) -> int:
    """model.vocab_size, or the tokenizer's padded to a multiple of 64 and of tp (the same
    vocabulary, so the same model, for every power-of-two tp up to 64)."""
    v = cfg.model.vocab_size
    if v == -1:
        multiple = math.lcm(64, tp)  # matmul-friendly rows, and an equal share per TP rank
        return -(-tokenizer.vocab_size // multiple) * multiple
    if v < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={v} is smaller than the tokenizer's {tokenizer.vocab_size}; "
                         "set model.vocab_size=-1 or a larger value")
    if v % tp:
        raise ValueError(f"model.vocab_size={v} must be divisible by parallel.tp={tp} (each TP rank "
                         f"holds an equal share of the vocabulary); set it to a multiple of {tp}, "
                         "or -1 to pad the tokenizer's")
    return v


class ConfigError(ValueError):
    """A config value that cannot run, found before training started (every rank alike)."""


def train(cfg) -> list[dict]:
    """Run training as configured (a `RootConfig`, or the DictConfig Hydra composed); returns
    the per-step metrics (also in metrics.jsonl)."""
    typed = to_typed(cfg)
    with deterministic_kernels(typed.train.deterministic):
        return _train(typed, cfg)


def _setup(cfg):
    """Everything before the first step that can reject the config: device, plan, data."""
    device = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    world = dist.get_world_size() if dist.is_initialized() else 1
    tokenizer, packer = build_dataset(cfg.data, cfg.train.seed)
    vocab = _vocab_size(cfg, tokenizer, cfg.parallel.tp)
    return device, build_plan(cfg, world, vocab), vocab, packer


def _train(cfg, raw_cfg) -> list[dict]:
    try:
        device, plan, vocab, packer = _setup(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        for msg in deprecation_messages(cfg.model):
            print(f"distca: warning: {msg}", file=sys.stderr, flush=True)
    state = plan.setup(device)
    run_dir = cfg.run_dir
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        OmegaConf.save(raw_cfg if isinstance(raw_cfg, DictConfig) else OmegaConf.structured(cfg),
                       os.path.join(run_dir, "config.yaml"), resolve=True)

    model = build_model(cfg.model, vocab, plan.core_attention, plan.linear_attention, cfg.train.seed)
    n_params = model.num_params()  # the whole model's, before each rank keeps its part
    t = cfg.train
    n_micro = micro_batches_per_step(t, plan.dims.dp)
    stage = PipelineStage(model, plan, n_micro) if plan.dims.pp > 1 else None
    model = apply_tensor_parallel(model, state.tp_group).to(device)
    engine = build_engine(model, state, adamw_factory(t, fused=device.type == "cuda"), t.grad_clip,
                          cfg.parallel.zero_stage, n_micro, tied=stage.tied_copies() if stage else (),
                          tied_names=("lm_head.weight", "embed.weight") if cfg.model.tie_embeddings else None)
    group_size = engine.group_size
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if t.dtype == "bf16"
           else contextlib.nullcontext())

    ckpt_dir = cfg.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    start_step = 0
    if cfg.checkpoint.resume and (last := ckpt.latest_step(ckpt_dir)) is not None:
        trainer_state = ckpt.load(ckpt_dir, last, engine)
        packer.load_state_dict(trainer_state["packer"])
        start_step = trainer_state["step"]

    logger = MetricsLogger(run_dir, dataclasses.asdict(cfg), cfg.logger, t.steps, enabled=rank == 0)
    stop = _StopFlag()
    stop.install()
    peak = device_peak_tflops(device)
    history: list[dict] = []
    model.train()
    try:
        for step in range(start_step + 1, t.steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            samples = [packer.next_sample() for _ in range(t.global_batch_size)]
            n_labels = global_label_count(samples)
            micro = rank_micro_batches(samples, plan, t.micro_batch_size, device)
            pipeline_metrics = {}
            if stage is not None:
                local_sum, pipeline_metrics = stage.forward_backward(micro, group_size / n_labels, amp)
            else:
                local_sum = torch.zeros((), device=device)
                for i, mb in enumerate(micro):
                    with engine.accumulate(last=i == len(micro) - 1):
                        with amp:
                            ce = engine(mb.input_ids, mb.shard, mb.labels)
                        engine.backward(ce / n_labels * group_size)
                    local_sum += ce.detach()
            lr = lr_at(step, t)
            grad_norm = engine.step(lr)
            if dist.is_initialized() and state.dpcp_group is not None:
                dist.all_reduce(local_sum, group=state.dpcp_group)
            if state.pp_group is not None:  # the loss lives on the last stage
                dist.all_reduce(local_sum, group=state.pp_group)
            loss = local_sum.item() / n_labels
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            tokens = sum(len(s.tokens) for s in samples)
            flops = dense_flops(n_params, tokens) + sum(
                attention_flops(s.doc_lens, cfg.model, head_dim(cfg.model)) for s in samples)
            tflops = flops / dt / plan.dims.world_size / 1e12
            m = {"step": step, "loss": loss, "tokens": tokens, "tokens_per_s": tokens / dt,
                 "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else 0.0,
                 "max_mem_gib": _max_mem_gib(device), "lr": lr, "grad_norm": grad_norm,
                 "step_time_s": dt}
            m.update(plan.step_metrics())
            m.update(pipeline_metrics)
            history.append(m)
            logger.log(m)
            saving = cfg.checkpoint.every and step % cfg.checkpoint.every == 0
            stopping = _any_rank(stop.set, device)
            if saving or stopping or (step == t.steps and cfg.checkpoint.save_final):
                ckpt.save(ckpt_dir, step, engine, {"step": step, "packer": packer.state_dict()})
            if stopping:
                if rank == 0:
                    print(f"SIGTERM: saved step {step} to {ckpt_dir}; exiting", file=sys.stderr)
                break
    finally:
        logger.close()
    return history


def _pinned_run_dir(argv: list[str]) -> str:
    """One run dir that every torchrun rank agrees on without talking to each other."""
    for a in argv:
        if a.startswith("run_dir="):
            return a.split("=", 1)[1]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return os.path.join("runs", f"run-{run_id[:12]}")
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])


def main() -> None:
    import hydra

    from distca.config import register_schema

    register_schema()
    argv = [a for a in sys.argv[1:]]
    run_dir = _pinned_run_dir(argv)
    extra = [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    if int(os.environ.get("RANK", "0")) != 0:  # only rank 0 writes Hydra's output
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    argv = [a for a in argv if not a.startswith("run_dir=")] + extra

    @hydra.main(config_path="pkg://configs", config_name="train", version_base="1.3")
    def _app(cfg):
        try:
            train(cfg)
        except ConfigError as e:
            # every rank found the same problem before any collective: say it once, no
            # traceback, and exit non-zero on every rank
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"distca: config error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    sys.argv = [sys.argv[0]] + argv
    _app()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
