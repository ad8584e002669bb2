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

Strategies are classes constructed as `Cls(state: ParallelState, options: dict)`; they are
looked up lazily by name so an algorithm that is not built yet fails with a clear error.
"""
from __future__ import annotations

import importlib

CORE_ATTENTION = {
    "local": "parallel.context.local:LocalCoreAttention",
    "ring": "parallel.context.ring:RingAttention",
    "allgather": "parallel.context.allgather:AllGatherAttention",
    "ulysses": "parallel.context.ulysses:UlyssesAttention",
    "usp": "parallel.context.usp:USPAttention",
    "cad": "distca.cad.attention:CADAttention",
}
LINEAR_ATTENTION = {
    "local": "parallel.context.local:LocalLinearAttention",
    "lasp2": "parallel.context.lasp2:Lasp2LinearAttention",
}


def _load(table: dict, name: str, field: str):
    if name not in table:
        raise ValueError(f"{field}={name!r} is unknown; choose one of {tuple(table)}")
    mod, cls = table[name].split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError) as e:  # the algorithm is not in this build yet
        raise ValueError(f"{field}={name!r} is not implemented in this build ({e}); "
                         f"use {field}=local with parallel.cp=1") from e


def build_core_attention(state, options: dict | None = None):
    """The softmax core-attention strategy for this layout (state.dims.cp_algo)."""
    algo = state.dims.cp_algo if state.dims.cp > 1 or state.dims.cp_algo == "cad" else "local"
    return _load(CORE_ATTENTION, algo, "parallel.cp_algo")(state, options or {})


def build_linear_attention(state, options: dict | None = None):
    """Linear layers use LASP-2 whenever cp > 1, whatever the softmax layers use."""
    name = "lasp2" if state.dims.cp > 1 else "local"
    return _load(LINEAR_ATTENTION, name, "linear attention (parallel.cp>1 needs LASP-2)")(
        state, options or {})
