"""The strategy interface between the model's mixers and (distributed) attention.

Core attention (softmax layers):
    strategy(q, k, v, shard, softmax_scale) -> o
    q [T_local, Hq, D], k/v [T_local, Hkv, D] in the shard's local order (RoPE already
    applied with shard.position_ids); o [T_local, Hq, D]. Causal within each document,
    no attention across documents.

Linear attention (linear layers):
    strategy(q, k, v, shard, g_gamma=None, g=None, scale=None) -> o
    q/k [T_local, H, K], v [T_local, H, V]; g_gamma [H] constant log-decay or
    g [T_local, H] per-token log-decay; state resets at every document start.

Every strategy is a `Strategy` (strategy.py): its default shard layout, the layouts it runs
on, and `step_metrics()`. Its constructor takes the process groups and typed options it
needs; `ParallelPlan` (parallel/plan.py) builds the one the config names, from this table.
"""
from __future__ import annotations

from parallel.cad.attention import CADAttention
from parallel.config import CPAlgo
from parallel.context.allgather import AllGatherAttention
from parallel.context.lasp2 import Lasp2LinearAttention
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.ring import RingAttention
from parallel.context.strategy import Strategy
from parallel.context.ulysses import UlyssesAttention
from parallel.context.usp import USPAttention

CORE_ATTENTION: dict[CPAlgo, type[Strategy]] = {
    CPAlgo.local: LocalCoreAttention,
    CPAlgo.ring: RingAttention,
    CPAlgo.allgather: AllGatherAttention,
    CPAlgo.ulysses: UlyssesAttention,
    CPAlgo.usp: USPAttention,
    CPAlgo.cad: CADAttention,
}
# linear layers: LASP-2 whenever cp > 1, whatever the softmax layers use
LINEAR_ATTENTION = {"local": LocalLinearAttention, "lasp2": Lasp2LinearAttention}
