"""Planning micro-batches ahead of time (`ParallelPlan.plan_ahead`, CAD's background thread,
parallel/cad/plan_ahead.py) gives bitwise the plans and losses of planning in place.

Training at cp=3 (gloo, fp32, documents of mixed lengths, tolerance 0 and small blocks so work
moves, a slow link so overlap=auto picks nano-batches where work moves), 3 steps of 4
micro-batches, twice: as the trainer runs (plan ahead) and with planning ahead switched off.
Every micro-batch's plan (mode, transfers, this rank's layouts and nano-batch rows) hashes the
same, the losses and CAD metrics (but the planning time) are equal, both match one process,
and the ahead run really planned in the background: every micro-batch after the first step
was planned by the worker thread, none by the layers.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import fields

import numpy as np
import pytest
import torch

from distca.train import train
from tests.distributed_utils import run_distributed
from tests.train_utils import assert_parity, losses, mixed_corpus, tiny_cfg

STEPS = ["train.steps=3", "train.dtype=fp32"]
CAD = ["parallel.cp_algo=cad", "parallel.cp=3", "parallel.cad.block=8", "parallel.cad.tolerance=0.0",
       "parallel.cad.link_gbps=1e-6"]


def _digest(planned) -> str:
    """A hash of everything a micro-batch's plan decides, for this rank."""
    h = hashlib.sha256(planned.mode.encode())

    def add(x):
        if isinstance(x, torch.Tensor):
            h.update(x.cpu().numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, (list, tuple)):
            for y in x:
                add(y)
        elif hasattr(x, "__dataclass_fields__"):
            for f in fields(x):
                if not f.name.startswith("_") and f.name != "totals":
                    add(getattr(x, f.name))
        else:
            h.update(repr(x).encode())
    add([planned.whole, planned.nano])
    return h.hexdigest()


def _runs(rank, world, ref, tmp, data):
    from parallel.cad.micro_plan import Planner
    from parallel.plan import ParallelPlan
    planned = []
    inner = Planner.plan

    def spy(self, *a, **k):
        out = inner(self, *a, **k)
        planned.append((threading.current_thread().name, _digest(out)))
        return out

    Planner.plan = spy
    results = {}
    ahead = ParallelPlan.plan_ahead
    for mode in ("ahead", "in place"):
        planned.clear()
        if mode == "in place":
            ParallelPlan.plan_ahead = lambda self, shards: None
        try:
            history = train(tiny_cfg(f"{tmp}/{mode.replace(' ', '_')}", *STEPS, *data, *CAD))
        finally:
            ParallelPlan.plan_ahead = ahead
        results[mode] = (history, list(planned))
        assert_parity(ref, losses(history), label=f"cad cp=3 auto, planned {mode}")
    (h_ahead, p_ahead), (h_here, p_here) = results["ahead"], results["in place"]
    assert losses(h_ahead) == losses(h_here)  # bitwise
    for a, b in zip(h_ahead, h_here):
        for key in a:
            if key.startswith("cad_") and key != "cad_plan_ms":
                assert a[key] == b[key], (key, a[key], b[key])
    assert [d for _, d in p_ahead] == [d for _, d in p_here]
    per_step = 4  # global batch 4, micro-batch 1, dp 1
    threads = [t for t, _ in p_ahead]
    assert len(threads) == 3 * per_step, threads
    assert all(t == "cad-plan-ahead" for t in threads[per_step:]), threads  # steps 2 and 3
    assert not any(t == "cad-plan-ahead" for t, _ in p_here)
    assert any(m["cad_overlap"] > 0 for m in h_ahead), [m["cad_overlap"] for m in h_ahead]


@pytest.mark.slow
def test_planning_ahead_gives_the_plans_and_losses_of_planning_in_place(tmp_path):
    data = mixed_corpus(tmp_path / "docs.jsonl")
    ref = losses(train(tiny_cfg(tmp_path / "ref", *STEPS, *data)))
    run_distributed(_runs, 3, ref, str(tmp_path), data)
