"""`CADAttention`: the core-attention strategy that disaggregates attention (DistCA's idea).

Every rank of the CAD group (all DP x CP ranks of one tp/pp position) contributes its
shard's pieces; every rank plans the same step from the all-gathered metadata; q/k/v go
to attention servers in one all-to-all, o comes back in another. Plans and layouts are
computed once per micro-batch (per shard object) and reused by every layer.

Options (from `parallel.cad.*`):
  tolerance   servers end within (1 + tolerance) x the mean attention cost   (0.1)
  servers     0: every rank serves in place; K: K dedicated servers           (0)
  block       shard boundaries on multiples of this many tokens               (128)
  ping_pong   two halves, one's communication overlapping the other's kernel (True)
  memory_cap  bytes a server may hold for attention inputs/outputs; None = no cap
  cost_table  "h100" (the committed measurement), a JSON path, or None (causal FLOPs)
"""
from __future__ import annotations

import time
import weakref

import numpy as np
import torch
import torch.distributed as dist

from distca.cad.dispatch import build_layout, transfers
from distca.cad.metadata import gather_pieces
from distca.cad.pingpong import CADFunction, StepRuntime
from distca.cad.planner import plan, split_halves
from distca.cad.tasks import CostModel

DEFAULTS = {"tolerance": 0.1, "servers": 0, "block": 128, "ping_pong": True,
            "memory_cap": None, "cost_table": "h100"}


def _check_options(options: dict, group_size: int) -> dict:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"CAD options {sorted(unknown)} are unknown; use {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None or k == "memory_cap"}}
    if not isinstance(o["tolerance"], (int, float)) or o["tolerance"] < 0:
        raise ValueError(f"parallel.cad.tolerance={o['tolerance']!r} must be a number >= 0")
    if isinstance(o["block"], bool) or int(o["block"]) != o["block"] or o["block"] < 1:
        raise ValueError(f"parallel.cad.block={o['block']!r} must be a positive integer (e.g. 128)")
    s = o["servers"]
    if isinstance(s, bool) or int(s) != s or not 0 <= s <= group_size:
        raise ValueError(f"parallel.cad.servers={s!r} must be an integer in [0, {group_size}] "
                         "(0 = every rank serves in place)")
    if not isinstance(o["ping_pong"], bool):
        raise ValueError(f"parallel.cad.ping_pong={o['ping_pong']!r} must be true or false")
    if o["memory_cap"] is not None and not o["memory_cap"] > 0:
        raise ValueError(f"parallel.cad.memory_cap={o['memory_cap']!r} must be > 0 bytes or null")
    return o


# Plans kept per strategy: the current micro-batch and a few before it, so schedules that
# come back to an earlier micro-batch (activation recompute, pipeline 1F1B) do not replan.
# Every rank sees the same sequence of shards, so hits and misses (a miss all-gathers) agree.
CACHED_STEPS = 4


class _Step:
    """Everything planned for one micro-batch (one shard object)."""

    def __init__(self, shard, pieces, transfers, metrics):
        self.shard_ref = weakref.ref(shard)   # identity, not equality: a new shard replans
        self.pieces = pieces
        self.transfers = transfers            # one Transfers per ping-pong half
        self.layouts = {}                     # {(hq, hkv, head_dim, device): [Layout per half]}
        self.metrics = metrics


class CADAttention:
    layout = "contiguous"  # any layout works (CAD reads the shard's pieces); this one is cheapest

    def __init__(self, state, options: dict | None = None):
        self.state = state
        self.group = getattr(state, "dpcp_group", None) if dist.is_initialized() else None
        self.size = dist.get_world_size(self.group) if self.group is not None else 1
        self.rank = dist.get_rank(self.group) if self.group is not None else 0
        self.dp_rank = getattr(state, "dp_rank", 0) if state is not None else 0
        self.options = _check_options(dict(options or {}), self.size)
        self.last_metrics: dict = {}
        self._steps: list[_Step] = []

    def __call__(self, q, k, v, shard, softmax_scale: float):
        if q.shape[0] != shard.num_tokens or k.shape[0] != shard.num_tokens:
            raise ValueError(f"CAD: q has {q.shape[0]} and k {k.shape[0]} tokens but the shard "
                             f"holds {shard.num_tokens}; pass tensors in the shard's local order")
        layouts = self._layouts(q, k, shard)
        return CADFunction.apply(q, k, v, StepRuntime(layouts, self.group, softmax_scale))

    # ---- planning (once per shard) ---------------------------------------------------------
    def _layouts(self, q, k, shard):
        step = next((st for st in self._steps if st.shard_ref() is shard), None)
        if step is None:
            step = self._plan_step(q, k, shard)
            self._steps = [step] + self._steps[:CACHED_STEPS - 1]
            self.last_metrics = step.metrics
        key = (q.shape[1], k.shape[1], q.shape[2], str(q.device))
        if key not in step.layouts:
            step.layouts[key] = [
                build_layout(tr, step.pieces, self.rank, self.size, shard.num_tokens,
                             q.shape[1], k.shape[1], q.device)
                for tr in step.transfers]
        return step.layouts[key]

    def _plan_step(self, q, k, shard) -> _Step:
        o = self.options
        pieces = gather_pieces(shard, self.dp_rank, self.group, q.device)
        cm = CostModel(q.shape[1], k.shape[1], q.shape[2], q.element_size(), table=o["cost_table"])
        t0 = time.perf_counter()
        p = plan(pieces.tasks(), self.size, cm, tolerance=float(o["tolerance"]),
                 block=int(o["block"]), servers=int(o["servers"]), memory_cap=o["memory_cap"])
        if o["ping_pong"]:
            half = split_halves(p, cm, int(o["block"]))
            groups = [np.nonzero(half == h)[0] for h in (0, 1)]
        else:
            groups = [np.arange(len(p.parts))]
        plan_ms = (time.perf_counter() - t0) * 1e3
        halves = [transfers(p.parts.take(g), p.server[g], pieces) for g in groups]
        # imbalance: max/mean attention cost over ranks (servers, after); bytes: what crosses
        # between ranks in one softmax layer's forward and backward, summed over the group
        metrics = {"cad_imbalance_before": p.imbalance_before,
                   "cad_imbalance_after": p.imbalance_after,
                   "cad_bytes": float(sum(tr.remote_bytes(cm) for tr in halves)),
                   "cad_plan_ms": plan_ms}
        return _Step(shard, pieces, halves, metrics)
