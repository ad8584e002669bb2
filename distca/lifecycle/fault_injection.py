"""Faults on purpose, for the chaos tests (tests/test_faults.py). Off unless the variable
DISTCA_FAULTS is set to a comma-separated list of:

  nan@STEP           the loss of STEP is NaN on every rank (so are its gradients)
  kill@RANK:STEP     RANK kills itself (SIGKILL) as STEP starts
  hang@RANK:STEP     RANK stops making progress as STEP starts
  kill_in_save@STEP  rank 0 kills itself while STEP's checkpoint is half written
  enospc@STEP        writing STEP's checkpoint fails with "No space left on device"

kill and hang fire on the first launch only (torchrun's TORCHELASTIC_RESTART_COUNT = 0), so
a restarted job runs clean, as after a real node failure.
"""
from __future__ import annotations

import errno
import os
import signal
import time


def _faults() -> list[tuple[str, list[int]]]:
    spec = os.environ.get("DISTCA_FAULTS", "")
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition("@")
        out.append((kind, [int(x) for x in where.split(":")]))
    return out


def _first_attempt() -> bool:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def nan_loss(step: int) -> bool:
    return any(k == "nan" and w == [step] for k, w in _faults())


def at_step_start(step: int, rank: int) -> None:
    """kill / hang this rank if asked for this step."""
    for kind, where in _faults():
        if where == [rank, step] and _first_attempt():
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                while True:
                    time.sleep(3600)


def during_save(step: int, rank: int) -> None:
    """Between the engine's files and the manifest of STEP's checkpoint."""
    for kind, where in _faults():
        if where == [step] and kind == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if where == [step] and kind == "kill_in_save" and rank == 0 and _first_attempt():
            os.kill(os.getpid(), signal.SIGKILL)
