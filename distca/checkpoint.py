"""Checkpoints that resume exactly: weights, optimizer, data position, RNG and step.

One folder per step, `<dir>/step_XXXXXXXX`: the engine writes its own weights and optimizer
state there in its own format (`engine.save(dir, tag)`: torch.distributed.checkpoint for DDP,
DeepSpeed's for ZeRO), this module adds every rank's RNG and the trainer state. `latest`
names the newest complete checkpoint; it is written last, after a barrier, so a run killed
mid-save resumes from the previous one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def latest_step(ckpt_dir: str) -> int | None:
    p = Path(ckpt_dir) / "latest"
    return int(p.read_text().strip()) if p.exists() else None


def save(ckpt_dir: str, step: int, engine, trainer_state: dict) -> None:
    tag = f"step_{step:08d}"
    path = Path(ckpt_dir) / tag
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    engine.save(ckpt_dir, tag)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(rng, path / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (path / "trainer_state.json").write_text(json.dumps(trainer_state))
        tmp = Path(ckpt_dir) / "latest.tmp"
        tmp.write_text(str(step))
        os.replace(tmp, Path(ckpt_dir) / "latest")
    _barrier()


def load(ckpt_dir: str, step: int, engine) -> dict:
    """Restore engine state in place; returns the trainer state saved with it."""
    tag = f"step_{step:08d}"
    path = Path(ckpt_dir) / tag
    engine.load(ckpt_dir, tag)
    rng_file = path / f"rng_rank{_rank()}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())
