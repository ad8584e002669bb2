"""Where a run lives and where it starts: the run dir's name, sweeps, and resume decisions.

A run dir is `runs/<experiment or model>-<YYYYmmdd-HHMMSS>-<6 hex>` unless `run_dir=` is
given, so two launches of the same command never share (and never resume) one folder;
passing an existing `run_dir=` continues it. Under `-m` (a Hydra sweep) every job gets
`<sweep dir>/<job number>`. Under torchrun rank 0's choice wins (`agree`), so ranks need no
shared run id and non-zero ranks write nothing before it.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from distca.checkpoint import store as ckpt
from distca.lifecycle.run_lock import LOCK_NAME, RunLock


def _choice(argv: list[str], key: str) -> str | None:
    """The last `key=value` (also `+key=`, `++key=`) on the command line."""
    found = None
    for a in argv:
        name, eq, value = a.lstrip("+").partition("=")
        if eq and name == key:
            found = value
    return found


def default_name(argv: list[str]) -> str:
    """runs/<experiment, else model, else 'train'>-<time>-<random>: unique per launch."""
    label = (_choice(argv, "experiment") or _choice(argv, "model") or "train").split(",")[0]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return os.path.join("runs", f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def _restart_pointer() -> str | None:
    """Where a torchrun job notes its run dir for its own restarts (keyed by its run id)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return os.path.join("runs", ".restarts", safe)


def restarted_run_dir() -> str | None:
    """Under `torchrun --max-restarts`, a restarted attempt continues the first attempt's run
    dir (and so resumes its checkpoints); the first attempt of every job picks a new one."""
    p = _restart_pointer()
    if p and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and os.path.exists(p):
        with open(p) as f:
            return f.read().strip() or None
    return None


def _remember_for_restarts(run_dir: str) -> None:
    p = _restart_pointer()
    if p and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(run_dir)


def base_run_dir(argv: list[str]) -> str:
    """This launch's run dir (under -m: the sweep's folder): `run_dir=`, a torchrun restart's
    first attempt's, or a new name."""
    return _choice(argv, "run_dir") or restarted_run_dir() or default_name(argv)


def hydra_overrides(argv: list[str], rank: int, base: str | None = None) -> list[str]:
    """The overrides main() adds: the run dir (`base`, one per sweep job under -m) and, on
    ranks other than 0, no Hydra output at all (their run dir comes from rank 0, see `agree`)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = _choice(argv, "run_dir")
    base = base or base_run_dir(argv)
    if rank != 0:
        return ["hydra.run.dir=.", "hydra.sweep.dir=.", "hydra.sweep.subdir=.", "hydra.output_subdir=null",
                "hydra/job_logging=none", "hydra/hydra_logging=none", f"run_dir={base}"]
    extra = ["hydra/job_logging=none"]  # train.log is ours (distca/observe/console.py)
    if multirun:
        return extra + [f"hydra.sweep.dir={base}", "hydra.sweep.subdir=${hydra.job.num}",
                        "run_dir=${hydra:sweep.dir}/${hydra:sweep.subdir}"]
    if not given:
        _remember_for_restarts(base)
    return extra + [f"hydra.run.dir={base}", f"run_dir={base}"]


_HYDRA_FILES = {".hydra", "multirun.yaml"}  # what Hydra writes before our code runs


def discard_unused(run_dir: str, lock: RunLock | None) -> None:
    """After a config error: a run dir that holds nothing but Hydra's files and our lock
    never held a run, so those go, and with them the folders this launch created (the sweep
    folder, `runs/`); a folder that existed before the launch is left as it was found.
    Rank 0 only (it holds the lock)."""
    if lock is None:
        return
    job, base = Path(run_dir).resolve(), lock.folder
    if job != base and base in job.parents and _only(job, _HYDRA_FILES):
        shutil.rmtree(job, ignore_errors=True)  # a sweep job's folder, made by Hydra just now
    if _only(base, _HYDRA_FILES | {LOCK_NAME}):
        shutil.rmtree(base / ".hydra", ignore_errors=True)
        (base / "multirun.yaml").unlink(missing_ok=True)
        lock.release()  # removes the lock, then the folders it made that are now empty


def _only(folder: Path, names: set[str]) -> bool:
    try:
        return {p.name for p in folder.iterdir()} <= names
    except OSError:
        return False


def agree(run_dir: str) -> str:
    """Rank 0's run dir on every rank (one broadcast; a no-op in one process)."""
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return run_dir
    box = [run_dir]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Start:
    """Where training starts: step 0 (fresh) or a checkpoint, and what to tell the user."""
    step: int = 0
    load_dir: str | None = None  # checkpoints folder to load `step` from
    message: str = "starting fresh at step 1"
    finished: bool = False       # this run already reached train.steps


def decide_start(ccfg, ckpt_dir: str, steps: int) -> Start:
    """checkpoint.resume / checkpoint.load -> Start; ValueError naming the field on a conflict.
    This run's own checkpoints always win (a preempted run that began from checkpoint.load
    continues its own progress)."""
    own = ckpt.newest_complete(ckpt_dir, warn=True)  # a torn newest one is named and skipped
    if ccfg.resume == "never":
        if own is not None:
            raise ValueError(f"checkpoint.resume=never but {ckpt_dir} already holds checkpoints (latest step "
                             f"{own}); pick a new run_dir (or checkpoint.dir), or use checkpoint.resume=auto")
        own = None
    if own is not None:
        if own >= steps:
            return Start(own, ckpt_dir, f"run already finished: step {own} of train.steps={steps} is in "
                                        f"{ckpt_dir}; raise train.steps to train on, or pick a new run_dir",
                         finished=True)
        return Start(own, ckpt_dir, f"resuming from step {own} of {ckpt_dir}")
    if ccfg.load:
        load_dir, step = ckpt.find_load(ccfg.load)
        if step >= steps:
            raise ValueError(f"checkpoint.load={ccfg.load} is at step {step}, not before train.steps={steps}; "
                             f"raise train.steps above {step}")
        return Start(step, load_dir, f"starting from step {step} of {load_dir} (checkpoint.load)")
    return Start()
