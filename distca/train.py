"""The training loop, top to bottom. `train(cfg)` is plain Python (tests call it inside their
own process group); the command line enters through `distca/cli.py` (`distca-train`,
`python -m distca.train`)."""
from __future__ import annotations

import os
import sys
import time

import torch
from omegaconf import DictConfig

from distca import step as one_step
from distca.checkpoint import store as ckpt
from distca.checkpoint.policy import SavePolicy
from distca.config import to_typed
from distca.config.validate import ConfigError, check_known_keys
from distca.evaluation.tasks import evaluate
from distca.lifecycle import fault_injection
from distca.lifecycle.determinism import deterministic_kernels
from distca.lifecycle.process_group import max_over_ranks
from distca.lifecycle.step_guard import StepGuard
from distca.lifecycle.stopping import LONG_STEP_S, Stopped, StopSignals
from distca.lifecycle.watchdog import Watchdog
from distca.observe.console import clock, end_summary, mirror, quiet_known_warnings, say
from distca.optim.lr_schedule import lr_at
from distca.startup import Run, build_trainer, prepare

__all__ = ["ConfigError", "train"]


def train(cfg) -> list[dict]:
    """Run training as configured (a `RootConfig`, or the DictConfig Hydra composed); returns
    the per-step metrics (also in metrics.jsonl). Raises ConfigError for a config that cannot
    run (before the model is built), Stopped after a SIGTERM / Ctrl-C stop was saved."""
    try:
        if isinstance(cfg, DictConfig):
            check_known_keys(cfg)
        typed = to_typed(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    with deterministic_kernels(typed.train.deterministic):
        run = prepare(typed)
        if run.start.finished:
            say(run.start.message, run.loud)
            return []
        if run.loud:
            os.makedirs(run.run_dir, exist_ok=True)
        with mirror(run.run_dir, run.loud), StopSignals(loud=run.loud, long_steps=run.long_steps) as stop:
            return _train(run, stop)


def _train(run: Run, stop: StopSignals) -> list[dict]:
    cfg, t, plan, loud = run.cfg, run.cfg.train, run.plan, run.loud
    quiet_known_warnings()
    trainer = build_trainer(run)
    (early,) = max_over_ranks(stop.signum or 0)  # stopped while setting up
    if early:
        trainer.logger.close()
        say(f"stopped before step {run.start.step + 1}: nothing new to save", loud)
        raise Stopped(early, run.start.step)
    trainer.model.train()
    history: list[dict] = []
    step, stop_sig = run.start.step, 0
    saves = SavePolicy(cfg.checkpoint, t.steps, clock_rank=loud)
    guard = StepGuard(t.max_bad_steps)
    watchdog = Watchdog(t.hang_timeout_s, run.run_dir, run.rank).start()
    t_start = time.perf_counter()
    try:
        for step in range(run.start.step + 1, t.steps + 1):
            watchdog.beat(f"step {step}")
            fault_injection.at_step_start(step, run.rank)
            _sync(run.device)
            t0 = time.perf_counter()
            # the data: this rank's micro-batches, prepared in the background during the last step
            batch = trainer.loader.next_step()
            plan.plan_ahead([mb.shard for mb in batch.micro])  # CAD: micro-batch i + 1 plans while i runs
            # forward, backward, update
            local_sum, pipeline_metrics = one_step.forward_backward(trainer, batch.micro, batch.n_labels, step)
            lr = lr_at(step, t)
            grad_norm = trainer.engine.step(lr)
            loss = one_step.global_loss(trainer, local_sum, batch.n_labels)
            bad = guard.update(step, loss, grad_norm)  # the engine skipped its update if so
            _sync(run.device)
            dt = time.perf_counter() - t0
            if dt > LONG_STEP_S:  # a stop can no longer wait for a step: it aborts it (stopping.py)
                stop.long_steps = stop.long_steps or f"a step takes about {clock(dt)} here"
            # what the step did
            m = {"step": step, "loss": loss,
                 **one_step.throughput(trainer, cfg, batch.doc_lens, dt, plan.dims.world_size),
                 "lr": lr, "grad_norm": grad_norm, "step_time_s": dt, **batch.metrics, "skipped_steps": guard.skipped,
                 **plan.step_metrics(), **pipeline_metrics,
                 **evaluate(cfg, step, plan, trainer.engine, trainer.stage, trainer.amp, run.device, run.tokenizer)}
            history.append(m)
            trainer.logger.log(m)
            # save and stop: one collective carries the stop flag and rank 0's clock
            stop_sig, time_due = max_over_ranks(stop.signum or 0, int(saves.time_due()))
            if saves.wanted(step, bad, bool(time_due), stopping=stop_sig > 0):
                watchdog.beat(f"saving the checkpoint of step {step}")
                ckpt.save(run.ckpt_dir, step, trainer.engine,
                          {"step": step, "data": trainer.loader.state_dict(), **run.identity})
                ckpt.prune(run.ckpt_dir, cfg.checkpoint.keep)
                saves.saved()
            if stop_sig:
                break
            if guard.exhausted:  # the last good checkpoint is looked up only then
                raise guard.failure(step, ckpt.latest_step(run.ckpt_dir), run.ckpt_dir)
    finally:
        watchdog.stop()
        trainer.logger.close()
    if loud:
        print(end_summary(history, run.start.step, step, t.steps, time.perf_counter() - t_start, run.run_dir,
                          run.ckpt_dir, ckpt.latest_step(run.ckpt_dir), stop.signum), file=sys.stderr, flush=True)
    if stop_sig:
        raise Stopped(stop_sig, step)
    return history


def _sync(device: torch.device) -> None:
    """Step times measure the GPU's work, not the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    from distca.cli import main

    main()
