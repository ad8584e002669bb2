"""The training loop. `train(cfg)` is plain Python (tests call it inside their own process
group); `main()` is the thin Hydra/torchrun entry point (`distca-train`, `python -m distca.train`)."""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import time
import uuid

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from distca import checkpoint as ckpt
from distca.batching import global_label_count, rank_micro_batches
from distca.data import build_dataset
from distca.determinism import deterministic_kernels
from distca.distributed import init_distributed
from distca.flops import attention_flops, dense_flops, device_peak_tflops
from distca.metrics import MetricsLogger
from distca.model import build_model
from distca.schedule import lr_at
from distca.validate import resolve_dims
from parallel.context import build_core_attention, build_linear_attention
from parallel.data_parallel import build_engine
from parallel.dims import ParallelState


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


def _vocab_size(cfg, tokenizer) -> int:
    v = cfg.model.vocab_size
    if v == -1:
        return -(-tokenizer.vocab_size // 64) * 64  # pad for matmul-friendly shapes
    if v < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={v} is smaller than the tokenizer's {tokenizer.vocab_size}; "
                         "set model.vocab_size=-1 or a larger value")
    return v


def _strategy_options(cfg) -> dict:
    c = cfg.parallel.cad
    return {"tolerance": c.tolerance, "servers": c.servers, "block": c.block, "ping_pong": c.ping_pong}


def train(cfg) -> list[dict]:
    """Run training as configured; returns the per-step metrics (also in metrics.jsonl)."""
    with deterministic_kernels(cfg.train.deterministic):
        return _train(cfg)


def _train(cfg) -> list[dict]:
    device = init_distributed(cfg.train.device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    dims = resolve_dims(cfg, world)
    tokenizer, packer = build_dataset(cfg.data, cfg.train.seed)
    state = ParallelState.create(dims, device)
    run_dir = cfg.run_dir
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)

    core = build_core_attention(state, _strategy_options(cfg))
    linear = build_linear_attention(state, _strategy_options(cfg))
    layout = getattr(core, "layout", "contiguous")
    model = build_model(cfg.model, _vocab_size(cfg, tokenizer), core, linear, cfg.train.seed).to(device)
    t = cfg.train
    grad_accum = t.global_batch_size // (t.micro_batch_size * dims.dp)
    engine = build_engine(model, state, t, cfg.parallel.zero_stage, grad_accum)
    group_size = engine.group_size
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if t.dtype == "bf16"
           else contextlib.nullcontext())

    ckpt_dir = cfg.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    start_step = 0
    if cfg.checkpoint.resume and (last := ckpt.latest_step(ckpt_dir)) is not None:
        trainer_state = ckpt.load(ckpt_dir, last, engine)
        packer.load_state_dict(trainer_state["packer"])
        start_step = trainer_state["step"]

    logger = MetricsLogger(run_dir, OmegaConf.to_container(cfg, resolve=True), cfg.logger, t.steps,
                           enabled=rank == 0)
    stop = _StopFlag()
    stop.install()
    n_params = model.num_params()
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
            micro = rank_micro_batches(samples, state, t.micro_batch_size, layout, device)
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
            loss = local_sum.item() / n_labels
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            tokens = sum(len(s.tokens) for s in samples)
            flops = dense_flops(n_params, tokens) + sum(
                attention_flops(s.doc_lens, cfg.model, model.head_dim) for s in samples)
            tflops = flops / dt / world / 1e12
            m = {"step": step, "loss": loss, "tokens": tokens, "tokens_per_s": tokens / dt,
                 "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else 0.0,
                 "max_mem_gib": _max_mem_gib(device), "lr": lr, "grad_norm": grad_norm,
                 "step_time_s": dt}
            # a strategy's metrics for the whole step (every micro-batch), where it keeps them
            step_metrics = getattr(core, "step_metrics", None)
            m.update(step_metrics() if step_metrics else getattr(core, "last_metrics", None) or {})
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
        train(cfg)

    sys.argv = [sys.argv[0]] + argv
    _app()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
