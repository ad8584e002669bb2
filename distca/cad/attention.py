"""`CADAttention`: the core-attention strategy that disaggregates attention (DistCA's idea).

Every rank of the CAD group (all DP x CP ranks of one tp/pp position) contributes its
shard's pieces; every rank plans the same step from the all-gathered metadata; q/k/v go
to attention servers in one all-to-all, o comes back in another. Plans and layouts are
computed once per micro-batch (per shard object) and reused by every layer.

Options (from `parallel.cad.*`):
  tolerance   servers end within (1 + tolerance) x the mean attention cost   (0.1)
  servers     0: every rank serves in place; K: K dedicated servers           (0)
  block       shard boundaries on multiples of this many tokens, at most      (128)
              (halved per step while one block would cost more than half the
              tolerance band: planner.fitting_block; the block used is a metric)
  ping_pong   two halves, one's communication overlapping the other's kernel (True)
  memory_cap  bytes a server may hold for attention inputs/outputs; None = no cap
  cost_table  "auto": the committed H100 measurement on a CUDA device, causal FLOPs
              elsewhere (at CPU test sizes the table's padded-tile price of short tasks
              leaves nothing worth moving); "h100", a JSON path, or None (FLOPs)  ("auto")
"""
from __future__ import annotations

import time
import weakref

import numpy as np
import torch.distributed as dist

from distca.cad.dispatch import build_layout, transfers
from distca.cad.metadata import gather_pieces
from distca.cad.pingpong import CADFunction, StepRuntime
from distca.cad.planner import fitting_block, plan, split_halves
from distca.cad.tasks import CostModel

DEFAULTS = {"tolerance": 0.1, "servers": 0, "block": 128, "ping_pong": True,
            "memory_cap": None, "cost_table": "auto"}


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

    def __init__(self, shard, pieces, transfers, metrics, totals):
        self.shard_ref = weakref.ref(shard)   # identity, not equality: a new shard replans
        self.pieces = pieces
        self.transfers = transfers            # one Transfers per ping-pong half
        self.layouts = {}                     # {(hq, hkv, head_dim, device): [Layout per half]}
        self.metrics = metrics                # this micro-batch's plan, as logged
        self.totals = totals                  # the sums step metrics are built from


def step_metrics(totals: list[dict]) -> dict:
    """One optimizer step's CAD metrics from its micro-batches' plans. Micro-batches run one
    after another, so a step's attention time follows the sum over micro-batches of the
    busiest rank's load: imbalance is that sum over the sum of the mean loads; bytes, moved
    queries and planning time add up; moved work is a share of the step's attention cost."""
    if not totals:
        return {}
    add = lambda key: float(sum(t[key] for t in totals))  # noqa: E731
    ratio = lambda a, b: add(a) / add(b) if add(b) > 0 else 1.0  # noqa: E731
    return {"cad_imbalance_before": ratio("max_before", "mean_before"),
            "cad_imbalance_after": ratio("max_after", "mean_after"),
            "cad_bytes": add("bytes"),
            "cad_moved_work": ratio("moved_cost", "cost"),
            "cad_moved_queries": add("moved_queries"),
            "cad_block": float(min(t["block"] for t in totals)),
            "cad_plan_ms": add("plan_ms")}


class CADAttention:
    layout = "contiguous"  # any layout works (CAD reads the shard's pieces); this one is cheapest

    def __init__(self, state, options: dict | None = None):
        self.state = state
        self.group = getattr(state, "dpcp_group", None) if dist.is_initialized() else None
        self.size = dist.get_world_size(self.group) if self.group is not None else 1
        self.rank = dist.get_rank(self.group) if self.group is not None else 0
        self.dp_rank = getattr(state, "dp_rank", 0) if state is not None else 0
        self.options = _check_options(dict(options or {}), self.size)
        self.last_metrics: dict = {}   # the newest micro-batch's plan
        self._steps: list[_Step] = []
        self._since_step: list[dict] = []  # plans made since the last step_metrics()

    def step_metrics(self) -> dict:
        """CAD metrics of every micro-batch planned since the last call (one optimizer step),
        then starts over. Keys: cad_imbalance_before / _after (max over mean attention cost,
        over every rank before planning and over the servers after), cad_bytes (bytes
        crossing ranks in one softmax layer's forward + backward, whole group), cad_moved_work
        (share of the attention cost run off the rank that owns its queries), cad_moved_queries
        (query tokens run off their rank, per layer), cad_block (the cut block used; smaller
        than parallel.cad.block when pieces are too short for it), cad_plan_ms."""
        out = step_metrics(self._since_step)
        self._since_step = []
        return out

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
            self._since_step.append(step.totals)
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
        table = o["cost_table"]
        if table == "auto":
            table = "h100" if q.is_cuda else None
        cm = CostModel(q.shape[1], k.shape[1], q.shape[2], q.element_size(), table=table)
        t0 = time.perf_counter()
        tasks = pieces.tasks()
        num_servers = int(o["servers"]) or self.size
        block = fitting_block(tasks, num_servers, int(o["block"]), float(o["tolerance"]))
        p = plan(tasks, self.size, cm, tolerance=float(o["tolerance"]), block=block,
                 servers=int(o["servers"]), memory_cap=o["memory_cap"])
        if o["ping_pong"]:
            half = split_halves(p, cm, block)
            groups = [np.nonzero(half == h)[0] for h in (0, 1)]
        else:
            groups = [np.arange(len(p.parts))]
        plan_ms = (time.perf_counter() - t0) * 1e3
        halves = [transfers(p.parts.take(g), p.server[g], pieces) for g in groups]
        moved = p.server != p.parts.owner
        after = p.load_after[p.servers]
        totals = {"max_before": float(p.load_before.max(initial=0.0)),
                  "mean_before": float(p.load_before.mean()) if p.load_before.size else 0.0,
                  "max_after": float(after.max(initial=0.0)),
                  "mean_after": float(after.mean()) if after.size else 0.0,
                  "bytes": float(sum(tr.remote_bytes(cm) for tr in halves)),
                  "cost": float(p.cost.sum()), "moved_cost": float(p.cost[moved].sum()),
                  "moved_queries": float(p.parts.q_len[moved].sum()), "block": block,
                  "plan_ms": plan_ms}
        return _Step(shard, pieces, halves, step_metrics([totals]), totals)
