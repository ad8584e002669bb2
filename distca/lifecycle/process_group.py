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
    if want_cuda:  # before NCCL starts: its communicators bind to the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized() and world > 1:
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if want_cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # a restarted attempt (torchrun --max-restarts) may find the failed attempt's keys
            # in the agent's store and dial dead peers: keep each attempt's keys apart
            store = dist.PrefixStore(f"distca/attempt_{restart}", dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                timeout=timeout))
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]), world_size=world,
                                    timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    if dist.is_initialized() and dist.get_backend() == "gloo":
        want_cuda = False  # gloo cannot carry every collective on CUDA tensors
    if not want_cuda and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a scheduler's or container's
    allocation), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(local_ranks: int) -> int:
    """Threads per CPU rank when OMP_NUM_THREADS is unset: the cores available to this
    process shared by the ranks on this host, at least one each. Not fewer for a busy
    machine: the load average counts other jobs that the OS shares the cores with anyway,
    and guessing from it left an idle 2-core machine training on one thread."""
    return max(1, available_cores() // max(1, local_ranks))


def cpu_threads_source() -> str:
    """How this process's thread count was chosen, for the banner."""
    if "OMP_NUM_THREADS" in os.environ:
        return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return f"{available_cores()} cores available / {ranks} process(es) on this host"


def max_over_ranks(*values: int) -> tuple[int, ...]:
    """Each value's maximum over every rank, in one all-reduce (the values unchanged in one
    process); on the backend's device, so it works under NCCL and gloo alike."""
    if not dist.is_initialized():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(int(x) for x in t.tolist())
