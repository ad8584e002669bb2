"""CAD in the scale simulator: one lock-step tick of the CAD group, planned by the real planner.

In a tick every rank of the group (DP x PP ranks of one TP position) runs the linear layers
of the micro-batch its stage holds (nothing on a dummy tick) and serves the attention the
planner (`parallel.cad.planner.plan`) gives it; attention of every active stage is pooled.
Bytes are the plan's exact all-to-all ranges (`parallel.cad.dispatch.transfers`, keys once
per server and document), priced per direction: the dispatch and the return each take
max(bytes out, bytes in) / bandwidth on a rank's NIC. Ping-pong hides a rank's traffic
under its own compute (linear + attention) and only the rest is exposed: an assumption that
DistCA's signal-only ablation supports, not a measurement.
"""
from __future__ import annotations

import numpy as np

from benchmarks.cad_sim_model import GpuCosts
from parallel.cad.dispatch import transfers
from parallel.cad.planner import fitting_block, plan
from parallel.cad.tasks import contiguous_pieces


def unit_bytes(gc: GpuCosts, direction: str, resend: bool) -> dict:
    """Bytes per token moved in each phase: q-side (per query token) and kv-side (per key)."""
    uq, ukv = gc.cm.hq * gc.cm.d * gc.cm.eb, gc.cm.hkv * gc.cm.d * gc.cm.eb
    if direction == "F":   # q, k, v out; o back
        return {"disp_q": uq, "disp_kv": 2 * ukv, "ret_q": uq, "ret_kv": 0}
    # backward: dO out (with resend also q, o and the LSE), dq, dk, dv back
    disp_q = uq + (2 * uq + 4 * gc.cm.hq if resend else 0)
    return {"disp_q": disp_q, "disp_kv": 2 * ukv if resend else 0, "ret_q": uq, "ret_kv": 2 * ukv}


def plan_tick(streams: list, gc: GpuCosts, tolerance: float, block: int) -> dict:
    """Plan the pooled attention of one tick; streams[r] = document lengths rank r holds."""
    n = len(streams)
    pieces = contiguous_pieces(streams)
    tasks = pieces.tasks()
    # the block the trainer would cut at (CADAttention: the largest that fits the tolerance)
    block = fitting_block(tasks, n, block, tolerance)
    p = plan(tasks, n, gc.cm, tolerance=tolerance, block=block)
    fwd_part = gc.cm_fwd.task_cost(p.parts)
    return {"n": n, "tokens": np.array([float(np.sum(s)) for s in streams]),
            "attn_F": np.bincount(p.server, fwd_part, minlength=n),
            "attn_B": np.bincount(p.server, p.cost - fwd_part, minlength=n),
            "tr": transfers(p.parts, p.server, pieces), "plan_ms": p.plan_ms,
            "imbalance_before": p.imbalance_before, "imbalance_after": p.imbalance_after,
            "block": block}


def tick_layer_time(pt: dict, direction: str, gc: GpuCosts, bw: float, resend: bool) -> dict:
    """Seconds of one layer of the tick: the slowest rank's compute plus its exposed traffic."""
    n, tr, u = pt["n"], pt["tr"], unit_bytes(gc, direction, resend)
    disp_out, disp_in, ret_out, ret_in = (np.zeros(n) for _ in range(4))
    for src, dst, a, b, kind in ((tr.q_src, tr.q_dst, tr.q_start, tr.q_end, "q"),
                                 (tr.kv_src, tr.kv_dst, tr.kv_start, tr.kv_end, "kv")):
        remote = src != dst
        tok, s, d = (b - a)[remote].astype(np.float64), src[remote], dst[remote]
        disp_out += np.bincount(s, tok * u["disp_" + kind], minlength=n)
        disp_in += np.bincount(d, tok * u["disp_" + kind], minlength=n)
        ret_out += np.bincount(d, tok * u["ret_" + kind], minlength=n)
        ret_in += np.bincount(s, tok * u["ret_" + kind], minlength=n)
    comm = (np.maximum(disp_out, disp_in) + np.maximum(ret_out, ret_in)) / bw
    lin = pt["tokens"] * (gc.lin_fwd_tok if direction == "F" else gc.lin_bwd_tok)
    attn = pt["attn_" + direction]
    compute = lin + attn
    exposed = np.maximum(comm - compute, 0.0)
    return {"time": float((compute + exposed).max()),
            "balanced_time": float((lin + attn.mean()).max()),  # any attention balancer's floor
            "exposed_max": float(exposed.max()), "comm_max": float(comm.max()),
            "bytes_max": float((np.maximum(disp_out, disp_in) + np.maximum(ret_out, ret_in)).max())}


def cad_step(samples: list, p: int, gc: GpuCosts, bw: float, tolerance: float, block: int) -> dict:
    """Step time of CAD over the lock-step schedule. samples[d][j]: document lengths of
    pipeline d's micro-batch j; the group's rank of (stage s, pipeline d) is s * D + d.
    With p > 1 the backward resends (its tick pools other micro-batches than the forward's)."""
    from benchmarks.cad_sim_pipeline import lockstep_ticks

    D, m = len(samples), len(samples[0])
    layers = gc.shape.layers / p
    total = balanced = exposed = 0.0
    plans, plan_ms, imb_b, imb_a, byts, blocks = {}, [], [], [], [], []
    empty = np.zeros(0, dtype=np.int64)
    for direction, active in lockstep_ticks(p, m):
        key = tuple(active)
        if key not in plans:  # p = 1: a micro-batch's forward and backward pool the same work
            streams = [empty] * (p * D)
            for s, j in active:
                for d in range(D):
                    streams[s * D + d] = samples[d][j]
            plans[key] = plan_tick(streams, gc, tolerance, block)
            pt = plans[key]
            plan_ms.append(pt["plan_ms"])
            imb_b.append(pt["imbalance_before"])
            imb_a.append(pt["imbalance_after"])
            blocks.append(pt["block"])
        t = tick_layer_time(plans[key], direction, gc, bw, resend=p > 1)
        total += layers * t["time"]
        balanced += layers * t["balanced_time"]
        exposed += layers * t["exposed_max"]
        byts.append(t["bytes_max"])
    return {"step_s": total, "balanced_step_s": balanced, "exposed_comm_s": exposed,
            "plans": len(plans), "plan_ms_max": float(max(plan_ms)),
            "plan_ms_median": float(np.median(plan_ms)),
            "imbalance_before_mean": float(np.mean(imb_b)),
            "imbalance_after_max": float(max(imb_a)),
            "bytes_per_rank_layer_max": float(max(byts)), "block_min": float(min(blocks))}
