"""`CADAttention`: the core-attention strategy that disaggregates attention (DistCA's idea).

Every rank of the CAD group (all DP x CP ranks of one tp/pp position) contributes its
shard's pieces; every rank plans the same step from the all-gathered metadata; q/k/v go
to attention servers in one all-to-all, o comes back in another. Plans and layouts are
computed once per micro-batch (per shard object) and reused by every layer.

Options: `parallel.config.CADConfig` (`parallel.cad.*`), checked by `check_cad_config`:
  tolerance   servers end within (1 + tolerance) x the mean attention cost
  servers     0: every rank serves in place; K: K dedicated servers
  block       cuts on multiples of this many tokens, at most (halved per step while one
              block would cost more than half the tolerance band: planner.fitting_block;
              the block used is the cad_block metric)
  ping_pong   two halves, one's communication overlapping the other's kernel
  memory_cap  bytes a server may hold for attention inputs/outputs; None = no cap
  cost_table  "auto": the committed H100 measurement on a CUDA device, causal FLOPs
              elsewhere (at CPU test sizes the table's padded-tile price of short tasks
              leaves nothing worth moving); "h100", "none" (FLOPs), or a JSON path
  backward    "stateful": servers keep what they received until the backward; "resend":
              servers keep nothing, origins resend it (parallel/cad/pingpong.py)
  overlap     "halves" (with ping_pong): two halves of the tasks inside one call; "none";
              "nanobatch": the model runs two nano-batches of documents in phases
              (start / serve / collect, parallel/cad/nanobatch.py) around each other's work
  pool        K > 0: the last K ranks of the group are a dedicated attention pool (no
              weights, no tokens of their own: parallel/cad/pool.py) and the only servers
"""
from __future__ import annotations

import os
import time
import weakref

import numpy as np
import torch
import torch.distributed as dist

from parallel.cad.dispatch import build_layout, transfers
from parallel.cad.metadata import gather_pieces
from parallel.cad.nanobatch import (NanoCall, NanoCollect, NanoServe, NanoStart, nano_rows,
                                    split_documents, sub_pieces)
from parallel.cad.pingpong import CADFunction, StepRuntime
from parallel.cad.planner import fitting_block, plan, server_memory, split_halves
from parallel.cad.tasks import TABLES, CostModel, table_for_device
from parallel.config import CADConfig
from parallel.context.strategy import Strategy

COST_TABLES = ("auto", "h100", "h200", "none")


def check_cad_config(c: CADConfig, group_size: int) -> None:
    """Errors name the field (parallel.cad.*) and the fix; the plan calls this at config time."""
    if isinstance(c.tolerance, bool) or not isinstance(c.tolerance, (int, float)) or c.tolerance < 0:
        raise ValueError(f"parallel.cad.tolerance={c.tolerance!r} must be a number >= 0 "
                         "(0.02: servers within 2% of the mean)")
    if isinstance(c.block, bool) or not isinstance(c.block, int) or c.block < 1:
        raise ValueError(f"parallel.cad.block={c.block!r} must be a positive integer (e.g. 128)")
    s = c.servers
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= group_size:
        raise ValueError(f"parallel.cad.servers={s!r} must be an integer in [0, {group_size}] (the CAD "
                         "group is parallel.dp x parallel.cp ranks; 0 = every rank serves in place)")
    if not isinstance(c.ping_pong, bool):
        raise ValueError(f"parallel.cad.ping_pong={c.ping_pong!r} must be true or false")
    if c.memory_cap is not None and (isinstance(c.memory_cap, bool) or not c.memory_cap > 0):
        raise ValueError(f"parallel.cad.memory_cap={c.memory_cap!r} must be > 0 bytes, or null for no cap")
    if c.overlap not in ("none", "halves", "nanobatch"):
        raise ValueError(f"parallel.cad.overlap={c.overlap!r} must be none, halves or nanobatch")
    p = c.pool
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise ValueError(f"parallel.cad.pool={p!r} must be an integer >= 0 (0: no dedicated pool)")
    if p and s:
        raise ValueError(f"parallel.cad.pool={p} and parallel.cad.servers={s}: the pool's ranks are "
                         "the servers; set parallel.cad.servers=0 with a pool, or parallel.cad.pool=0")
    if c.pipeline not in ("stage", "joint"):
        raise ValueError(f"parallel.cad.pipeline={c.pipeline!r} must be stage or joint")
    if c.backward not in ("stateful", "resend"):
        raise ValueError(f"parallel.cad.backward={c.backward!r} must be stateful or resend")
    t = c.cost_table
    if not isinstance(t, str) or (t not in COST_TABLES and not os.path.isfile(t)):
        raise ValueError(f"parallel.cad.cost_table={t!r} must be one of {COST_TABLES} or the path of a "
                         "JSON table written by benchmarks/profile_attention_cost.py")
    if t in TABLES and not os.path.isfile(TABLES[t]):  # else the plan would silently use FLOPs
        raise ValueError(f"parallel.cad.cost_table={t}: {os.path.relpath(TABLES[t])} is not committed "
                         "yet; measure it with benchmarks/profile_attention_cost.py on that GPU, or "
                         "use auto")


# Plans kept per strategy: the current micro-batch and those before it that a schedule may
# come back to (activation recompute; a pipeline keeps up to pp x pp_virtual micro-batches in
# flight), so they do not replan.
# Every rank sees the same sequence of shards, so hits and misses (a miss all-gathers) agree.
CACHED_STEPS = 16


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
            "cad_server_bytes": float(max(t["server_bytes"] for t in totals)),
            "cad_plan_ms": add("plan_ms")}


class CADAttention(Strategy):
    default_layout = "contiguous"  # any layout works (CAD reads the shard's pieces); cheapest

    def __init__(self, group=None, dp_rank: int = 0, options: CADConfig | None = None):
        self.group = group      # the CAD group: every DP x CP rank of one (tp, pp) position
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.dp_rank = dp_rank  # which micro-batch stream this rank's shard belongs to
        self.options = options if options is not None else CADConfig()
        check_cad_config(self.options, self.size - self.options.pool)
        # who serves: the pool (the group's last ranks), or servers=K spread over the group
        pool = self.options.pool
        self.servers = np.arange(self.size - pool, self.size) if pool else self.options.servers
        self.num_servers = pool or self.options.servers or self.size
        self._tick: dict | None = None  # pipeline=joint: the current lock-step tick's plan
        self._silent = False
        self.last_metrics: dict = {}   # the newest micro-batch's plan
        self._steps: list[_Step] = []
        self._since_step: list[dict] = []  # plans made since the last step_metrics()
        self._cost_models: dict = {}

    def step_metrics(self) -> dict:
        """CAD metrics of every micro-batch planned since the last call (one optimizer step),
        then starts over. Keys: cad_imbalance_before / _after (max over mean attention cost,
        over every rank before planning and over the servers after), cad_bytes (bytes
        crossing ranks in one softmax layer's forward + backward, whole group), cad_moved_work
        (share of the attention cost run off the rank that owns its queries), cad_moved_queries
        (query tokens run off their rank, per layer), cad_block (the cut block used; smaller
        than parallel.cad.block when pieces are too short for it), cad_server_bytes (the most
        any server holds for its tasks in one layer: what parallel.cad.memory_cap bounds),
        cad_plan_ms."""
        out = step_metrics(self._since_step)
        self._since_step = []
        return out

    def __call__(self, q, k, v, shard, softmax_scale: float):
        if q.shape[0] != shard.num_tokens or k.shape[0] != shard.num_tokens:
            raise ValueError(f"CAD: q has {q.shape[0]} and k {k.shape[0]} tokens but the shard "
                             f"holds {shard.num_tokens}; pass tensors in the shard's local order")
        if self._tick is not None:  # pooled across pipeline stages: the tick's plan, both ways
            key = (q.shape[1], k.shape[1], q.shape[2], q.element_size(), q.is_cuda, str(q.device))
            now = lambda: self._tick_layouts(key)  # noqa: E731  (resolved when the backward runs)
            rt = StepRuntime(None if self._silent else now(), self.group, softmax_scale, resend=True,
                             backward_layouts=now, silent=self._silent)
            return CADFunction.apply(q, k, v, rt)
        layouts = self._layouts(q, k, shard)
        return CADFunction.apply(q, k, v, StepRuntime(layouts, self.group, softmax_scale,
                                                      resend=self.options.backward == "resend"))

    # ---- pooled across pipeline stages (pipeline=joint): the stage drives the ticks -------
    def begin_tick(self, shard, device, forward: bool) -> None:
        """A lock-step tick starts: every rank of the group (all stages) shares the shard it
        runs in this tick (an empty one when idle) and the tick is planned over all of them.
        Collective. Forward ticks' plans feed the step metrics (backward ticks replan the same
        micro-batches in other company; their planning time is counted)."""
        self._tick = {"pieces": gather_pieces(shard, self.dp_rank, self.group, device),
                      "tokens": shard.num_tokens, "layouts": {}, "plan": None, "forward": forward}

    def end_ticks(self) -> None:
        self._tick = None

    def silent(self):
        """An idle stage's dummy forward in a backward tick: CAD calls exchange nothing (their
        backward, run by the tick's peers at the same time, serves the tick's tasks)."""
        cad = self

        class _Silent:
            def __enter__(self):
                cad._silent = True

            def __exit__(self, *exc):
                cad._silent = False
        return _Silent()

    def _tick_layouts(self, key) -> list:
        tick = self._tick
        if key not in tick["layouts"]:
            hq, hkv, d, elem, cuda, device = key
            if tick["plan"] is None:
                tick["plan"] = self._plan_pieces(tick["pieces"], hq, hkv, d, elem, cuda)
                cm, halves, totals = tick["plan"]
                if tick["forward"]:
                    self._since_step.append(totals)
                else:  # only its planning time: the micro-batches were counted forward
                    self._since_step.append({**{k: 0.0 for k in totals}, "block": totals["block"],
                                             "plan_ms": totals["plan_ms"]})
                self.last_metrics = step_metrics([totals])
            _, halves, _ = tick["plan"]
            layouts = []
            for tr in halves:
                layouts.append(build_layout(tr, tick["pieces"], self.rank, self.size, tick["tokens"],
                                            hq, hkv, torch.device(device),
                                            prior=layouts[-1] if layouts else None))
            tick["layouts"][key] = layouts
        return tick["layouts"][key]

    # ---- nano-batches (overlap=nanobatch): the model calls these instead of __call__ --------
    def nano_rows(self, shard, device):
        """(rows of nano-batch 0, rows of nano-batch 1) in this rank's local order, or None
        when the model should make one ordinary call (overlap is not nanobatch, or a side
        has no tokens anywhere in the group: one document)."""
        if self.options.overlap != "nanobatch":
            return None
        return self._nano(shard, device)["rows"]

    def start(self, q, k, v, shard, nano: int, softmax_scale: float):
        """Post nano-batch `nano`'s q/k/v all-to-all; returns its handle for serve/collect."""
        st = self._nano(shard, q.device)
        key = (q.shape[1], k.shape[1], q.shape[2], str(q.device))
        if key not in st["layouts"]:
            st["layouts"][key] = self._plan_nano(st, q, k)
        call = NanoCall(st["layouts"][key][nano], self.group, softmax_scale,
                        resend=self.options.backward == "resend")
        return (NanoStart.apply(q, k, v, call), call, (q, k, v))

    def serve(self, handle):
        """Wait for the dispatch, run the kernel, post the o return."""
        edge, call, qkv = handle
        return (NanoServe.apply(edge, call), call, qkv)

    def collect(self, handle):
        """Wait for o: [T_nano, Hq, D]."""
        edge, call, qkv = handle
        return NanoCollect.apply(edge, *qkv, call)

    def _nano(self, shard, device) -> dict:
        def build():  # collective (metadata all-gather): every rank reaches it at the same layer
            pieces = gather_pieces(shard, self.dp_rank, self.group, device)
            side = split_documents(pieces)
            rows = None
            if (side == 0).any() and (side == 1).any():
                rows = tuple(torch.from_numpy(nano_rows(pieces, side == s, self.rank)).to(device)
                             for s in (0, 1))
            return {"pieces": pieces, "side": side, "rows": rows, "layouts": {}}
        return shard.memo(("cad_nano", id(self)), build)

    def _plan_nano(self, st, q, k) -> list:
        layouts = []
        for s in (0, 1):
            sub, _ = sub_pieces(st["pieces"], st["side"] == s)
            _, (tr,), totals = self._plan_pieces(sub, q.shape[1], k.shape[1], q.shape[2], q.element_size(),
                                                 q.is_cuda, halves=False)
            mine = int(sub.length[sub.rank == self.rank].sum())
            layouts.append(build_layout(tr, sub, self.rank, self.size, mine, q.shape[1], k.shape[1],
                                        q.device))
            self._since_step.append(totals)
        self.last_metrics = step_metrics(self._since_step[-2:])
        return layouts

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
            layouts = []
            for tr in step.transfers:  # a later half reads the keys earlier halves received
                layouts.append(build_layout(tr, step.pieces, self.rank, self.size, shard.num_tokens,
                                            q.shape[1], k.shape[1], q.device,
                                            prior=layouts[-1] if layouts else None))
            step.layouts[key] = layouts
        return step.layouts[key]

    def _plan_step(self, q, k, shard) -> _Step:
        pieces = gather_pieces(shard, self.dp_rank, self.group, q.device)
        cm, halves, totals = self._plan_pieces(pieces, q.shape[1], k.shape[1], q.shape[2],
                                               q.element_size(), q.is_cuda)
        return _Step(shard, pieces, halves, step_metrics([totals]), totals)

    def _cost_model(self, hq: int, hkv: int, d: int, elem: int, cuda: bool) -> CostModel:
        """Built once per shape: the table is read from disk and prepared only then, not in
        every micro-batch's plan."""
        key = (hq, hkv, d, elem, cuda)
        if key not in self._cost_models:
            o = self.options
            auto = table_for_device(torch.cuda.get_device_name()) if cuda else None
            table = {"auto": auto, "none": None}.get(o.cost_table, o.cost_table)
            self._cost_models[key] = CostModel(hq, hkv, d, elem, table=table)
        return self._cost_models[key]

    def _plan_pieces(self, pieces, hq: int, hkv: int, d: int, elem: int, cuda: bool, halves: bool = True):
        """(cost model, Transfers per half, totals) of one plan over the group's pieces (one
        part unless halves and ping_pong, overlap not none)."""
        o = self.options
        cm = self._cost_model(hq, hkv, d, elem, cuda)
        t0 = time.perf_counter()
        tasks = pieces.tasks()
        block = fitting_block(tasks, self.num_servers, o.block, float(o.tolerance))
        p = plan(tasks, self.size, cm, tolerance=float(o.tolerance), block=block,
                 servers=self.servers, memory_cap=o.memory_cap)
        # nanobatch's plain calls (a micro-batch that is one document) still split in halves
        if halves and o.ping_pong and o.overlap != "none":
            half = split_halves(p, cm, block)
            groups = [np.nonzero(half == h)[0] for h in (0, 1)]
        else:
            groups = [np.arange(len(p.parts))]
        parts = []
        for g in groups:  # keys go to a server once per step: a later half skips what it holds
            parts.append(transfers(p.parts.take(g), p.server[g], pieces,
                                   held=parts[-1] if parts else None))
        return cm, parts, _totals(p, parts, cm, block, self.size, o, t0)


def _totals(p, halves, cm, block, size, o, t0) -> dict:
    """One plan's sums, what step metrics are built from."""
    plan_ms = (time.perf_counter() - t0) * 1e3
    moved = p.server != p.parts.owner
    after = p.load_after[p.servers]
    before = p.load_before[:size - o.pool]  # the ranks that own tokens (a pool owns none)
    return {"max_before": float(before.max(initial=0.0)),
            "mean_before": float(before.mean()) if before.size else 0.0,
            "max_after": float(after.max(initial=0.0)),
            "mean_after": float(after.mean()) if after.size else 0.0,
            "bytes": float(sum(tr.remote_bytes(cm, o.backward == "resend") for tr in halves)),
            "cost": float(p.cost.sum()), "moved_cost": float(p.cost[moved].sum()),
            "moved_queries": float(p.parts.q_len[moved].sum()), "block": block,
            "server_bytes": float(server_memory(p.parts, p.server, size, cm).max(initial=0.0)),
            "plan_ms": plan_ms}
