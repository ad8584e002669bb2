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
  overlap     "auto": per micro-batch, the cheapest of the others by a cost model of its plan
              (parallel/cad/overlap_choice.py; metric cad_overlap); "halves" (with ping_pong):
              two halves of the tasks inside one call; "none"; "nanobatch": the model runs two
              nano-batches of documents in phases (start / serve / collect,
              parallel/cad/nanobatch.py) around each other's work
  link_gbps   the link speed auto prices the exchange at (0: measured once)
  pool        K > 0: the last K ranks of the group are a dedicated attention pool (no
              weights, no tokens of their own: parallel/cad/pool.py) and the only servers
"""
from __future__ import annotations

import os
from concurrent.futures import Future

import numpy as np
import torch
import torch.distributed as dist

from parallel.cad import overlap_choice
from parallel.cad.dispatch import Exchange
from parallel.cad.in_place import InPlaceAttention
from parallel.cad.metadata import gather_payloads, gather_pieces, payload
from parallel.cad.micro_plan import MicroBatchPlan, Planner, Shape, ShapePlan
from parallel.cad.nanobatch import NanoCall, NanoCollect, NanoServe, NanoStart
from parallel.cad.pingpong import CADFunction, StepRuntime
from parallel.cad.plan_ahead import PlanAhead
from parallel.cad.tasks import TABLES
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
    if c.overlap not in ("auto", "none", "halves", "nanobatch"):
        raise ValueError(f"parallel.cad.overlap={c.overlap!r} must be auto, none, halves or nanobatch")
    g = c.link_gbps
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0:
        raise ValueError(f"parallel.cad.link_gbps={g!r} must be a number >= 0 (GB/s per rank and "
                         "direction that overlap=auto prices the exchange at; 0: measure it)")
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


def step_metrics(totals: list[dict], overlaps: list[int] | None = None) -> dict:
    """One optimizer step's CAD metrics from its micro-batches' plans. Micro-batches run one
    after another, so a step's attention time follows the sum over micro-batches of the
    busiest rank's load: imbalance is that sum over the sum of the mean loads; bytes, moved
    queries and planning time add up; moved work is a share of the step's attention cost;
    cad_overlap is the mean over micro-batches of the mode run (0 none, 1 halves, 2 nanobatch)."""
    if not totals:
        return {}
    add = lambda key: float(sum(t[key] for t in totals))  # noqa: E731
    ratio = lambda a, b: add(a) / add(b) if add(b) > 0 else 1.0  # noqa: E731
    out = {"cad_imbalance_before": ratio("max_before", "mean_before"),
           "cad_imbalance_after": ratio("max_after", "mean_after"),
           "cad_bytes": add("bytes"),
           "cad_moved_work": ratio("moved_cost", "cost"),
           "cad_moved_queries": add("moved_queries"),
           "cad_block": float(min(t["block"] for t in totals)),
           "cad_server_bytes": float(max(t["server_bytes"] for t in totals)),
           "cad_plan_ms": add("plan_ms")}
    if overlaps:
        out["cad_overlap"] = float(np.mean(overlaps))
    return out


def _done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class CADAttention(Strategy):
    """CAD's core-attention strategy. Besides the plain call (`__call__`) it implements the
    nano-batch interface the model declares (distca/model/nano_batches.py: NanoBatchAttention:
    `nano_rows`, `start`, `serve`, `collect`) and `plan_ahead`.

    `exchange`: the all-to-all in flight every CAD call builds (dispatch.Exchange); a measuring
    tool may pass another with its interface. `meta_group`: a CPU (gloo) twin of `group` over
    which `plan_ahead` all-gathers metadata from its background thread (without one, the
    all-gather runs on the calling thread)."""
    default_layout = "contiguous"  # any layout works (CAD reads the shard's pieces); cheapest

    def __init__(self, group=None, dp_rank: int = 0, options: CADConfig | None = None,
                 exchange=Exchange, meta_group=None):
        self.group = group      # the CAD group: every DP x CP rank of one (tp, pp) position
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.dp_rank = dp_rank  # which micro-batch stream this rank's shard belongs to
        self.options = options if options is not None else CADConfig()
        check_cad_config(self.options, self.size - self.options.pool)
        self.exchange = exchange
        self.meta_group = meta_group
        self.planner = Planner(self.options, self.rank, self.size)
        self._tick: dict | None = None  # pipeline=joint: the current lock-step tick's plan
        self._silent = False
        self.last_metrics: dict = {}   # the newest micro-batch's plan
        self._since_step: list[dict] = []  # plans run since the last step_metrics()
        self._overlaps: list[int] = []     # the mode of every micro-batch run since then
        self._shape: Shape | None = None   # the latest layer's shapes: what plan_ahead plans for
        self._layer = None                 # ... and the model's description of it
        self._worker: PlanAhead | None = None
        # this strategy's key in a shard's memo: an object, not id(self), which a strategy made
        # after this one is freed may get again (and find a plan that is not its own on some ranks)
        self._memo_key = ("cad", object())

    @property
    def servers(self):
        return self.planner.servers

    @property
    def num_servers(self) -> int:
        return self.planner.num_servers

    def step_metrics(self) -> dict:
        """CAD metrics of every micro-batch run since the last call (one optimizer step),
        then starts over. Keys: cad_imbalance_before / _after (max over mean attention cost,
        over every rank before planning and over the servers after), cad_bytes (bytes
        crossing ranks in one softmax layer's forward + backward, whole group), cad_moved_work
        (share of the attention cost run off the rank that owns its queries), cad_moved_queries
        (query tokens run off their rank, per layer), cad_block (the cut block used; smaller
        than parallel.cad.block when pieces are too short for it), cad_server_bytes (the most
        any server holds for its tasks in one layer: what parallel.cad.memory_cap bounds),
        cad_plan_ms, cad_overlap (the mode run: 0 none, 1 halves, 2 nanobatch; the mean over
        the step's micro-batches)."""
        out = step_metrics(self._since_step, self._overlaps)
        self._since_step, self._overlaps = [], []
        return out

    def __call__(self, q, k, v, shard, softmax_scale: float):
        if q.shape[0] != shard.num_tokens or k.shape[0] != shard.num_tokens:
            raise ValueError(f"CAD: q has {q.shape[0]} and k {k.shape[0]} tokens but the shard "
                             f"holds {shard.num_tokens}; pass tensors in the shard's local order")
        if self._tick is not None:  # pooled across pipeline stages: the tick's plan, both ways
            key = (q.shape[1], k.shape[1], q.shape[2], q.element_size(), q.is_cuda, str(q.device))
            now = lambda: self._tick_layouts(key)  # noqa: E731  (resolved when the backward runs)
            rt = StepRuntime(None if self._silent else now(), self.group, softmax_scale, resend=True,
                             backward_layouts=now, silent=self._silent, exchange=self.exchange)
            return CADFunction.apply(q, k, v, rt)
        part = self._whole(q, k, shard)
        if part.in_place:  # the plan moves nothing: no exchange at all
            return InPlaceAttention.apply(q, k, v, part.on(q.device), softmax_scale)
        return CADFunction.apply(q, k, v, StepRuntime(part.on(q.device), self.group, softmax_scale,
                                                      resend=self.options.backward == "resend",
                                                      exchange=self.exchange))

    # ---- planning ahead --------------------------------------------------------------------
    def plan_ahead(self, shard) -> None:
        """Start planning this micro-batch in the background (for the shapes of the latest
        layer; the first micro-batch of a run plans where it runs). Every rank of the group
        must call it for the same micro-batches in the same order, from one thread."""
        if self.options.pipeline == "joint" or self._shape is None:
            return
        shard.memo(self._memo_key, lambda: self._submit(shard))

    def _submit(self, shard) -> Future:
        device = shard.index.device
        self._link(device)  # a measured link speed is agreed now, on this thread's group
        shape, layer, mine = self._shape, self._layer, payload(shard, self.dp_rank)
        if self.size > 1 and self.meta_group is None:  # no twin group: gather here and now
            pieces = gather_payloads(mine, self.group, device)
            gather = lambda: pieces  # noqa: E731
        else:
            gather = lambda: gather_payloads(mine, self.meta_group, torch.device("cpu"))  # noqa: E731

        def job():
            pieces = gather()
            return MicroBatchPlan(pieces, {shape: self.planner.plan(pieces, shape, layer)})
        if self._worker is None:
            self._worker = PlanAhead()
        return self._worker.submit(job)

    # ---- one micro-batch's plans -----------------------------------------------------------
    def _micro_batch(self, shard, device) -> MicroBatchPlan:
        """Planned ahead (waits for it), or the pieces gathered now (collective: every rank
        reaches the first layer of a micro-batch together)."""
        fut = shard.memo(self._memo_key, lambda: _done(MicroBatchPlan(
            gather_pieces(shard, self.dp_rank, self.group, device))))
        return fut.result()

    def _shape_plan(self, shard, device, shape: Shape, layer=None) -> tuple[MicroBatchPlan, ShapePlan]:
        mb = self._micro_batch(shard, device)
        if shape not in mb.shapes:
            self._link(device)
            mb.shapes[shape] = self.planner.plan(mb.pieces, shape, layer)
        return mb, mb.shapes[shape]

    def _link(self, device) -> None:
        """The link speed auto prices the exchange at: parallel.cad.link_gbps (per direction,
        so sent + received move at twice it), or measured once over the group (collective)."""
        if self.planner.link_rate is not None or str(self.options.overlap) != "auto":
            return
        gbps = float(self.options.link_gbps)
        if gbps > 0:
            self.planner.link_rate = 2 * gbps * 1e9
        elif self.size > 1:
            self.planner.link_rate = overlap_choice.measure_link(self.group, device)

    def _whole(self, q, k, shard):
        """The plain call's plan for this shard and shape (made now if no plan has it)."""
        shape = Shape(q.shape[1], k.shape[1], q.shape[2], q.element_size(), q.is_cuda)
        if shape != self._shape:
            self._shape, self._layer = shape, None
        mb, sp = self._shape_plan(shard, q.device, shape)
        if sp.whole is None:  # nano-batches were planned, but this call is a plain one
            sp.whole = self.planner.whole(mb.pieces, shape)
        self._count(sp, "whole")
        return sp.whole

    def _layouts(self, q, k, shard) -> list:
        """This rank's layouts of the plain call (one per half; the InPlace alone when the plan
        moves nothing)."""
        part = self._whole(q, k, shard)
        return [part.on(q.device)] if part.in_place else part.on(q.device)

    def _count(self, sp: ShapePlan, which: str) -> None:
        """A plan's totals go into the step metrics when it first runs (not again when
        activation recompute runs it a second time)."""
        if which in sp.counted:
            return
        sp.counted.add(which)
        if which == "whole":
            totals = [sp.whole.totals]
            mode = "halves" if len(sp.whole.transfers) == 2 else "none"
        else:
            totals = [p.totals for p in sp.nano.parts]
            mode = "nanobatch"
        if sp.decide_ms:
            totals[0] = {**totals[0], "plan_ms": totals[0]["plan_ms"] + sp.decide_ms}
        self._since_step += totals
        self._overlaps.append(overlap_choice.CODES[mode])
        self.last_metrics = step_metrics(totals, [overlap_choice.CODES[mode]])

    # ---- nano-batches (the model's NanoBatchAttention interface) ----------------------------
    def nano_rows(self, shard, device, layer):
        """(rows of nano-batch 0, rows of nano-batch 1) in this rank's local order, or None
        when the model should make one ordinary call (overlap none or halves; auto choosing
        either; a side with no tokens anywhere in the group: one document). `layer` describes
        the block (heads, kv_heads, head_dim, dtype, flops_before, flops_after per token on
        this rank): the shapes the plan is made for and what auto prices nano-batches with."""
        o = self.options
        if str(o.overlap) not in ("auto", "nanobatch") or o.pipeline == "joint" or self._tick is not None:
            return None
        elem = torch.empty((), dtype=layer.dtype).element_size()
        shape = Shape(layer.heads, layer.kv_heads, layer.head_dim, elem, device.type == "cuda")
        self._shape, self._layer = shape, layer
        _, sp = self._shape_plan(shard, device, shape, layer)
        return sp.nano.rows_on(device) if sp.mode == "nanobatch" else None

    def start(self, q, k, v, shard, nano: int, softmax_scale: float):
        """Post nano-batch `nano`'s q/k/v all-to-all; returns its handle for serve/collect."""
        shape = Shape(q.shape[1], k.shape[1], q.shape[2], q.element_size(), q.is_cuda)
        _, sp = self._shape_plan(shard, q.device, shape)
        if sp.nano is None:
            raise RuntimeError(f"CAD: nano-batch {nano} started for shapes {tuple(shape)} that "
                               "nano_rows did not plan nano-batches for (its layer description "
                               "must match q, k, v)")
        if nano == 0:
            self._count(sp, "nano")
        part = sp.nano.parts[nano]
        layout = part.on(q.device) if part.in_place else part.on(q.device)[0]
        call = NanoCall(layout, self.group, softmax_scale, resend=self.options.backward == "resend",
                        exchange=self.exchange)
        return (NanoStart.apply(q, k, v, call), call, (q, k, v))

    def serve(self, handle):
        """Wait for the dispatch, run the kernel, post the o return."""
        edge, call, qkv = handle
        return (NanoServe.apply(edge, call), call, qkv)

    def collect(self, handle):
        """Wait for o: [T_nano, Hq, D]."""
        edge, call, qkv = handle
        return NanoCollect.apply(edge, *qkv, call)

    # ---- pooled across pipeline stages (pipeline=joint): the stage drives the ticks -------
    def begin_tick(self, shard, device, forward: bool) -> None:
        """A lock-step tick starts: every rank of the group (all stages) shares the shard it
        runs in this tick (an empty one when idle) and the tick is planned over all of them.
        Collective. Forward ticks' plans feed the step metrics (backward ticks replan the same
        micro-batches in other company; their planning time is counted)."""
        self._tick = {"pieces": gather_pieces(shard, self.dp_rank, self.group, device),
                      "layouts": {}, "plan": None, "forward": forward}

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
                # every tick exchanges (an idle stage's silent pass relies on the tick's layouts)
                tick["plan"] = self.planner.whole(tick["pieces"], Shape(hq, hkv, d, elem, cuda),
                                                  in_place_ok=False)
                totals = tick["plan"].totals
                if tick["forward"]:
                    self._since_step.append(totals)
                    self._overlaps.append(overlap_choice.CODES["halves" if len(tick["plan"].transfers) == 2
                                                               else "none"])
                else:  # only its planning time: the micro-batches were counted forward
                    self._since_step.append({**{k: 0.0 for k in totals}, "block": totals["block"],
                                             "plan_ms": totals["plan_ms"]})
                self.last_metrics = step_metrics([totals])
            tick["layouts"][key] = tick["plan"].on(torch.device(device))
        return tick["layouts"][key]
