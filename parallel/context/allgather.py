"""All-gather attention: every rank gathers all K/V and attends its queries to the key
prefix each of them needs (Llama-3 style context parallelism, on packed documents).

K/V are gathered one *head group* at a time, so the gathered copy is capped at
1/groups of the full K/V; the next group's all-gather is in flight while the current group
computes. A query piece (document d, offset s, m tokens) attends to document d's tokens
0 .. s+m-1 in one causal varlen segment (bottom-right aligned), whichever ranks own them.
Backward gathers K/V again (memory stays capped), recomputes, and reduce-scatters dK/dV
(in fp32) to their owners, overlapping each group's reduce-scatter with the next group.

Works with any shard layout; its default `zigzag` balances causal work across ranks.
`kv_head_groups` (`parallel.kv_head_groups`, default 2, capped at the number of KV heads):
KV-head groups gathered one after another; 1 gathers everything at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distca_kernels.flash_attn import flash_attn_varlen_func
from distca_kernels.precision import accumulator_dtype as acc_dtype
from parallel.context.collectives import all_gather_padded, group_size_rank, reduce_scatter_padded
from parallel.context.shard import Shard, _ranges
from parallel.context.strategy import Strategy, check_call


@dataclass
class GatherPlan:
    pad_rows: int            # every rank's K/V padded to this many rows for the all-gather
    k_rows: torch.Tensor     # rows of the gathered [N * pad_rows] K/V, per query piece's prefix
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int


def build_gather_plan(shard: Shard, device) -> GatherPlan:
    peers = shard.peers()
    pad = max(p.num_tokens for p in peers)
    # row of every global token in the gathered, padded tensor: owner * pad + local position
    row_of = torch.empty(shard.total_tokens, dtype=torch.int64)
    for j, p in enumerate(peers):
        row_of[p.index.cpu()] = j * pad + torch.arange(p.num_tokens)
    lens = torch.tensor(shard.doc_lens, dtype=torch.int64)
    doc_start = (torch.cumsum(lens, 0) - lens).tolist()
    q_lens = shard.piece_lens
    prefix = [s + m for s, m in zip(shard.piece_starts, q_lens)]
    starts = torch.tensor([doc_start[d] for d in shard.piece_docs], dtype=torch.int64)
    k_rows = row_of[_ranges(starts, torch.tensor(prefix, dtype=torch.int64))]
    cu_k = torch.tensor([0] + prefix, dtype=torch.int64).cumsum(0).to(torch.int32)
    return GatherPlan(pad, k_rows.to(device), shard.cu_seqlens.to(device), cu_k.to(device),
                      max(q_lens, default=0), max(prefix, default=0))


def _head_groups(hkv: int, groups: int) -> list[tuple[int, int]]:
    bounds = torch.tensor_split(torch.arange(hkv), min(groups, hkv))
    return [(int(b[0]), int(b[-1]) + 1) for b in bounds]


class _AllGatherAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: GatherPlan, group, groups: int, scale: float):
        hq, hkv = q.shape[1], k.shape[1]
        rep = hq // hkv
        heads = _head_groups(hkv, groups)
        out = torch.empty_like(q)

        def gather(i):
            a, b = heads[i]
            return all_gather_padded(torch.stack([k[:, a:b], v[:, a:b]], 1), plan.pad_rows, group,
                                     async_op=True)

        nxt = gather(0)
        for i, (a, b) in enumerate(heads):
            kv, work = nxt
            if i + 1 < len(heads):
                nxt = gather(i + 1)  # prefetch the next head group while this one computes
            if work is not None:
                work.wait()
            kv = kv.flatten(0, 1).index_select(0, plan.k_rows)  # [keys, 2, heads, D]
            if q.shape[0]:
                out[:, a * rep:b * rep] = flash_attn_varlen_func(
                    q[:, a * rep:b * rep], kv[:, 0], kv[:, 1], plan.cu_q, plan.cu_k,
                    plan.max_q, plan.max_k, softmax_scale=scale, causal=True)
        ctx.save_for_backward(q, k, v)
        ctx.plan, ctx.group, ctx.heads, ctx.scale = plan, group, heads, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        plan, group, heads, scale = ctx.plan, ctx.group, ctx.heads, ctx.scale
        acc = acc_dtype(q.dtype)
        rep = q.shape[1] // k.shape[1]
        dq = torch.zeros_like(q)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        t = k.shape[0]

        def gather(i):
            a, b = heads[i]
            return all_gather_padded(torch.stack([k[:, a:b], v[:, a:b]], 1), plan.pad_rows, group,
                                     async_op=True)

        nxt, scattering = gather(0), None
        for i, (a, b) in enumerate(heads):
            kv_all, work = nxt
            if i + 1 < len(heads):
                nxt = gather(i + 1)
            if work is not None:
                work.wait()
            with torch.enable_grad():
                kv_all = kv_all.flatten(0, 1).detach().requires_grad_()  # [N*pad, 2, heads, D]
                qs = q[:, a * rep:b * rep].detach().requires_grad_()
                kv = kv_all.index_select(0, plan.k_rows)
                o = flash_attn_varlen_func(qs, kv[:, 0], kv[:, 1], plan.cu_q, plan.cu_k,
                                           plan.max_q, plan.max_k, softmax_scale=scale, causal=True)
            if q.shape[0]:
                dqs, dkv_all = torch.autograd.grad(o, (qs, kv_all), grad_out[:, a * rep:b * rep])
            else:  # no local queries: this rank contributes nothing to anybody's dK/dV
                dqs, dkv_all = torch.zeros_like(qs), torch.zeros_like(kv_all)
            dq[:, a * rep:b * rep] = dqs
            if scattering is not None:
                _finish(scattering, dk, dv, t)
            dkv_all = dkv_all.to(acc).view((-1, plan.pad_rows) + tuple(dkv_all.shape[1:]))
            scattering = (reduce_scatter_padded(dkv_all, group, async_op=True), a, b)
        _finish(scattering, dk, dv, t)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _finish(scattering, dk, dv, t: int) -> None:
    (mine, work), a, b = scattering
    if work is not None:
        work.wait()
    dk[:, a:b] = mine[:t, 0]
    dv[:, a:b] = mine[:t, 1]


class AllGatherAttention(Strategy):
    default_layout = "zigzag"

    def __init__(self, group=None, kv_head_groups: int = 2):
        if isinstance(kv_head_groups, bool) or not isinstance(kv_head_groups, int) or kv_head_groups < 1:
            raise ValueError(f"parallel.kv_head_groups={kv_head_groups!r} must be an integer >= 1 "
                             "(1 gathers all K/V heads at once)")
        self.group = group  # the CP group (None: one rank)
        self.kv_head_groups = kv_head_groups

    def __call__(self, q, k, v, shard: Shard, softmax_scale: float) -> torch.Tensor:
        n, r = group_size_rank(self.group)
        check_call(q, k, v, shard, n, r, "AllGatherAttention")
        plan = shard.memo(("allgather", str(q.device)), lambda: build_gather_plan(shard, q.device))
        return _AllGatherAttention.apply(q, k, v, plan, self.group, self.kv_head_groups,
                                         softmax_scale)
