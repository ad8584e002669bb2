"""Everything CAD plans for one micro-batch, from the group's pieces alone.

`Planner.plan(pieces, shape, layer)` is pure computation on the all-gathered piece table (no
collective, no device): the plan, the overlap mode (`parallel.cad.overlap`, or auto's choice),
the transfers per ping-pong half or per nano-batch, and this rank's layouts as CPU index
tensors. Every rank computes the same result from the same pieces, so it can run on the
calling thread when a layer first needs it or ahead of time in a background thread
(parallel/cad/plan_ahead.py); a layout moves to the device once, when first used.

A plan that moves nothing runs in place (parallel/cad/in_place.py): no halves, no exchange.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from parallel.cad import in_place, overlap_choice
from parallel.cad.dispatch import Layout, Transfers, build_layout, transfers
from parallel.cad.nanobatch import nano_rows, split_documents, sub_pieces
from parallel.cad.planner import fitting_block, plan, server_memory, split_halves
from parallel.cad.tasks import CostModel, PieceTable, table_for_device

CPU = torch.device("cpu")


class Shape(NamedTuple):
    """What a plan depends on besides the pieces: the attention's shapes on this rank."""
    hq: int
    hkv: int
    head_dim: int
    element_bytes: int
    cuda: bool


@dataclass
class PartPlan:
    """One planned exchange: its transfers (one per ping-pong half), this rank's layouts (an
    `InPlace` when the plan moves nothing) and the totals its step metrics are built from."""
    transfers: list[Transfers]
    layouts: list[Layout] | in_place.InPlace
    totals: dict
    _on: dict = field(default_factory=dict)

    @property
    def in_place(self) -> bool:
        return isinstance(self.layouts, in_place.InPlace)

    def on(self, device):
        """The layouts on `device`, moved once."""
        key = str(device)
        if key not in self._on:
            L = self.layouts
            self._on[key] = L.to(device) if self.in_place else [x.to(device) for x in L]
        return self._on[key]


@dataclass
class NanoPlans:
    """Two nano-batches: this rank's rows of each (micro-batch local order), and their plans."""
    rows: tuple[np.ndarray, np.ndarray]
    parts: tuple[PartPlan, PartPlan]
    _on: dict = field(default_factory=dict)

    def rows_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = tuple(torch.from_numpy(r).to(device) for r in self.rows)
        return self._on[key]


@dataclass
class ShapePlan:
    """A micro-batch planned for one shape: the mode it runs and the plans of that mode. The
    whole-micro-batch plan is also made for a nano-batch mode when a plain call asks for it."""
    mode: str                       # none | halves | nanobatch
    whole: PartPlan | None = None
    nano: NanoPlans | None = None
    decide_ms: float = 0.0          # planning auto did to choose (counted in cad_plan_ms)
    counted: set = field(default_factory=set)  # plans already in the step metrics


@dataclass
class MicroBatchPlan:
    pieces: PieceTable
    shapes: dict = field(default_factory=dict)   # Shape -> ShapePlan


class Planner:
    """Plans micro-batches for one rank of a CAD group (`CADConfig` options)."""

    def __init__(self, options, rank: int, size: int):
        self.options, self.rank, self.size = options, rank, size
        pool = options.pool
        self.servers = np.arange(size - pool, size) if pool else options.servers
        self.num_servers = pool or options.servers or size
        self.link_rate = None   # bytes/s through one rank's link (sent + received); set by the strategy
        self._cost_models: dict = {}

    def in_place(self, tr: Transfers) -> bool:
        """Whether a plan with these transfers runs in place, without an exchange: when it
        moves nothing. (benchmarks/cad_overlap_one_gpu.py overrides this to time the exchange
        path on one GPU, where nothing ever moves.)"""
        return in_place.moves_nothing(tr)

    def cost_model(self, s: Shape) -> CostModel:
        """Built once per shape: the table is read from disk and prepared only then."""
        if s not in self._cost_models:
            o = self.options
            auto = table_for_device(torch.cuda.get_device_name()) if s.cuda else None
            table = {"auto": auto, "none": None}.get(o.cost_table, o.cost_table)
            self._cost_models[s] = CostModel(s.hq, s.hkv, s.head_dim, s.element_bytes, table=table)
        return self._cost_models[s]

    # ---- one micro-batch -------------------------------------------------------------------
    def plan(self, pieces: PieceTable, s: Shape, layer=None) -> ShapePlan:
        """The mode and its plans. `layer` (the model's description of the block, see
        distca/model/nano_batches.py: NanoLayer) is what auto prices nano-batches with; without
        it nano-batches are not an option (a plain call)."""
        o = self.options
        mode = str(o.overlap)
        if mode == "nanobatch" and layer is not None:
            nano = self.nano(pieces, s)
            if nano is not None:
                return ShapePlan("nanobatch", nano=nano)
            mode = "halves"  # one document: nothing to pair, one call split in halves
        if mode == "nanobatch":
            mode = "halves"
        t0 = time.perf_counter()
        cm = self.cost_model(s)
        p, block = self._balance(pieces, cm)
        one = transfers(p.parts, p.server, pieces)
        if self.in_place(one):
            return ShapePlan("none", whole=self._part(p, [one], pieces, s, cm, block, t0))
        if mode == "auto":
            side = split_documents(pieces) if layer is not None else None
            pairable = side is not None and bool((side == 0).any() and (side == 1).any())
            mode = overlap_choice.choose(self._price(p, one, pieces, cm, layer), halves=o.ping_pong,
                                         nanobatch=pairable)
            if mode == "nanobatch":
                decide_ms = (time.perf_counter() - t0) * 1e3
                return ShapePlan("nanobatch", nano=self.nano(pieces, s, side), decide_ms=decide_ms)
        if mode == "halves" and o.ping_pong:
            return ShapePlan("halves", whole=self._halves(p, pieces, s, cm, block, t0))
        return ShapePlan("none", whole=self._part(p, [one], pieces, s, cm, block, t0))

    def whole(self, pieces: PieceTable, s: Shape, in_place_ok: bool = True) -> PartPlan:
        """The plain call's plan: split in halves with ping_pong (overlap not none), unless it
        moves nothing (then in place, unless `in_place_ok` is False: a pipeline tick's layouts
        serve an idle stage's silent pass, which needs them)."""
        t0 = time.perf_counter()
        cm = self.cost_model(s)
        p, block = self._balance(pieces, cm)
        one = transfers(p.parts, p.server, pieces)
        still = in_place_ok and self.in_place(one)
        if self.options.ping_pong and str(self.options.overlap) != "none" and not still:
            return self._halves(p, pieces, s, cm, block, t0)
        return self._part(p, [one], pieces, s, cm, block, t0, in_place_ok)

    def nano(self, pieces: PieceTable, s: Shape, side: np.ndarray | None = None) -> NanoPlans | None:
        """Two nano-batches of whole documents, each planned from its own pieces; None when one
        side has no tokens anywhere in the group (one document: nothing to pair)."""
        side = split_documents(pieces) if side is None else side
        if not ((side == 0).any() and (side == 1).any()):
            return None
        rows, parts = [], []
        for n in (0, 1):
            t0 = time.perf_counter()
            sub, _ = sub_pieces(pieces, side == n)
            cm = self.cost_model(s)
            p, block = self._balance(sub, cm)
            one = transfers(p.parts, p.server, sub)
            parts.append(self._part(p, [one], sub, s, cm, block, t0))
            rows.append(nano_rows(pieces, side == n, self.rank))
        return NanoPlans(tuple(rows), tuple(parts))

    # ---- pieces of the above -----------------------------------------------------------------
    def _balance(self, pieces: PieceTable, cm: CostModel):
        o = self.options
        tasks = pieces.tasks()
        block = fitting_block(tasks, self.num_servers, o.block, float(o.tolerance))
        return plan(tasks, self.size, cm, tolerance=float(o.tolerance), block=block,
                    servers=self.servers, memory_cap=o.memory_cap), block

    def _halves(self, p, pieces, s, cm, block, t0) -> PartPlan:
        half = split_halves(p, cm, block)
        parts = []
        for h in (0, 1):  # keys go to a server once per step: a later half skips what it holds
            g = np.nonzero(half == h)[0]
            parts.append(transfers(p.parts.take(g), p.server[g], pieces, held=parts[-1] if parts else None))
        return self._part(p, parts, pieces, s, cm, block, t0)

    def _part(self, p, parts: list[Transfers], pieces, s: Shape, cm, block, t0,
              in_place_ok: bool = True) -> PartPlan:
        """This rank's layouts for the transfers, and the plan's totals."""
        mine = int(pieces.length[pieces.rank == self.rank].sum())
        if in_place_ok and len(parts) == 1 and self.in_place(parts[0]):
            layouts = in_place.in_place_layout(parts[0], pieces, self.rank, mine)
        else:
            layouts = []
            for tr in parts:  # a later half reads the keys earlier halves received
                layouts.append(build_layout(tr, pieces, self.rank, self.size, mine, s.hq, s.hkv, CPU,
                                            prior=layouts[-1] if layouts else None))
        return PartPlan(parts, layouts, totals(p, parts, cm, block, self.size, self.options, t0))

    def _price(self, p, one: Transfers, pieces, cm: CostModel, layer) -> overlap_choice.LayerPrice:
        """One layer's times on the busiest rank (see parallel/cad/overlap_choice.py)."""
        resend = self.options.backward == "resend"
        link = overlap_choice.link_bytes(one, cm, resend, self.size)
        rate = self.link_rate or float("inf")
        tokens = np.bincount(pieces.rank, pieces.length, minlength=self.size).max(initial=0)
        gemm = (cm.table or {}).get("gemm_bf16", {}).get("tflops")
        dense = gemm * 1e12 if gemm else cm.nominal_flops
        before = after = 0.0
        if layer is not None:
            before = layer.flops_before * float(tokens) / dense
            after = layer.flops_after * float(tokens) / dense
        return overlap_choice.LayerPrice(exchange=float(link.max(initial=0.0)) / rate,
                                         kernel=float(p.load_after.max(initial=0.0)),
                                         before=before, after=after)


def totals(p, parts: list[Transfers], cm: CostModel, block: int, size: int, o, t0) -> dict:
    """One plan's sums, what step metrics are built from."""
    plan_ms = (time.perf_counter() - t0) * 1e3
    moved = p.server != p.parts.owner
    after = p.load_after[p.servers]
    before = p.load_before[:size - o.pool]  # the ranks that own tokens (a pool owns none)
    return {"max_before": float(before.max(initial=0.0)),
            "mean_before": float(before.mean()) if before.size else 0.0,
            "max_after": float(after.max(initial=0.0)),
            "mean_after": float(after.mean()) if after.size else 0.0,
            "bytes": float(sum(tr.remote_bytes(cm, o.backward == "resend") for tr in parts)),
            "cost": float(p.cost.sum()), "moved_cost": float(p.cost[moved].sum()),
            "moved_queries": float(p.parts.q_len[moved].sum()), "block": block,
            "server_bytes": float(server_memory(p.parts, p.server, size, cm).max(initial=0.0)),
            "plan_ms": plan_ms}
