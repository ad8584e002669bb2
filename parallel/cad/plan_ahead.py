"""Planning micro-batches ahead of time, in one background thread per CAD strategy.

A plan needs only the group's pieces (which documents, which lengths, where), known as soon as
the micro-batches are drawn, so the trainer hands them over before running them
(`ParallelPlan.plan_ahead`) and the planning of micro-batch i + 1 (and the next step's, when
the data is drawn ahead) runs while micro-batch i computes. The metadata all-gather runs in
the worker too, over a CPU (gloo) twin of the CAD group (`ParallelState.cad_meta_group`), so
it never meets the layers' collectives on the training group. (Reading the shard's piece
lengths is the one host read, on the calling thread when the micro-batch is handed over.)

One worker thread, first in first out: every rank submits the same micro-batches in the same
order (the trainer's loop is the same everywhere), so the all-gathers on the twin group pair
up. The result is the same `MicroBatchPlan` planning in place would give (same pieces, same
pure planner): tests/test_cad_plan_ahead.py checks plans and losses bitwise.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future


class PlanAhead:
    """A daemon worker running submitted jobs in order; `submit(fn)` returns a Future."""

    def __init__(self, name: str = "cad-plan-ahead"):
        self._jobs: queue.Queue = queue.Queue()
        # a daemon: a job stuck in a collective (a peer died) never blocks the process's exit
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001  (re-raised where the plan is used)
                fut.set_exception(e)
