"""Each rank's data for each step: the step's plan from metadata (the same on every rank),
then only this rank's tokens, read and cut into micro-batches in a background thread while
the step before runs.

`StepLoader.next_step()` returns a `StepBatch`: this rank's micro-batches on its device, the
global label count (the loss normaliser, from the plan: no collective), every micro-batch's
document lengths (FLOPs) and the step's data metrics (`data_wait_s`: how long the step
waited for its data; `data_tokens_<source>` with a mix; `data_dp_imbalance`, the attention
work of the busiest DP rank over the mean, when dp > 1).

With `data.prefetch` the next step is prepared on a background thread as soon as a step is
handed out (one step ahead: reading, tokenizing a text source, labels and the shard; the
copy to the GPU stays on the main thread). Plans are drawn in order by one thread at a time,
and what a step holds depends only on its plan, so prefetching never changes the data: on or
off, every rank gets bitwise the same micro-batches. `state_dict()` is the planner's
position after the last step handed out (a step prepared ahead is not counted), so a
checkpoint resumes at exactly the next step, at any layout.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from distca.lifecycle.step_guard import TrainingFailure

from .batching import MicroBatch, micro_batch
from .documents import read_range
from .step_plan import StepPlan, StepPlanner


class DataError(TrainingFailure):
    """Bad data met while training (the config checks passed; a file holds what it must not)."""


@dataclass
class StepBatch:
    micro: list[MicroBatch]       # this rank's micro-batches, on its device
    n_labels: int                 # labelled tokens of the whole global batch
    doc_lens: list[list[int]]     # document (piece) lengths of every micro-batch of the step
    metrics: dict                 # data_wait_s, data_tokens_<source>, data_dp_imbalance


@dataclass
class _Prepared:
    micro: list[MicroBatch]       # on the CPU
    plan: StepPlan


class _Background:
    """One job on a daemon thread (a stuck read never keeps the process from exiting)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="distca-data", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._result = fn()
        except BaseException as e:  # handed to the main thread by result()
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


class StepLoader:
    def __init__(self, planner: StepPlanner, sources: Sequence, plan, device, prefetch: bool = True,
                 steps: Optional[int] = None) -> None:
        """`plan` is the parallel plan (dims.dp, dp_rank, build_shard); `steps` bounds how many
        steps are handed out ahead (none is prepared past the last)."""
        if planner.dp != plan.dims.dp:
            raise ValueError(f"the data planner splits over dp={planner.dp} but the layout has dp={plan.dims.dp}")
        self.planner, self.sources, self.plan, self.device = planner, list(sources), plan, device
        self.prefetch, self.steps_left = prefetch, steps
        self._pending: Optional[_Background] = None
        self._state = planner.state_dict()
        self.read_hook: Optional[Callable[[int, int, int, int], None]] = None  # tests: (src, doc, start, stop)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, bin_pieces) -> torch.Tensor:
        out = np.empty(bin_pieces.tokens, dtype=np.int64)
        at = 0
        for s, d, a, n in zip(bin_pieces.src.tolist(), bin_pieces.doc.tolist(), bin_pieces.start.tolist(),
                              bin_pieces.length.tolist()):
            if self.read_hook is not None:
                self.read_hook(s, d, a, a + n)
            ids = read_range(self.sources[s], d, a, a + n)
            if ids.size != n:
                raise ValueError(f"data: document {d} of source {self.planner.names[s]!r} gave {ids.size} tokens "
                                 f"at [{a}, {a + n}) where its length said {n}: the data changed while "
                                 "training. Fix: do not modify the data files of a running job")
            out[at:at + n] = ids
            at += n
        return torch.from_numpy(out)

    def _prepare(self) -> _Prepared:
        plan = self.planner.next_plan()
        if getattr(self.plan, "is_pool", False):  # a CAD pool rank holds no tokens
            mine = [micro_batch(torch.zeros(0, dtype=torch.int64), [], self.plan) for _ in plan.ranks[0]]
            return _Prepared(mine, plan)
        bins = [plan.bins[b] for b in plan.ranks[self.plan.dp_rank]]
        return _Prepared([micro_batch(self._read(p), p.length.tolist(), self.plan) for p in bins], plan)

    def _prepare_checked(self) -> _Prepared:
        try:
            return self._prepare()
        except ValueError as e:
            # bad data may sit in one rank's share only: that rank says so (distca-train prints
            # a TrainingFailure from rank 0 alone), the others stop when they miss it
            rank = int(os.environ.get("RANK", "0"))
            if rank != 0:
                print(f"distca: error on rank {rank}: {e}", file=sys.stderr, flush=True)
            raise DataError(str(e)) from None

    # -- the loop's one call -------------------------------------------------------------------
    def start(self) -> None:
        """Begin preparing the first step (call after load_state_dict)."""
        if self.prefetch and self._pending is None and self.steps_left != 0:
            self._pending = _Background(self._prepare_checked)

    def next_step(self) -> StepBatch:
        t0 = time.perf_counter()
        if self.prefetch:
            self.start()
            pending = self._pending
            ready = pending.result() if pending is not None else self._prepare_checked()
            self._pending = None
            if self.steps_left is not None:
                self.steps_left -= 1
            self.start()  # the next step, while this one trains
        else:
            ready = self._prepare_checked()
        micro = [mb.to(self.device) for mb in ready.micro]
        wait = time.perf_counter() - t0
        plan = ready.plan
        self._state = plan.state_after
        metrics = {"data_wait_s": wait}
        if len(self.sources) > 1:
            metrics.update({f"data_tokens_{n}": t for n, t in zip(self.planner.names, plan.source_tokens)})
        if self.planner.dp > 1:
            metrics["data_dp_imbalance"] = plan.dp_imbalance()
        return StepBatch(micro, plan.n_labels, plan.doc_lens, metrics)

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._pending is not None:  # a step prepared from the old position: drop it
            try:
                self._pending.result()
            except Exception:
                pass
            self._pending = None
        self.planner.load_state_dict(state)
        self._state = self.planner.state_dict()
