"""Checkpoints that resume exactly: weights, optimizer, data position, RNG and step.

One folder per step, `<dir>/step_XXXXXXXX`: the engine writes its own weights and optimizer
state there in its own format (`engine.save(dir, tag)`: torch.distributed.checkpoint for DDP,
DeepSpeed's for ZeRO), this module adds every rank's RNG and the trainer state.

Atomic: everything is written under `step_XXXXXXXX.partial`; once every rank has written,
rank 0 adds the trainer state and a manifest (files, sizes, checksums:
manifest.py), renames the folder to its final name and moves `latest` last. So a
run killed mid-save never leaves a final-named folder without a manifest, and `latest`
never names an incomplete one. Resuming takes the newest folder that verifies; a torn or
truncated newer one is named in a warning and skipped. A failed write (disk full, folder
gone) is a `CheckpointWriteError` on every rank, with the earlier checkpoints intact.

`prune` keeps the newest K (checkpoint.keep); `find_load` turns checkpoint.load (another
run's dir, its checkpoints dir or one step folder) into a (dir, step) pair;
`check_writable` runs before step 1 so a bad checkpoint.dir fails at start-up;
`check_compatible` refuses, before anything is built, a checkpoint of another format (ZeRO
vs DDP) or another model shape, naming both.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from distca.lifecycle import fault_injection
from distca.checkpoint.manifest import verify, write_manifest
from distca.lifecycle.process_group import max_over_ranks


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


PARTIAL = ".partial"


class CheckpointWriteError(RuntimeError):
    exit_code = 1


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def _pointer(ckpt_dir: str) -> int | None:
    p = Path(ckpt_dir) / "latest"
    try:
        return int(p.read_text().strip()) if p.exists() else None
    except ValueError:
        return None


def newest_complete(ckpt_dir: str, warn: bool = False) -> int | None:
    """The newest step whose folder verifies against its manifest (None: there is none).
    With warn, rank 0 names every newer folder skipped, and why."""
    pointer = _pointer(ckpt_dir)
    steps = set(saved_steps(ckpt_dir)) | ({pointer} if pointer is not None else set())
    for step in sorted(steps, reverse=True):
        path = Path(ckpt_dir) / _tag(step)
        problem = verify(path)
        if problem is None:
            return step
        if warn and _rank() == 0:
            print(f"distca: warning: checkpoint {path} is incomplete or damaged ({problem}); "
                  "skipping it for an older one", file=sys.stderr, flush=True)
    return None


def latest_step(ckpt_dir: str) -> int | None:
    """The newest complete checkpoint's step (silently; `newest_complete(warn=True)` says more)."""
    return newest_complete(ckpt_dir)


def _all_ok(ok: bool) -> bool:
    """Whether every rank is ok (one all-reduce): a failure anywhere fails the save everywhere."""
    return max_over_ranks(int(not ok))[0] == 0


def save(ckpt_dir: str, step: int, engine, trainer_state: dict) -> None:
    final = Path(ckpt_dir) / _tag(step)
    partial = Path(ckpt_dir) / (_tag(step) + PARTIAL)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    if _rank() == 0 and partial.exists():  # left by a save of this run that crashed at this step
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    problem = None
    try:
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)  # the config checks leave none behind
        with warnings.catch_warnings():
            # torch.distributed.checkpoint in one process warns that it assumes one process: true
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            engine.save(ckpt_dir, partial.name)
        partial.mkdir(parents=True, exist_ok=True)
        torch.save(rng, partial / f"rng_rank{_rank()}.pt")
        fault_injection.during_save(step, _rank())
    except (OSError, CheckpointException) as e:
        problem = _reason(e)
    if _all_ok(problem is None) and _rank() == 0:
        try:
            (partial / "trainer_state.json").write_text(json.dumps(trainer_state))
            write_manifest(partial)
            if final.exists():  # the same step saved again (a resumed run re-reached it)
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_dir(Path(ckpt_dir))
            tmp = Path(ckpt_dir) / "latest.tmp"
            tmp.write_text(str(step))
            os.replace(tmp, Path(ckpt_dir) / "latest")
            _fsync_dir(Path(ckpt_dir))
        except OSError as e:
            problem = _reason(e)
    if not _all_ok(problem is None):
        if _rank() == 0:
            shutil.rmtree(partial, ignore_errors=True)
        kept = latest_step(ckpt_dir)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {final} ({problem or 'failed on another rank'}); "
            f"the earlier checkpoints are intact ({f'newest: step {kept}' if kept is not None else 'none yet'}). "
            "Free space or set checkpoint.dir to a writable folder, then resume with the same run_dir")


def _reason(e: Exception) -> str:
    err = e
    while getattr(err, "__cause__", None) is not None and not isinstance(err, OSError):
        err = err.__cause__
    return (getattr(err, "strerror", None) or str(err))[:300]


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry), where the filesystem allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def identity(mcfg, vocab: int, head_dim: int, zero_stage: int, tp: int, pp: int) -> dict:
    """What a checkpoint must match to load: the engine's format and the model's shape."""
    deepspeed = zero_stage >= 2 or (zero_stage == 1 and tp == pp == 1)  # as build_engine picks
    model = {"layers": str(mcfg.layers), "hidden": mcfg.hidden, "heads": mcfg.heads,
             "kv_heads": mcfg.kv_heads, "head_dim": head_dim, "ffn_hidden": mcfg.ffn_hidden,
             "vocab_size": vocab, "tie_embeddings": bool(mcfg.tie_embeddings),
             "linear_decay": str(mcfg.linear_decay)}
    return {"format": "deepspeed" if deepspeed else "dcp", "zero_stage": zero_stage, "model": model}


def _describe(ident: dict) -> str:
    z = ident.get("zero_stage", "?")
    return (f"DeepSpeed ZeRO (parallel.zero_stage={z})" if ident.get("format") == "deepspeed"
            else f"torch DDP / DCP (parallel.zero_stage={z})")


def check_compatible(ckpt_dir: str, step: int, want: dict) -> None:
    """ValueError naming both sides if the checkpoint was written by another engine format or
    for another model shape. Checkpoints from before this check carry no identity: accepted."""
    path = Path(ckpt_dir) / _tag(step)
    try:
        got = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return  # unreadable: verify() already reported it, or the engine's load will
    if "format" in got and got["format"] != want["format"]:
        raise ValueError(f"checkpoint {path} was written by {_describe(got)}, but this run uses "
                         f"{_describe(want)}; set parallel.zero_stage={got.get('zero_stage')} to resume "
                         "it, or start a new run (a new run_dir) without it")
    diff = [f"model.{k}: checkpoint {v!r}, this run {want['model'].get(k)!r}"
            for k, v in got.get("model", {}).items() if want["model"].get(k) != v]
    if diff:
        raise ValueError(f"checkpoint {path} is for another model ({'; '.join(diff)}); set the model "
                         "to match it, or start a new run (a new run_dir) without it")


def load(ckpt_dir: str, step: int, engine) -> dict:
    """Restore engine state in place; returns the trainer state saved with it."""
    tag = f"step_{step:08d}"
    path = Path(ckpt_dir) / tag
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        engine.load(ckpt_dir, tag)
    rng_file = path / f"rng_rank{_rank()}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


_STEP_DIR = re.compile(r"step_(\d{8})$")


def saved_steps(ckpt_dir: str) -> list[int]:
    """Steps with a folder in ckpt_dir, oldest first (complete or not)."""
    p = Path(ckpt_dir)
    if not p.is_dir():
        return []
    return sorted(int(m.group(1)) for d in p.iterdir() if (m := _STEP_DIR.match(d.name)))


def prune(ckpt_dir: str, keep: int) -> None:
    """Rank 0 deletes all but the newest `keep` step folders (never the one `latest` names)."""
    if keep <= 0 or _rank() != 0:
        return
    latest = latest_step(ckpt_dir)
    for step in saved_steps(ckpt_dir)[:-keep]:
        if step != latest:
            shutil.rmtree(Path(ckpt_dir) / f"step_{step:08d}", ignore_errors=True)


def find_load(path: str) -> tuple[str, int]:
    """checkpoint.load -> (checkpoints dir, step). Accepts a run dir, a checkpoints dir (its
    `latest`) or a `step_XXXXXXXX` folder; ValueError naming the field otherwise."""
    p = Path(path)
    if (m := _STEP_DIR.match(p.name)) and (p / "trainer_state.json").exists():
        return str(p.parent), int(m.group(1))
    for d in (p, p / "checkpoints"):
        if (step := newest_complete(str(d), warn=True)) is not None:
            return str(d), step
    raise ValueError(f"checkpoint.load={path} holds no checkpoint; give a run dir, its checkpoints "
                     "folder or one of its step_XXXXXXXX folders")


def check_writable(ckpt_dir: str) -> str | None:
    """None if this process can create and write ckpt_dir, else the reason."""
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        probe = Path(ckpt_dir) / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None
