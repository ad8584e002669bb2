"""Ulysses attention: all-to-all from sequence-sharded to head-sharded and back.

Each rank sends head slice j of its tokens' q/k/v to rank j (one fused all-to-all for q, k
and v), so rank j holds every token of the group for its heads, runs ordinary causal varlen
attention over whole documents, and a second all-to-all returns the output to the
sequence shards. Communication per rank is about 4/N of the activations, independent of N.

Heads: the query heads must divide over the N ranks. With grouped-query attention, when N
exceeds the KV heads each KV head is replicated N/Hkv times (so every rank still gets the
KV head its query heads use); KV heads that neither divide N nor are divided by it are an
error naming the fix (raised by the plan at config time). Works with any shard layout
(default `contiguous`).

The same machinery serves USP (usp.py): there the "group" is a Ulysses group of
`parallel.ulysses` ranks and the gathered tokens are the union of their shards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distca_kernels.flash_attn import flash_attn_varlen_func
from parallel.context.collectives import all_to_all_rows_autograd, group_size_rank
from parallel.context.shard import Shard, shard_from_index
from parallel.context.strategy import Strategy, check_call


def kv_replication(hq: int, hkv: int, n: int, field: str) -> int:
    """How many times each KV head is repeated so heads split evenly over n ranks."""
    if hq % n:
        raise ValueError(f"{hq} query heads cannot be split over {field}={n} ranks; choose a "
                         f"{field} that divides the number of heads, or use cp_algo=ring/allgather")
    if hkv % n == 0:
        return 1
    if n % hkv == 0:
        return n // hkv
    raise ValueError(f"{hkv} KV heads cannot be split over {field}={n} ranks (neither divides the "
                     f"other, so KV heads cannot be replicated evenly); choose a {field} that "
                     f"divides or is a multiple of {hkv}, or use cp_algo=ring/allgather")


@dataclass
class UnionPlan:
    """The tokens of a Ulysses group after the all-to-all, as one token set."""
    rows: list[int]        # tokens contributed by each group member, in member order
    order: torch.Tensor    # rows of the member-concatenated tensor, in global stream order
    restore: torch.Tensor  # inverse of order
    union: Shard           # the union in global order: pieces, positions, documents


def build_union(shard: Shard, members: list[int], device) -> UnionPlan:
    peers = shard.peers()
    idx = torch.cat([peers[m].index.cpu() for m in members])
    order = torch.argsort(idx)
    restore = torch.empty_like(order)
    restore[order] = torch.arange(order.numel())
    union = shard_from_index(shard.doc_lens, idx[order], shard.layout, shard.cp_rank, shard.cp_size)
    return UnionPlan([peers[m].num_tokens for m in members], order.to(device), restore.to(device),
                     union.to(device))


def seq_to_heads(q, k, v, rows: list[int], group):
    """[T_local, H, D] x3 -> [sum(rows), H/n, D] x3 (the group's tokens, member order), fused."""
    n = len(rows)
    t, d = q.shape[0], q.shape[2]
    hq, hkv = q.shape[1] // n, k.shape[1] // n
    x = torch.cat([q.view(t, n, hq, d), k.view(t, n, hkv, d), v.view(t, n, hkv, d)], 2)
    x = x.transpose(0, 1).reshape(n * t, hq + 2 * hkv, d)  # member j's slice: rows j*t..(j+1)*t
    y = all_to_all_rows_autograd(x, rows, [t] * n, group)
    return y[:, :hq], y[:, hq:hq + hkv], y[:, hq + hkv:]


def heads_to_seq(o, rows: list[int], t: int, group):
    """[sum(rows), H/n, D] -> [t, H, D]: every member's heads back to this rank's tokens."""
    n = len(rows)
    x = all_to_all_rows_autograd(o.contiguous(), [t] * n, rows, group)
    return x.view(n, t, o.shape[1], o.shape[2]).transpose(0, 1).reshape(t, n * o.shape[1], o.shape[2])


def replicate_kv(k, v, rep: int):
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)


class UlyssesAttention(Strategy):
    default_layout = "contiguous"

    def __init__(self, group=None):
        self.group = group  # the CP group (None: one rank)

    def __call__(self, q, k, v, shard: Shard, softmax_scale: float) -> torch.Tensor:
        n, r = group_size_rank(self.group)
        check_call(q, k, v, shard, n, r, "UlyssesAttention")
        k, v = replicate_kv(k, v, kv_replication(q.shape[1], k.shape[1], n, "parallel.cp"))
        plan: UnionPlan = shard.memo(("ulysses", str(q.device)),
                                     lambda: build_union(shard, list(range(n)), q.device))
        qh, kh, vh = seq_to_heads(q, k, v, plan.rows, self.group)
        qh, kh, vh = (x.index_select(0, plan.order) for x in (qh, kh, vh))
        cu, m = plan.union.cu_seqlens, plan.union.max_piece_len
        o = flash_attn_varlen_func(qh, kh, vh, cu, cu, m, m, softmax_scale=softmax_scale, causal=True)
        return heads_to_seq(o.index_select(0, plan.restore), plan.rows, q.shape[0], self.group)
