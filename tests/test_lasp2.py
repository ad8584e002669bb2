"""LASP-2 against the single-process reference: outputs and every gradient, fp64, gloo on CPU.

One 8-rank spawn covers CP groups of every size 1..8: the ranks are cut into blocks of that
size (each block its own cp_group, so group ranks differ from global ranks and nothing may
fall back to the default group) and every block runs many cases (decay mode x layout x
document pattern).
Zigzag shards are built here from our own index (2N chunks, rank r holds chunk r then chunk
2N-1-r) so these tests do not depend on the shard module's zigzag support.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from parallel.context.lasp2 import Lasp2LinearAttention
from parallel.context.local import LocalLinearAttention
from parallel.context.shard import build_shard, shard_from_index
from parallel.dims import ParallelDims, ParallelState
from tests.distributed_utils import run_distributed

H, K, V = 2, 4, 3
MODES = ("none", "g_gamma", "g")
LAYOUTS = ("contiguous", "zigzag")


def make_shard(doc_lens, layout, rank, size):
    total = sum(doc_lens)
    if layout == "contiguous":
        index = torch.tensor_split(torch.arange(total), size)[rank]
    else:
        chunks = torch.tensor_split(torch.arange(total), 2 * size)
        index = torch.cat([chunks[rank], chunks[2 * size - 1 - rank]])
    return shard_from_index(doc_lens, index, layout, rank, size)


def doc_pattern(name, total, size, seed):
    """Document lengths that make documents cross ranks in different ways."""
    gen = torch.Generator().manual_seed(seed)
    if name == "one":  # a single document through every rank
        return [total]
    if name == "aligned":  # documents start exactly where chunks start, some span 3 chunks
        lens = [len(c) for c in torch.tensor_split(torch.arange(total), 2 * size)]
        out, i = [], 0
        while i < len(lens):
            take = 1 + (i % 3)
            out.append(sum(lens[i:i + take]))
            i += take
        return [x for x in out if x > 0]
    lens, left = [], total  # random: long ones cross several ranks, short ones sit inside one
    while left:
        x = min(left, int(torch.randint(1, max(2, total // 3), (1,), generator=gen)))
        lens.append(x)
        left -= x
    return lens


def make_inputs(total, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(total, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(total, H, V, generator=gen, dtype=torch.float64)
    w = torch.randn(total, H, V, generator=gen, dtype=torch.float64)  # loss weights
    gates = {}
    if mode == "g_gamma":
        gates["g_gamma"] = -0.05 - 0.3 * torch.rand(H, generator=gen, dtype=torch.float64)
    elif mode == "g":  # mostly mild decays (cross-rank terms stay visible) plus a few strong ones
        gates["g"] = F.logsigmoid(torch.randn(total, H, generator=gen, dtype=torch.float64) + 3.0)
    return (q, k, v), gates, w


def run_case(strategy, shard, inputs, gates, w):
    """Output and gradients of sum(o * w) for the given shard (leaves are cut from inputs)."""
    idx = shard.index
    leaves = [x[idx].clone().requires_grad_() for x in inputs]
    gate_leaves = {}
    for name, x in gates.items():
        gate_leaves[name] = (x[idx] if name == "g" else x).clone().requires_grad_()
    o = strategy(*leaves, shard, **gate_leaves)
    (o * w[idx]).sum().backward()
    grads = {n: x.grad for n, x in zip("qkv", leaves)}
    grads.update({n: x.grad for n, x in gate_leaves.items()})
    return o.detach(), grads


def check_case(rank, size, state, layout, mode, pattern, total, seed):
    doc_lens = doc_pattern(pattern, total, size, seed)
    inputs, gates, w = make_inputs(total, mode, seed)
    o_ref, g_ref = run_case(LocalLinearAttention(), build_shard(doc_lens), inputs, gates, w)
    shard = make_shard(doc_lens, layout, rank, size)
    o, grads = run_case(Lasp2LinearAttention(state.cp_group), shard, inputs, gates, w)
    what = f"rank {rank}/{size} {layout} {mode} {pattern} docs={doc_lens}"
    idx = shard.index
    torch.testing.assert_close(o, o_ref[idx], rtol=1e-10, atol=1e-11, msg=lambda m: f"o {what}: {m}")
    for name, ref in g_ref.items():
        got = grads[name]
        if name == "g_gamma":  # replicated gate: ranks hold partial sums, as with any shared weight
            dist.all_reduce(got, group=state.cp_group)
        else:
            ref = ref[idx]
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-11,
                                   msg=lambda m: f"d{name} {what}: {m}")


def cases_for(size):
    """Every size sees every mode and layout; the smaller sizes also every document pattern."""
    patterns = ("random", "aligned", "one") if size <= 4 else ("random",)
    out = []
    for layout in LAYOUTS:
        for mode in MODES:
            for p in patterns:
                out.append((layout, mode, p, 9 * size + 5, 1000 * size + len(out)))
    if size >= 2:  # a cross-rank document under the strongest decays, and a tiny stream
        out.append(("zigzag", "g", "one", 6 * size + 1, 7))
    if size == 8:  # fewer tokens than ranks: some ranks own nothing and still join collectives
        out.append(("contiguous", "g", "random", 5, 11))
        out.append(("zigzag", "g_gamma", "random", 11, 12))
    return out


def cp_state(rank, world, size):
    """A state whose cp_group is this rank's block of `size` ranks (None when left over).
    Every rank creates every group: new_group is collective over the default group."""
    mine = None
    for first in range(0, world - size + 1, size):
        ranks = list(range(first, first + size))
        group = dist.new_group(ranks)
        if rank in ranks:
            dims = ParallelDims.resolve(size, cp=size)
            mine = ParallelState(dims, rank, torch.device("cpu"), cp_rank=ranks.index(rank),
                                 cp_group=group)
    return mine


def _worker(rank, world):
    for size in range(1, world + 1):
        state = cp_state(rank, world, size)
        if state is not None:
            for case in cases_for(size):
                check_case(state.cp_rank, size, state, *case)
        dist.barrier()


def test_lasp2_matches_single_process_reference_for_cp_groups_1_to_8():
    run_distributed(_worker, 8)


def test_single_process_without_group_matches_local():
    """state.cp_group=None (no torch.distributed): LASP-2 reduces to the local strategy."""
    for layout in LAYOUTS:
        for mode in MODES:
            doc_lens = [7, 1, 12, 3]
            inputs, gates, w = make_inputs(sum(doc_lens), mode, 3)
            o_ref, g_ref = run_case(LocalLinearAttention(), build_shard(doc_lens), inputs, gates, w)
            o, g = run_case(Lasp2LinearAttention(None), make_shard(doc_lens, layout, 0, 1),
                            inputs, gates, w)
            torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
            for name in g_ref:
                torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-12)


def test_bad_inputs_name_the_argument():
    doc_lens = [10]
    shard = make_shard(doc_lens, "contiguous", 0, 1)
    strat = Lasp2LinearAttention(None)
    q = torch.randn(10, H, K)
    v = torch.randn(10, H, V)
    with pytest.raises(ValueError, match="layout"):
        strat(q, q, v, shard_from_index(doc_lens, torch.arange(10), "head_tail", 0, 1))
    with pytest.raises(ValueError, match="v must be"):
        strat(q, q, torch.randn(10, H + 1, V), shard)
    with pytest.raises(ValueError, match="tokens"):
        strat(q[:9], q[:9], v[:9], shard)
    with pytest.raises(ValueError, match="not both"):
        strat(q, q, v, shard, g_gamma=torch.zeros(H), g=torch.zeros(10, H))
    with pytest.raises(ValueError, match="g must be"):
        strat(q, q, v, shard, g=torch.zeros(10))
    with pytest.raises(ValueError, match="cp rank"):
        strat(q, q, v, shard_from_index([20], torch.arange(10, 20), "contiguous", 1, 2))
