"""The training loop. `train(cfg)` is plain Python (tests call it inside their own process
group); `main()` is the thin Hydra/torchrun entry point (`distca-train`, `python -m distca.train`)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import resource
import sys
import time

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from distca import checkpoint as ckpt
from distca.batching import global_label_count, rank_micro_batches
from distca.config import to_typed
from distca.console import (cpu_run_warning, end_summary, git_commit, mirror, quiet_known_warnings, say,
                            start_banner, versions)
from distca.data import build_dataset
from distca.determinism import deterministic_kernels
from distca.distributed import init_distributed, max_over_ranks
from distca import fault_injection
from distca.evaluation import evaluate
from distca.flops import attention_flops, dense_flops, device_peak_tflops, layer_costs
from distca.metrics import MetricsLogger
from distca.model import build_model
from distca.model.transformer import deprecation_messages, head_dim
from distca.optim import adamw_factory
from distca.parallelize import apply_tensor_parallel
from distca.pipeline_stage import PipelineStage
from distca.run_dir import agree, decide_start, hydra_overrides
from distca.schedule import lr_at
from distca.step_guard import StepGuard, TrainingFailure
from distca.watchdog import Watchdog
from distca.stopping import Stopped, StopSignals
from distca.validate import build_plan, check_known_keys, micro_batches_per_step
from parallel.data_parallel import build_engine


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
    the per-step metrics (also in metrics.jsonl). Raises ConfigError for a config that cannot
    run (before any process group), Stopped after a SIGTERM / Ctrl-C stop was saved."""
    try:
        if isinstance(cfg, DictConfig):
            check_known_keys(cfg)
        typed = to_typed(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    with deterministic_kernels(typed.train.deterministic):
        return _train(typed)


def _setup(cfg):
    """Everything before the first step that can reject the config: data, plan, device. The
    process group comes last, so a bad config never joins (or hangs) a collective."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer, packer = build_dataset(cfg.data, cfg.train.seed)
    vocab = _vocab_size(cfg, tokenizer, cfg.parallel.tp)
    plan = build_plan(cfg, world, vocab)
    device = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    return device, plan, vocab, packer


def checkpoint_identity(cfg, plan, vocab) -> dict:
    """What a checkpoint must match to be loaded here (stored in its trainer state)."""
    return ckpt.identity(cfg.model, vocab, head_dim(cfg.model), cfg.parallel.zero_stage,
                         plan.dims.tp, plan.dims.pp)


def _start(cfg, device, plan, vocab):
    """The agreed run dir, a writable checkpoint dir, and where training starts."""
    run_dir = agree(cfg.run_dir)
    ckpt_dir = cfg.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    problem = ckpt.check_writable(ckpt_dir)
    if max_over_ranks(int(problem is not None))[0]:
        raise ValueError(f"checkpoint.dir={ckpt_dir} is not a writable folder ({problem or 'on another rank'}); "
                         "set checkpoint.dir (or run_dir) to a folder every rank can write")
    start = decide_start(cfg.checkpoint, ckpt_dir, cfg.train.steps)
    if start.load_dir is not None and not start.finished:  # before building anything
        ckpt.check_compatible(start.load_dir, start.step, checkpoint_identity(cfg, plan, vocab))
    return run_dir, ckpt_dir, start


def _train(cfg) -> list[dict]:
    try:
        device, plan, vocab, packer = _setup(cfg)
        run_dir, ckpt_dir, start = _start(cfg, device, plan, vocab)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    rank = dist.get_rank() if dist.is_initialized() else 0
    if start.finished:
        say(start.message, rank == 0)
        return []
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
    with mirror(run_dir, rank == 0), StopSignals(loud=rank == 0) as stop:
        return _run(cfg, device, plan, vocab, packer, run_dir, ckpt_dir, start, stop, rank)


def _save_config(cfg, run_dir, ckpt_dir, plan, vocab, world):
    """config.yaml with every placeholder resolved, plus what ran it (not part of the schema)."""
    d = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    d["model"].update(vocab_size=vocab, head_dim=head_dim(cfg.model))
    d["parallel"]["dp"] = plan.dims.dp
    d["run_dir"], d["checkpoint"]["dir"] = run_dir, ckpt_dir
    argv = [a for a in sys.argv if not a.startswith(("hydra", "run_dir="))]  # what the user typed
    d["run"] = {"world_size": world, "git_commit": git_commit(), "versions": versions(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": argv}
    OmegaConf.save(OmegaConf.create(d), os.path.join(run_dir, "config.yaml"))


def _announce_deepspeed_build(zero_stage: int, loud: bool) -> None:
    if zero_stage == 0:
        return
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    if not (os.path.isdir(cache) and os.listdir(cache)):
        say(f"parallel.zero_stage={zero_stage}: DeepSpeed may compile its C++ ops now (once, a few "
            f"minutes; cached in {cache})", loud)


def _run(cfg, device, plan, vocab, packer, run_dir, ckpt_dir, start, stop, rank) -> list[dict]:
    loud = rank == 0
    for msg in deprecation_messages(cfg.model):
        say(f"warning: {msg}", loud)
    quiet_known_warnings()
    t = cfg.train
    if loud:  # before the model is built: a 1B model on a CPU takes minutes to get to step 1
        costs, embed, head = layer_costs(cfg.model, head_dim(cfg.model), cfg.data.seq_len, vocab)
        est = 3 * t.global_batch_size * cfg.data.seq_len * (sum(costs) + embed + head)  # fwd + bwd
        if (w := cpu_run_warning(device, est, plan.dims.world_size)):
            say(f"warning: {w}")
    state = plan.setup(device)
    model = build_model(cfg.model, vocab, plan.core_attention, plan.linear_attention, cfg.train.seed)
    n_params = model.num_params()  # the whole model's, before each rank keeps its part
    n_micro = micro_batches_per_step(t, plan.dims.dp)
    stage = PipelineStage(model, plan, n_micro) if plan.dims.pp > 1 else None
    model = apply_tensor_parallel(model, state.tp_group).to(device)
    _announce_deepspeed_build(cfg.parallel.zero_stage if plan.dims.tp == plan.dims.pp == 1 else 0, loud)
    engine = build_engine(model, state, adamw_factory(t, fused=device.type == "cuda"), t.grad_clip,
                          cfg.parallel.zero_stage, n_micro, tied=stage.tied_copies() if stage else (),
                          tied_names=("lm_head.weight", "embed.weight") if cfg.model.tie_embeddings else None)
    group_size = engine.group_size
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if t.dtype == "bf16"
           else contextlib.nullcontext())
    if start.load_dir is not None:
        trainer_state = ckpt.load(start.load_dir, start.step, engine)
        packer.load_state_dict(trainer_state["packer"])
    world = plan.dims.world_size
    if loud:
        _save_config(cfg, run_dir, ckpt_dir, plan, vocab, world)
    logger = MetricsLogger(run_dir, dataclasses.asdict(cfg), cfg.logger, t.steps, enabled=loud,
                           log_every=t.log_every, start_step=start.step)
    peak = device_peak_tflops(device)
    if loud:
        print(start_banner(cfg, plan, device, run_dir, ckpt_dir, start, n_params, vocab, peak,
                           logger.wandb_where), file=sys.stderr, flush=True)
    history: list[dict] = []
    (early,) = max_over_ranks(stop.signum or 0)  # stopped while setting up
    if early:
        logger.close()
        say(f"stopped before step {start.step + 1}: nothing new to save", loud)
        raise Stopped(early, start.step)
    model.train()
    c = cfg.checkpoint
    last_save = time.monotonic()
    step, stopping, stop_sig = start.step, False, 0
    t_start = time.perf_counter()
    guard = StepGuard(t.max_bad_steps)
    watchdog = Watchdog(t.hang_timeout_s, run_dir, rank).start()
    identity = checkpoint_identity(cfg, plan, vocab)
    try:
        for step in range(start.step + 1, t.steps + 1):
            watchdog.beat(f"step {step}")
            fault_injection.at_step_start(step, rank)
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
                        if fault_injection.nan_loss(step):
                            ce = ce * float("nan")
                        engine.backward(ce / n_labels * group_size)
                    local_sum += ce.detach()
            lr = lr_at(step, t)
            grad_norm = engine.step(lr)
            if dist.is_initialized() and state.dpcp_group is not None:
                dist.all_reduce(local_sum, group=state.dpcp_group)
            if state.pp_group is not None:  # the loss lives on the last stage
                dist.all_reduce(local_sum, group=state.pp_group)
            loss = local_sum.item() / n_labels
            bad = guard.update(step, loss, grad_norm)  # the engine skipped its update if so
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            tokens = sum(len(s.tokens) for s in samples)
            flops = dense_flops(n_params, tokens) + sum(
                attention_flops(s.doc_lens, cfg.model, head_dim(cfg.model)) for s in samples)
            tflops = flops / dt / world / 1e12
            m = {"step": step, "loss": loss, "tokens": tokens, "tokens_per_s": tokens / dt,
                 "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else None,
                 "max_mem_gib": _max_mem_gib(device), "lr": lr, "grad_norm": grad_norm,
                 "step_time_s": dt, "skipped_steps": guard.skipped}
            m.update(plan.step_metrics())
            m.update(pipeline_metrics)
            m.update(evaluate(cfg, step, plan, engine, stage, amp, device))  # eval (distca/evaluation.py)
            history.append(m)
            logger.log(m)
            # rank 0's clock decides time-based saves; one collective carries both flags
            due = bool(loud and c.every_minutes and time.monotonic() - last_save >= 60 * c.every_minutes)
            stop_sig, due = max_over_ranks(stop.signum or 0, int(due))
            stopping = stop_sig > 0
            saving = due or (c.every and step % c.every == 0)
            if not bad and (saving or stopping or (step == t.steps and c.save_final)):
                watchdog.beat(f"saving the checkpoint of step {step}")
                ckpt.save(ckpt_dir, step, engine, {"step": step, "packer": packer.state_dict(), **identity})
                ckpt.prune(ckpt_dir, c.keep)
                last_save = time.monotonic()
            if stopping:
                break
            if guard.exhausted:  # the last good checkpoint is looked up only then
                raise guard.failure(step, ckpt.latest_step(ckpt_dir), ckpt_dir)
    finally:
        watchdog.stop()
        logger.close()
    saved = ckpt.latest_step(ckpt_dir)
    if loud:
        print(end_summary(history, start.step, step, t.steps, time.perf_counter() - t_start, run_dir,
                          ckpt_dir, saved, stop.signum), file=sys.stderr, flush=True)
    if stopping:
        raise Stopped(stop_sig, step)
    return history


def _report_to_torchrun(e: Exception, what: str) -> None:
    """Give torchrun the root cause to print last (instead of `error_file: <N/A>`)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": {"message": f"{type(e).__name__}: {e}", "extraInfo": {
                "py_callstack": f"{what}: {e}", "timestamp": str(int(time.time()))}}}, f)


def _lost_peer(e: RuntimeError) -> bool:
    """A collective failed because another rank is gone or stuck (gloo, NCCL, the store)."""
    text = str(e)
    return any(k in text for k in ("Connection closed by peer", "Connection reset by peer",
                                   "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
                                   "Broken pipe", "recvBytes", "Socket Timeout"))


def main() -> None:
    if {"--help", "-h"} & set(sys.argv[1:]):  # help: every field, described from the schema (distca/help.py)
        from distca.help import print_help
        return print_help(sys.argv[1:])
    import hydra
    from torch.distributed.elastic.multiprocessing.errors import record

    from distca.config import register_schema

    register_schema()
    rank = int(os.environ.get("RANK", "0"))
    argv = [a for a in sys.argv[1:] if not a.lstrip("+").startswith("run_dir=")]
    argv += hydra_overrides(sys.argv[1:], rank)

    @hydra.main(config_path="pkg://configs", config_name="train", version_base="1.3")
    def _app(cfg):
        try:
            train(cfg)
        except ConfigError as e:
            # every rank found the same problem before any collective: rank 0 says it once, no
            # traceback, exit 2; the other ranks leave quietly so torchrun lists one failure
            if rank == 0:
                print(f"distca: config error: {e}", file=sys.stderr, flush=True)
                _report_to_torchrun(e, "config error (rank 0 printed it above)")
            sys.exit(2 if rank == 0 or "TORCHELASTIC_RUN_ID" not in os.environ else 0)
        except Stopped as e:
            if rank == 0:  # plain torchrun reports the stop as a failure: say what it was
                _report_to_torchrun(e, "not a crash, every rank saved a checkpoint")
            sys.exit(e.exit_code)  # 143 (SIGTERM) / 130 (Ctrl-C): stopped, checkpoint saved
        except (TrainingFailure, ckpt.CheckpointWriteError) as e:
            # a failure with its own explanation: said once, no traceback, a readable status
            say(f"error: {e}", rank == 0 or isinstance(e, ckpt.CheckpointWriteError))
            if rank == 0:
                _report_to_torchrun(e, "training stopped (rank 0 printed why above)")
            sys.exit(e.exit_code)
        except RuntimeError as e:
            if not _lost_peer(e):
                raise
            # a peer died (or hangs): this rank cannot go on; one line, no traceback, and the
            # launcher (torchrun --max-restarts) restarts the job from its last checkpoint
            say(f"rank {rank} lost a peer and stops ({str(e).splitlines()[0][:200]}); the launcher's "
                "log names the rank that failed first", True)
            sys.exit(1)
        except KeyboardInterrupt:
            say("aborted by a second Ctrl-C (nothing saved since the last checkpoint)", rank == 0)
            sys.exit(130)

    sys.argv = [sys.argv[0]] + argv
    try:
        record(_app)()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
