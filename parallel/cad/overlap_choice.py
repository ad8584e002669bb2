"""`parallel.cad.overlap=auto`: which overlap mode a micro-batch runs, from a cost model of its plan.

Every mode computes the same attention; they differ in what the exchange costs the step:
- `none`: the exchange waits in full (one dispatch, one kernel, one return);
- `halves`: half 1's dispatch hides under half 0's kernel and half 0's return under half 1's;
  the first dispatch and the last return wait;
- `nanobatch`: each nano-batch's dispatch and return hide under the other's projections,
  kernel and output projection + MLP, at the price of running every op of the layer twice on
  half the rows (`NANOBATCH_OVERHEAD`).
The model prices one layer (forward + backward) on the group's busiest rank: exchange seconds =
the most bytes any rank's link carries / the link's speed (`parallel.cad.link_gbps`, or measured
once), kernel seconds = the busiest server's attention cost (the measured kernel table on a GPU),
dense seconds = the layer's linear FLOPs on the rank with the most tokens at the table's GEMM
rate. The cheapest mode wins; a plan that moves nothing runs `none` (in place, no exchange).

Every input is the same on every rank of the CAD group (the plan, the layer's shapes, the
config, the committed cost table, a measured link speed agreed by one all-reduce), and the
arithmetic is the same, so every rank picks the same mode without a collective.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from parallel import comm

MODES = ("none", "halves", "nanobatch")
CODES = {m: i for i, m in enumerate(MODES)}  # the cad_overlap metric: 0 none, 1 halves, 2 nanobatch

# What splitting costs where there is nothing to hide, as a share of the layer's compute: the
# one-GPU overheads over overlap=none measured by benchmarks/cad_overlap_one_gpu.py. Issue 32's
# rerun (cad_overlap_one_gpu_h100_issue32_run2.json, exchange forced, over none+x): halves 1.07,
# 1.12, 1.04 at 16K (no, selective, full recompute) and 1.02 at 64K; nanobatch 1.32, 1.22, 1.19
# at 16K and 1.00 at 64K. The nano-batch cost is host launch time that long layers hide, so no
# single share fits both lengths; these sit between them, as before (the first measurement,
# before the issue: halves 1.03 and nanobatch 1.16 over none). Rerun and revisit after changing
# the nano-batch or halves path.
HALVES_OVERHEAD = 0.03
NANOBATCH_OVERHEAD = 0.16


@dataclass(frozen=True)
class LayerPrice:
    """One layer's times on the group's busiest rank, forward + backward, in seconds."""
    exchange: float   # the bytes of the plan's busiest link over the link speed
    kernel: float     # the busiest server's attention kernels
    before: float     # norm + q/k/v projection (what nano-batch 1 runs while 0's dispatch flies)
    after: float      # output projection + MLP (what nano-batch 0 runs while 1's return flies)


def exposed(mode: str, p: LayerPrice) -> float:
    """Seconds the layer waits for its exchange in `mode`, plus what the split itself costs."""
    x, k = p.exchange, p.kernel
    if mode == "none":
        return x
    if mode == "halves":  # d0 | max(d1, k0) | max(r0, k1) | r1, less the kernels themselves
        return x / 2 + max(0.0, x / 2 - k) + HALVES_OVERHEAD * (p.before + k + p.after)
    # nano-batches: four quarters of the exchange, each under half of another piece of work
    c = x / 4
    hidden = (max(0.0, c - p.before / 2) + 2 * max(0.0, c - k / 2) + max(0.0, c - p.after / 2))
    return hidden + NANOBATCH_OVERHEAD * (p.before + k + p.after)


def choose(p: LayerPrice, halves: bool, nanobatch: bool) -> str:
    """The mode with the least exposed time among those allowed; ties go to the simpler one.
    Nothing to exchange: none."""
    if p.exchange <= 0:
        return "none"
    allowed = ["none"] + (["halves"] if halves else []) + (["nanobatch"] if nanobatch else [])
    return min(allowed, key=lambda m: (exposed(m, p), CODES[m]))


def link_bytes(tr, cm, resend: bool, ranks: int) -> np.ndarray:
    """Bytes through each rank's link in one layer's forward and backward (sent plus received):
    every token range that crosses ranks loads both its ends."""
    per_q = cm.bytes_per_q_token + (cm.resend_bytes_per_q_token if resend else 0)
    per_kv = cm.bytes_per_kv_token + (cm.resend_bytes_per_kv_token if resend else 0)
    out = np.zeros(ranks, dtype=np.float64)
    for src, dst, n, per in ((tr.q_src, tr.q_dst, tr.q_end - tr.q_start, per_q),
                             (tr.kv_src, tr.kv_dst, tr.kv_end - tr.kv_start, per_kv)):
        moved = src != dst
        w = n[moved].astype(np.float64) * per
        out += np.bincount(src[moved], w, minlength=ranks)[:ranks]
        out += np.bincount(dst[moved], w, minlength=ranks)[:ranks]
    return out


def measure_link(group, device, bytes_per_peer: int = 4 << 20, reps: int = 3) -> float:
    """Bytes per second each rank moves through an all-to-all of the group, the slowest
    rank's (one all-reduce, so every rank gets the same number). Collective."""
    n = dist.get_world_size(group)
    send = torch.zeros(n * bytes_per_peer, dtype=torch.uint8, device=device)
    recv = torch.empty_like(send)

    def once():
        comm.all_to_all_single(recv, send, [bytes_per_peer] * n, [bytes_per_peer] * n, group)

    once()  # warm-up: connections, buffers
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = torch.tensor([2.0 * (n - 1) * bytes_per_peer * reps / max(time.perf_counter() - t0, 1e-9)],
                        dtype=torch.float64, device=device)
    comm.all_reduce(rate, dist.ReduceOp.MIN, group)
    return float(rate.item())
