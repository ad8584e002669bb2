"""Process-group start-up and device choice, shared by the trainer and benchmarks."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800) -> torch.device:
    """Join the torchrun job if there is one; returns this rank's device.

    NCCL when every rank has a GPU, gloo otherwise (CPU runs, tests). A process group made by
    the caller beforehand (tests) is used as it is. `timeout_s` (train.collective_timeout_s)
    bounds how long a collective waits for a peer before the process group fails.
    """
    if device_pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device={device_pref!r} must be auto, cpu or cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no GPU is visible; use train.device=auto or cpu")
    want_cuda = torch.cuda.is_available() and device_pref != "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world > 1:
        dist.init_process_group("nccl" if want_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    if dist.is_initialized() and dist.get_backend() == "gloo":
        want_cuda = False  # gloo cannot carry every collective on CUDA tensors
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
