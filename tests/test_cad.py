"""CAD against the single-process reference: outputs and q/k/v gradients, fp64, gloo on CPU.

One spawn per world size (1..8) runs many cases: DP-only and DP x CP layouts, in-place and
dedicated servers, with and without ping-pong, documents from one huge one to many tiny
ones. The reference is `LocalCoreAttention` over each DP replica's whole micro-batch stream.
Small blocks and tolerances make the planner move and split work even at these sizes
(each case asserts that something actually moved when the layout was imbalanced).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torch.distributed as dist

from parallel.comm_counter import CommCounter
from parallel.cad.attention import CADAttention
from parallel.cad.planner import server_ranks
from parallel.config import CADConfig
from parallel.context.local import LocalCoreAttention
from parallel.context.shard import build_shard
from parallel.dims import ParallelDims, ParallelState
from tests.distributed_utils import run_distributed

HQ, HKV, D = 4, 2, 8


def doc_mix(pattern: str, total: int, rng: np.random.Generator) -> list[int]:
    if pattern == "huge":
        return [total]
    if pattern == "tiny":
        lens = rng.integers(1, 6, size=total).tolist()
    elif pattern == "mixed":  # one long document among short ones
        long = int(total * 0.6)
        lens = [long] + rng.integers(1, 12, size=total).tolist()
        rng.shuffle(lens)
    else:
        raise ValueError(pattern)
    out, left = [], total
    for x in lens:
        if left == 0:
            break
        out.append(min(x, left))
        left -= out[-1]
    if left:
        out.append(left)
    return out


def dp_stream(case_seed: int, dp_rank: int, pattern: str, total: int):
    """The micro-batch of one DP replica: documents, q/k/v and loss weights (fp64)."""
    rng = np.random.default_rng(case_seed * 100 + dp_rank)
    # DP replicas get different mixes (the imbalance CAD removes across DP ranks)
    pat = pattern if pattern != "per_dp" else ("huge", "tiny", "mixed")[dp_rank % 3]
    doc_lens = doc_mix(pat, total, rng)
    g = torch.Generator().manual_seed(case_seed * 100 + dp_rank)
    q = torch.randn(total, HQ, D, generator=g, dtype=torch.float64)
    k = torch.randn(total, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(total, HKV, D, generator=g, dtype=torch.float64)
    w = torch.randn(total, HQ, D, generator=g, dtype=torch.float64)
    return doc_lens, (q, k, v), w


def assert_close(got, want, what):
    """fp64 comparison (torch.testing's version imports DTensor: seconds per process)."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if got.numel() == 0:
        return
    err = (got - want).abs().max().item()
    assert err <= 1e-12 + 1e-10 * want.abs().max().item(), f"{what}: max error {err:.3g}"


def reference(doc_lens, qkv, w, scale):
    leaves = [x.clone().requires_grad_() for x in qkv]
    o = LocalCoreAttention()(*leaves, build_shard(doc_lens), scale)
    (o * w).sum().backward()
    return o.detach(), [x.grad for x in leaves]


def cases_for(world: int):
    """(dp, cp, servers, ping_pong, pattern, tokens per dp rank, tolerance, block, backward)."""
    layouts = [(world, 1)]
    for cp in range(2, world + 1):
        if world % cp == 0:
            layouts.append((world // cp, cp))
    out = []
    patterns = ("per_dp", "huge", "tiny", "mixed")
    for i, (dp, cp) in enumerate(layouts):
        for j, pattern in enumerate(patterns):
            if world > 4 and (i + j) % 2:  # big worlds: half the patterns per layout, rotating,
                continue                    # so each pattern still meets every world size
            ping = (i + j) % 4 < 2
            tokens = 24 * cp + 7 * j + dp  # not a multiple of anything, so pieces are ragged
            backward = "resend" if (i + j) % 3 == 1 else "stateful"
            out.append((dp, cp, 0, ping, pattern, tokens, 0.0, 2 + (j % 3), backward))
    if world >= 3:  # dedicated servers: tokens live everywhere, attention runs on K ranks
        out.append((world, 1, 2, True, "per_dp", 40, 0.05, 4, "resend"))
        out.append((1, world, world - 1, False, "huge", 12 * world + 5, 0.0, 3, "stateful"))
    if world >= 2:  # a micro-batch with fewer tokens than ranks: some own nothing
        out.append((1, world, 0, True, "mixed", world - 1 if world > 2 else 3, 0.0, 1, "resend"))
    return out


def _worker(rank, world, cases):
    states = {}
    for n, (dp, cp, servers, ping, pattern, tokens, tol, block, backward) in enumerate(cases):
        if (dp, cp) not in states:
            states[(dp, cp)] = ParallelState.create(ParallelDims.resolve(world, dp=dp, cp=cp))
        state = states[(dp, cp)]
        doc_lens, qkv, w = dp_stream(1000 * world + n, state.dp_rank, pattern, tokens)
        scale = 0.3
        o_ref, g_ref = reference(doc_lens, qkv, w, scale)
        shard = build_shard(doc_lens, state.cp_rank, cp, "contiguous")
        leaves = [shard.local(x).clone().requires_grad_() for x in qkv]
        strat = CADAttention(state.dpcp_group, state.dp_rank,
                             CADConfig(tolerance=tol, servers=servers, block=block, ping_pong=ping,
                                       cost_table="none", backward=backward))
        saved = []  # bytes CAD keeps for its backward on this rank
        with CommCounter() as comm:
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
                o = strat(*leaves, shard, scale)
            (o * shard.local(w)).sum().backward()
        what = (f"rank {rank}/{world} dp={dp} cp={cp} servers={servers} ping_pong={ping} "
                f"backward={backward} {pattern} docs={doc_lens}")
        if backward == "resend":
            # the server keeps nothing: each rank holds q, k, v, o and the LSE of its own
            # tokens, whatever it served
            el, t_loc = leaves[0].element_size(), shard.num_tokens
            own = t_loc * (2 * HQ + 2 * HKV) * D * el + t_loc * HQ * el  # LSE in the input dtype (fp64 here)
            assert sum(saved) == own, (what, saved, own)
        assert_close(o.detach(), shard.local(o_ref), f"o {what}")
        for name, x, ref in zip("qkv", leaves, g_ref):
            assert_close(x.grad, shard.local(ref), f"d{name} {what}")
        m = strat.last_metrics
        if backward == "stateful":  # what the all-to-alls really sent (gloo) is what the plan says
            sent = torch.tensor([float(comm.by_op.get("all_to_all_single", 0))], dtype=torch.float64)
            dist.all_reduce(sent)
            assert sent.item() == m["cad_bytes"], (what, sent.item(), m["cad_bytes"])
        assert set(m) == {"cad_imbalance_before", "cad_imbalance_after", "cad_bytes",
                          "cad_moved_work", "cad_moved_queries", "cad_block", "cad_server_bytes",
                          "cad_plan_ms", "cad_overlap"}, m
        assert m["cad_block"] <= block, (what, m)
        # the planner did its job: with tolerance 0 and small blocks an imbalanced step
        # must come out better balanced, by running attention off the ranks that own it
        if (world > 1 and servers == 0 and tol == 0.0 and tokens >= 8 * world
                and m["cad_imbalance_before"] > 1.5):
            assert m["cad_imbalance_after"] < m["cad_imbalance_before"], (what, m)
            assert m["cad_moved_work"] > 0 and m["cad_moved_queries"] > 0, (what, m)
        served = sum(L.num_server_queries for L in strat._layouts(o, leaves[1], shard))
        if servers:
            # dedicated servers: the others serve nothing, and every query token owned by a
            # non-server is counted as moved (servers may also trade work among themselves)
            is_server = rank in server_ranks(world, servers).tolist()
            assert is_server or served == 0, f"{what}: non-server rank {rank} served {served}"
            owned_elsewhere = torch.tensor([0 if is_server else shard.num_tokens])
            dist.all_reduce(owned_elsewhere)
            assert m["cad_moved_queries"] >= owned_elsewhere.item() > 0, (what, m)
        # every query token of the group is served exactly once, somewhere
        counts = torch.tensor([served, shard.num_tokens])
        dist.all_reduce(counts)
        assert counts[0] == counts[1], (what, counts.tolist())
        # the next layer: other q/k/v on the same shard reuse the plan (no new planning, no
        # metadata all-gather) and match the reference for their own values
        planned = len(strat._since_step)
        qkv2 = [x.flip(-1) * 0.5 for x in qkv]
        o2_ref, _ = reference(doc_lens, qkv2, w, scale)
        o2 = strat(*[shard.local(x) for x in qkv2], shard, scale)
        assert len(strat._since_step) == planned, f"{what}: the second layer planned again"
        assert_close(o2, shard.local(o2_ref), f"o of a second layer {what}")


@pytest.mark.parametrize("world_size", range(1, 9))
def test_cad_matches_single_process_reference(world_size):
    run_distributed(_worker, world_size, cases_for(world_size))


def test_cad_without_process_group_matches_local():
    """No torch.distributed at all (one process): CAD runs its own tasks in place."""
    doc_lens, qkv, w = dp_stream(5, 0, "mixed", 37)
    o_ref, g_ref = reference(doc_lens, qkv, w, 0.5)
    shard = build_shard(doc_lens)
    leaves = [x.clone().requires_grad_() for x in qkv]
    strat = CADAttention(options=CADConfig(cost_table="none", block=4))
    o = strat(*leaves, shard, 0.5)
    (o * w).sum().backward()
    assert_close(o.detach(), o_ref, "o")
    for name, x, ref in zip("qkv", leaves, g_ref):
        assert_close(x.grad, ref, f"d{name}")
    assert strat.last_metrics["cad_bytes"] == 0


@pytest.mark.parametrize("options, field", [
    ({"tolerance": -0.1}, "tolerance"),
    ({"block": 0}, "block"),
    ({"block": 2.5}, "block"),
    ({"servers": 3}, "servers"),
    ({"servers": -1}, "servers"),
    ({"ping_pong": "yes"}, "ping_pong"),
    ({"backward": "keep"}, "backward"),
    ({"overlap": "always"}, "overlap"),
    ({"memory_cap": 0}, "memory_cap"),
    ({"cost_table": "a100"}, "cost_table"),
])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=f"parallel.cad.{field}"):
        CADAttention(options=CADConfig(**options))


def test_tensors_not_in_shard_order_are_rejected():
    shard = build_shard([5, 5])
    q = torch.zeros(9, HQ, D)
    k = torch.zeros(9, HKV, D)
    with pytest.raises(ValueError, match="tokens"):
        CADAttention(options=CADConfig(cost_table="none"))(q, k, k, shard, 1.0)


def test_step_metrics_cover_every_micro_batch():
    """A step's imbalance is its summed busiest-rank load over its summed mean load (what the
    step's attention time follows), not the last micro-batch's nor the mean of ratios."""
    from parallel.cad.attention import step_metrics
    mb = [dict(max_before=10.0, mean_before=5.0, max_after=6.0, mean_after=5.0, bytes=100.0,
               cost=20.0, moved_cost=4.0, moved_queries=7.0, block=64, server_bytes=10.0, plan_ms=1.0),
          dict(max_before=6.0, mean_before=6.0, max_after=6.0, mean_after=6.0, bytes=0.0,
               cost=24.0, moved_cost=0.0, moved_queries=0.0, block=128, server_bytes=30.0, plan_ms=2.0)]
    m = step_metrics(mb)
    assert m["cad_imbalance_before"] == pytest.approx(16 / 11)  # last: 1.0; mean of ratios: 1.5
    assert m["cad_imbalance_after"] == pytest.approx(12 / 11)
    assert m["cad_moved_work"] == pytest.approx(4 / 44)
    assert (m["cad_bytes"], m["cad_moved_queries"], m["cad_block"], m["cad_plan_ms"]) == (100, 7, 64, 3)
    assert m["cad_server_bytes"] == 30  # the peak over micro-batches, not a sum
    assert step_metrics([]) == {}
