"""Ring attention: K/V blocks travel around the CP group while every rank attends to them.

Step s: rank r holds the K/V block of rank (r - s) mod N. It posts the batched send of that
block to r+1 and the receive of the next one from r-1, computes its queries against the
block meanwhile (the transfer runs on its own CUDA stream on GPU, on gloo's threads on
CPU), and folds the partial output into fp32 accumulators by log-sum-exp. Blocks that none
of the local queries can see (other documents, the future) are skipped, not masked.

Backward rotates the blocks again and sends each block's dK/dV accumulator (fp32) along
with it; after N hops it arrives back at the block's owner. The accumulator exchange of
step s overlaps the compute of step s+1.

Works for any shard layout (the peers' shards are rebuilt from the layout); its default
`zigzag` balances causal work and matches LASP-2 in hybrid models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distca_kernels.precision import accumulator_dtype as acc_dtype
from parallel.context.attend import attend_block, attend_block_backward, merge_into
from parallel.context.block_plan import BlockPlan, plan_block
from parallel.context.collectives import RingP2P, group_size_rank
from parallel.context.shard import Shard
from parallel.context.strategy import Strategy, check_call

_TAG_KV, _TAG_DKV = 11, 12


@dataclass
class RingPlan:
    steps: list[BlockPlan | None]  # step s: local queries vs the block of ring rank (r - s) % n
    block_rows: list[int]          # step s: tokens in that block


def build_ring_plan(qset: Shard, peer_sets: list[Shard], ring_rank: int, device) -> RingPlan:
    n = len(peer_sets)
    steps, rows = [], []
    for s in range(n):
        src = (ring_rank - s) % n
        p = plan_block(qset, peer_sets[src], same=s == 0)
        steps.append(None if p is None else p.to(device))
        rows.append(peer_sets[src].num_tokens)
    return RingPlan(steps, rows)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: RingPlan, p2p: RingP2P, scale: float):
        acc = acc_dtype(q.dtype)
        n = len(plan.steps)
        o = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=acc, device=q.device)
        kv = torch.stack([k, v])  # one message per hop
        for s in range(n):
            pending = None
            if s + 1 < n:
                recv = kv.new_empty((2, plan.block_rows[s + 1]) + tuple(kv.shape[2:]))
                pending = p2p.start(kv, recv, _TAG_KV)
            bp = plan.steps[s]
            if bp is not None:
                o_b, lse_b = attend_block(q, kv[0], kv[1], bp, scale)
                merge_into(o, lse, bp.q_rows, o_b, lse_b)
            if pending is not None:
                kv = p2p.wait(pending)
        out = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.p2p, ctx.scale = plan, p2p, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        plan, p2p, scale = ctx.plan, ctx.p2p, ctx.scale
        acc = acc_dtype(q.dtype)
        n = len(plan.steps)
        do, o = grad_out.to(acc), out.to(acc)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = torch.stack([k, v])
        dkv_pending = None
        for s in range(n):
            kv_pending = None
            if s + 1 < n:
                recv = kv.new_empty((2, plan.block_rows[s + 1]) + tuple(kv.shape[2:]))
                kv_pending = p2p.start(kv, recv, _TAG_KV)
            dkv = torch.zeros(kv.shape, dtype=acc, device=q.device)
            bp = plan.steps[s]
            if bp is not None:
                dq_b, dk_b, dv_b = attend_block_backward(q, kv[0], kv[1], bp, scale, do, o, lse)
                if bp.q_rows is None:
                    dq += dq_b
                else:
                    dq.index_add_(0, bp.q_rows, dq_b.to(acc))
                if bp.k_rows is None:
                    dkv[0] += dk_b
                    dkv[1] += dv_b
                else:
                    dkv[0].index_add_(0, bp.k_rows, dk_b.to(acc))
                    dkv[1].index_add_(0, bp.k_rows, dv_b.to(acc))
            if dkv_pending is not None:  # what the earlier ranks accumulated for this block
                dkv += p2p.wait(dkv_pending)
            if n > 1:  # pass it on; after the last hop it reaches the block's owner
                nxt = plan.block_rows[(s + 1) % n]
                dkv_pending = p2p.start(dkv, dkv.new_empty((2, nxt) + tuple(dkv.shape[2:])), _TAG_DKV)
            if kv_pending is not None:
                kv = p2p.wait(kv_pending)
        if dkv_pending is not None:
            dkv = p2p.wait(dkv_pending)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def ring_attention(q, k, v, plan: RingPlan, p2p: RingP2P, scale: float) -> torch.Tensor:
    """Causal varlen attention of the local queries against the K/V of every ring member."""
    return _RingAttention.apply(q, k, v, plan, p2p, scale)


class RingAttention(Strategy):
    default_layout = "zigzag"

    def __init__(self, group=None):
        self.group = group  # the CP group (None: one rank)
        self._p2p = None

    def __call__(self, q, k, v, shard: Shard, softmax_scale: float) -> torch.Tensor:
        n, r = group_size_rank(self.group)
        check_call(q, k, v, shard, n, r, "RingAttention")
        if self._p2p is None:
            self._p2p = RingP2P(self.group, q.device)
        plan = shard.memo(("ring", str(q.device)),
                          lambda: build_ring_plan(shard, shard.peers(), r, q.device))
        return ring_attention(q, k, v, plan, self._p2p, softmax_scale)
