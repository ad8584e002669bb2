"""USP: Ulysses inside groups of `parallel.ulysses` ranks, ring attention across the groups.

The CP group of N ranks is split into R = N / U groups of U adjacent CP ranks (the
Ulysses groups, cheap all-to-all inside a node) and U rings of R ranks (CP ranks with the
same position inside their Ulysses group). Each rank: all-to-all inside its Ulysses group,
so it holds the union of the group's tokens for H/U heads; ring attention over its ring,
where each ring member contributes the union of its own Ulysses group; all-to-all back.
U = N is plain Ulysses, U = 1 plain ring. Head rules are Ulysses' with U in place of N.

The sub-groups are created once per (ParallelState, U) and kept in
`state.extra_groups[("usp", U)]`; creating them is collective, so every rank builds the
strategy (all ranks of the world, in the same order), as the trainer does.

Options read (all optional):
    layout: "zigzag" (default), "head_tail" or "contiguous" (`strategy.layout`). With
            zigzag each Ulysses group's union is itself a zigzag over 2R chunks, so the
            ring across groups stays balanced.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel.context.collectives import RingP2P, group_size_rank
from parallel.context.ring import build_ring_plan, ring_attention
from parallel.context.shard import Shard
from parallel.context.strategy_options import check_call, read_layout
from parallel.context.ulysses import (build_union, heads_to_seq, kv_replication, replicate_kv,
                                      seq_to_heads)


def usp_groups(state, u: int):
    """(ulysses_group, ring_group) of this rank; every rank creates every group, in order."""
    key = ("usp", u)
    if key in state.extra_groups:
        return state.extra_groups[key]
    dims = state.dims
    mine_u = mine_r = None
    if dist.is_initialized() and dims.world_size > 1:
        me = dist.get_rank()
        for dp in range(dims.dp):
            for pp in range(dims.pp):
                for tp in range(dims.tp):
                    cp_ranks = [dims.rank_of(dp, pp, c, tp) for c in range(dims.cp)]
                    for g in range(dims.cp // u):
                        ranks = cp_ranks[g * u:(g + 1) * u]
                        grp = dist.new_group(ranks)
                        if me in ranks:
                            mine_u = grp
                    for i in range(u):
                        ranks = cp_ranks[i::u]
                        grp = dist.new_group(ranks)
                        if me in ranks:
                            mine_r = grp
    state.extra_groups[key] = (mine_u, mine_r)
    return mine_u, mine_r


class USPAttention:
    layout = "zigzag"

    def __init__(self, state=None, options: dict | None = None):
        self.state = state
        self.layout = read_layout(options or {}, type(self).layout, "USPAttention")
        dims = getattr(state, "dims", None)
        self.cp = dims.cp if dims is not None else 1
        self.u = dims.ulysses if dims is not None else 1
        if self.u < 1 or self.cp % self.u:
            raise ValueError(f"parallel.ulysses={self.u} must divide parallel.cp={self.cp} for usp")
        self.cp_group = getattr(state, "cp_group", None)
        if state is not None:
            self.ulysses_group, self.ring_group = usp_groups(state, self.u)
        else:
            self.ulysses_group = self.ring_group = None
        self._p2p = None

    def __call__(self, q, k, v, shard: Shard, softmax_scale: float) -> torch.Tensor:
        n, c = group_size_rank(self.cp_group)
        check_call(q, k, v, shard, n, c, "USPAttention")
        u = self.u if n > 1 else 1
        k, v = replicate_kv(k, v, kv_replication(q.shape[1], k.shape[1], u, "parallel.ulysses"))
        key = ("usp", u, str(q.device))
        if key not in shard._cache:
            r = n // u
            unions = [build_union(shard, list(range(g * u, (g + 1) * u)), q.device) for g in range(r)]
            mine = unions[c // u]
            ring = build_ring_plan(mine.union, [x.union for x in unions], c // u, q.device)
            shard._cache[key] = (mine, ring)
        mine, ring = shard._cache[key]
        if self._p2p is None:
            self._p2p = RingP2P(self.ring_group, q.device)
        qh, kh, vh = seq_to_heads(q, k, v, mine.rows, self.ulysses_group)
        qh, kh, vh = (x.index_select(0, mine.order) for x in (qh, kh, vh))
        o = ring_attention(qh, kh, vh, ring, self._p2p, softmax_scale)
        return heads_to_seq(o.index_select(0, mine.restore), mine.rows, q.shape[0], self.ulysses_group)
