"""Pipeline schedules for the CAD scale simulator: 1F1B with uneven micro-batches, and the
lock-step ticks DistCA runs CAD in.

`one_f_one_b` is an event simulation of Megatron's non-interleaved 1F1B: stage s runs
min(p-1-s, m) warm-up forwards, then alternates one forward and one backward, then drains
its backwards; an op starts when its stage is free and its input is ready (forward from the
previous stage, backward from the next). Uneven micro-batches make stragglers: a slow one
holds up every later op of every stage. P2P activation transfers are not modelled.

`lockstep_ticks` is DistCA's schedule (`forward_backward_func.py`): every stage runs the same
sequence, p-1 forward ticks, then m (forward, backward) tick pairs, then p-1 backward ticks;
a stage with nothing to do in a tick runs a dummy pass that only serves attention. Stage s
runs the forward of micro-batch k-s in forward tick k and the backward of micro-batch
k-(p-1-s) in backward tick k.
"""
from __future__ import annotations

import numpy as np


def stage_order(p: int, m: int, s: int) -> list[tuple[str, int]]:
    """The op order of stage s in 1F1B: ("F" | "B", micro-batch)."""
    warm = min(p - 1 - s, m)
    ops = [("F", j) for j in range(warm)]
    for i in range(m - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", j) for j in range(m - warm, m)]


def one_f_one_b(fwd, bwd) -> float:
    """Makespan of 1F1B. fwd, bwd: [p, m] seconds of micro-batch j on stage s."""
    f, b = np.asarray(fwd, float), np.asarray(bwd, float)
    if f.ndim != 2 or f.shape != b.shape:
        raise ValueError(f"fwd and bwd must both be [stages, micro-batches], got {f.shape}, {b.shape}")
    p, m = f.shape
    end = {}  # (kind, stage, micro-batch) -> finish time
    orders = [stage_order(p, m, s) for s in range(p)]
    nxt, free = [0] * p, [0.0] * p
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            while nxt[s] < len(orders[s]):
                kind, j = orders[s][nxt[s]]
                dep = ("F", s - 1, j) if kind == "F" and s > 0 else \
                      ("B", s + 1, j) if kind == "B" and s < p - 1 else None
                if dep is not None and dep not in end:
                    break
                start = max(free[s], end[dep] if dep else 0.0)
                free[s] = end[(kind, s, j)] = start + (f[s, j] if kind == "F" else b[s, j])
                nxt[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("1F1B schedule deadlocked (a bug in stage_order)")
    return max(free)


def lockstep_ticks(p: int, m: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """[(direction, [(stage, micro-batch) doing real work])] in tick order."""
    def fwd(k):
        return ("F", [(s, k - s) for s in range(p) if 0 <= k - s < m])

    def bwd(k):
        return ("B", [(s, k - (p - 1 - s)) for s in range(p) if 0 <= k - (p - 1 - s) < m])

    ticks = [fwd(k) for k in range(p - 1)]
    for i in range(m):
        ticks += [fwd(p - 1 + i), bwd(i)]
    return ticks + [bwd(k) for k in range(m, m + p - 1)]
