"""Run a function on N CPU processes with a gloo process group (for distributed tests).

`fn(rank, world_size, *args)` must be a module-level function (spawn pickles it by name).
Assertions inside it fail the test; the first failing rank's traceback is re-raised.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, fn, world_size, port, args):
    # the variables torchrun sets, so code under test (DeepSpeed too) sees a normal launch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args) -> None:
    mp.spawn(_worker, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)
