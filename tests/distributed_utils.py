"""Run a function on N CPU processes with a gloo process group (for distributed tests).

`fn(rank, world_size, *args)` must be a module-level function (spawn pickles it by name).
Assertions inside it fail the test; the first failing rank's traceback is re-raised.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, fn, world_size, port, args):
    # a rank killed inside C++ (SIGABRT, SIGSEGV) has no Python traceback for spawn to re-raise;
    # faulthandler prints where every thread was, so a crash in CI says which call it was in
    faulthandler.enable(all_threads=True)
    # the variables torchrun sets, so code under test (DeepSpeed too) sees a normal launch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # every rank tears gloo down together: a rank that destroys its pairs while a peer
        # still reads from them can abort that peer in C++ ("terminate called without an
        # active exception", seen once in CI on a 4-rank test)
        if dist.is_initialized():  # code under test may have torn the group down itself
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # skip interpreter finalisation: objects the test still holds (models keep their group)
    # keep gloo's C++ process group alive past destroy_process_group, and freeing it while
    # the interpreter shuts down can abort in C++ (upstream discussion: pytorch PR 179291)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn, world_size: int, *args) -> None:
    mp.spawn(_worker, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)
