"""USP: Ulysses inside groups of `parallel.ulysses` ranks, ring attention across the groups.

The CP group of N ranks is split into R = N / U groups of U adjacent CP ranks (the
Ulysses groups, cheap all-to-all inside a node) and U rings of R ranks (CP ranks with the
same position inside their Ulysses group). Each rank: all-to-all inside its Ulysses group,
so it holds the union of the group's tokens for H/U heads; ring attention over its ring,
where each ring member contributes the union of its own Ulysses group; all-to-all back.
U = N is plain Ulysses, U = 1 plain ring. Head rules are Ulysses' with U in place of N.

The sub-groups are built by the plan with every other group (`ParallelState.create(...,
ulysses=U)`). Works with any shard layout; with its default zigzag each Ulysses group's union
is itself a zigzag over 2R chunks, so the ring across groups stays balanced.
"""
from __future__ import annotations

import torch

from parallel.context.collectives import RingP2P, group_size_rank
from parallel.context.ring import build_ring_plan, ring_attention
from parallel.context.shard import Shard
from parallel.context.strategy import Strategy, check_call
from parallel.context.ulysses import (build_union, heads_to_seq, kv_replication, replicate_kv,
                                      seq_to_heads)


class USPAttention(Strategy):
    default_layout = "zigzag"

    def __init__(self, cp_group=None, ulysses_group=None, ring_group=None, ulysses: int = 1):
        self.cp_group = cp_group            # the whole CP group (None: one rank)
        self.ulysses_group = ulysses_group  # this rank's Ulysses group inside it
        self.ring_group = ring_group        # the ring across Ulysses groups
        self.u = ulysses
        self._p2p = None

    def __call__(self, q, k, v, shard: Shard, softmax_scale: float) -> torch.Tensor:
        n, c = group_size_rank(self.cp_group)
        check_call(q, k, v, shard, n, c, "USPAttention")
        u = self.u if n > 1 else 1
        k, v = replicate_kv(k, v, kv_replication(q.shape[1], k.shape[1], u, "parallel.ulysses"))

        def build():
            unions = [build_union(shard, list(range(g * u, (g + 1) * u)), q.device)
                      for g in range(n // u)]
            mine = unions[c // u]
            return mine, build_ring_plan(mine.union, [x.union for x in unions], c // u, q.device)

        mine, ring = shard.memo(("usp", u, str(q.device)), build)
        if self._p2p is None:
            self._p2p = RingP2P(self.ring_group, q.device)
        qh, kh, vh = seq_to_heads(q, k, v, mine.rows, self.ulysses_group)
        qh, kh, vh = (x.index_select(0, mine.order) for x in (qh, kh, vh))
        o = ring_attention(qh, kh, vh, ring, self._p2p, softmax_scale)
        return heads_to_seq(o.index_select(0, mine.restore), mine.rows, q.shape[0], self.ulysses_group)
