"""Planner and cost-model unit tests (single process, numpy only).

Balance within tolerance, every query token covered exactly once, block alignment,
determinism, the memory cap, dedicated servers, ping-pong halves, a preference for moving
work with the most compute per byte, and the measured-table cost model.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from parallel.cad.dispatch import transfers
from parallel.cad.metadata import decode, payload
from parallel.cad.planner import fitting_block, plan, server_memory, split_halves
from parallel.cad.tasks import (CostModel, TaskTable, causal_pairs, contiguous_pieces,
                              prefix_pairs)
from distca.data.distributions import sample_doc_lengths
from parallel.context.shard import build_shard

FLOPS = CostModel(table=None)


def streams(n_dp, tokens, dist, seed, max_len=None):
    rng = np.random.default_rng(seed)
    return [sample_doc_lengths(dist, tokens, rng, max_len=max_len or tokens) for _ in range(n_dp)]


def check_cover(pieces, p):
    """Every token of every piece is the query of exactly one part; parts stay inside the
    piece they came from (so the owner can find their rows)."""
    parts = p.parts
    assert (parts.q_end > parts.q_start).all()
    pc = parts.piece
    assert (parts.owner == pieces.rank[pc]).all() and (parts.doc == pieces.doc[pc]).all()
    assert (parts.q_start >= pieces.start[pc]).all()
    assert (parts.q_end <= pieces.start[pc] + pieces.length[pc]).all()
    # per piece, the parts tile it exactly: sort and check contiguity and total length
    o = np.lexsort((parts.q_start, pc))
    pc_s, qs, qe = pc[o], parts.q_start[o], parts.q_end[o]
    first = np.r_[True, pc_s[1:] != pc_s[:-1]]
    last = np.r_[first[1:], True]
    assert (qs[first] == pieces.start[pc_s[first]]).all()
    assert (qe[last] == (pieces.start + pieces.length)[pc_s[last]]).all()
    assert (qs[~first] == qe[np.nonzero(~first)[0] - 1]).all()
    assert np.unique(pc_s).size == pieces.rank.size


def check_block_aligned(pieces, p, block):
    """Cuts that are not piece boundaries sit on multiples of `block`."""
    parts = p.parts
    pc = parts.piece
    inner_start = parts.q_start != pieces.start[pc]
    inner_end = parts.q_end != pieces.start[pc] + pieces.length[pc]
    assert (parts.q_start[inner_start] % block == 0).all()
    assert (parts.q_end[inner_end] % block == 0).all()


def check_loads(pieces, p, cm):
    """The plan's per-server loads are the costs of the parts it placed there, each costed
    afresh (a split part must not keep its parent's cost), summed by a plain loop; and with
    the additive FLOPs model the total is conserved: every query was planned exactly once."""
    want = np.zeros_like(p.load_after)
    for i in range(len(p.parts)):
        want[p.server[i]] += float(cm.cost(p.parts.q_len[i], p.parts.q_end[i]))
    np.testing.assert_allclose(p.load_after, want, rtol=1e-9)
    if cm.table is None:
        before = cm.cost(pieces.length, pieces.start + pieces.length).sum()
        np.testing.assert_allclose(p.load_after.sum(), before, rtol=1e-9)


# Within the tolerance where blocks are fine enough for it; at 0.02 and 0 a cut can only land
# on a 128-token block, and the bound asserted is the imbalance measured when this test was
# written (seeded data, deterministic planner), so a planner that balances worse fails here.
@pytest.mark.parametrize("dist, n, cp, tol, measured", [
    ("pretrain", 64, 1, 0.05, None), ("longctx", 64, 1, 0.05, None),
    ("longctx", 32, 4, 0.1, None),
    ("pretrain", 48, 2, 0.02, {"flops": 1.0247, "table": 1.0241}),
    ("longctx", 128, 1, 0.0, {"flops": 1.0073, "table": 1.0189})])
def test_balance_within_tolerance_and_exact_cover(dist, n, cp, tol, measured):
    pieces = contiguous_pieces(streams(n // cp, 32768 * cp, dist, seed=n + cp), cp)
    for name, cm in (("flops", FLOPS), ("table", CostModel(table="h100"))):
        p = plan(pieces.tasks(), n, cm, tolerance=tol, block=128)
        check_cover(pieces, p)
        check_block_aligned(pieces, p, 128)
        check_loads(pieces, p, cm)
        assert p.imbalance_before > 1 + tol  # the case needed planning
        bound = 1 + tol if measured is None else measured[name] + 5e-4
        assert p.imbalance_after <= bound, (name, p.imbalance_after, bound)


def test_deterministic():
    pieces = contiguous_pieces(streams(96, 16384, "longctx", seed=3))
    a = plan(pieces.tasks(), 96, FLOPS, tolerance=0.05, block=64)
    copy = TaskTable(*(x.copy() for x in (pieces.tasks().piece, pieces.rank, pieces.doc,
                                           pieces.start, pieces.start + pieces.length)))
    b = plan(copy, 96, FLOPS, tolerance=0.05, block=64)
    for f in ("piece", "owner", "doc", "q_start", "q_end"):
        assert np.array_equal(getattr(a.parts, f), getattr(b.parts, f))
    assert np.array_equal(a.server, b.server)
    assert np.array_equal(a.load_after, b.load_after)


def test_dedicated_servers_take_all_work():
    pieces = contiguous_pieces(streams(16, 8192, "longctx", seed=5))
    p = plan(pieces.tasks(), 16, FLOPS, tolerance=0.05, block=32, servers=4)
    check_cover(pieces, p)
    assert set(np.unique(p.server)) <= set(p.servers.tolist()) and p.servers.size == 4
    assert p.imbalance_after <= 1.05
    idle = np.setdiff1d(np.arange(16), p.servers)
    assert (p.load_after[idle] == 0).all()


def memory_by_loop(parts, server, num_ranks, cm):
    """Bytes per server, by a plain loop over each server's parts in document order: q, o and
    lse per query, and one key prefix per run of parts of one document that meet end to
    start (the server's kernel segments share that prefix)."""
    mem = np.zeros(num_ranks)
    for s in range(num_ranks):
        mine = sorted((int(parts.doc[i]), int(parts.q_start[i]), int(parts.q_end[i]))
                      for i in np.nonzero(server == s)[0])
        for j, (doc, start, end) in enumerate(mine):
            mem[s] += (end - start) * cm.mem_per_q_token
            continues = j + 1 < len(mine) and mine[j + 1][0] == doc and mine[j + 1][1] == end
            if not continues:  # the segment ends here: its key prefix is [0, end)
                mem[s] += end * cm.mem_per_kv_token
    return mem


def test_memory_cap_is_met_or_refused():
    pieces = contiguous_pieces(streams(32, 16384, "longctx", seed=7))
    free = plan(pieces.tasks(), 32, FLOPS, tolerance=0.02, block=128)
    # the unconstrained plan piles key prefixes onto receivers; cap memory below its peak.
    # A tight cap leaves receivers no room for a long prefix, so balance is traded away,
    # but the cap always holds
    free_peak = server_memory(free.parts, free.server, 32, FLOPS).max()
    for frac in (0.95, 0.8):
        cap = frac * free_peak
        capped = plan(pieces.tasks(), 32, FLOPS, tolerance=0.02, block=128, memory_cap=cap)
        check_cover(pieces, capped)
        assert capped.memory.max() <= cap
        if frac == 0.95:
            assert capped.imbalance_after < 0.6 * capped.imbalance_before
    np.testing.assert_allclose(capped.memory, memory_by_loop(capped.parts, capped.server, 32, FLOPS))
    with pytest.raises(ValueError, match="memory_cap"):
        plan(pieces.tasks(), 32, FLOPS, memory_cap=1000.0)


def test_moves_the_most_compute_per_byte():
    """Rank 0 holds one long document and many short ones; its excess is more than all the
    short ones cost. Shedding the short ones first would send many tokens for little compute;
    the planner must shed part of the long document only (compute per byte ~ its length)."""
    rank0 = [4096] + [256] * 48
    others = [[512] * 32] * 7
    pieces = contiguous_pieces([rank0] + others)
    p = plan(pieces.tasks(), 8, FLOPS, tolerance=0.05, block=16)  # fine blocks: 128 rows of
    # a 4K prefix would be a tenth of a rank's load
    moved = p.server != p.parts.owner
    short_cost = FLOPS.cost(256, 256) * 48
    assert p.load_before[0] - p.load_before.mean() > short_cost
    assert moved.any()
    assert (p.parts.doc[moved] == 0).all()  # only the long document travels
    assert p.imbalance_after <= 1.05


def test_ping_pong_halves_balance_each_server():
    pieces = contiguous_pieces(streams(16, 16384, "longctx", seed=9))
    p = plan(pieces.tasks(), 16, FLOPS, tolerance=0.05, block=64)
    load = p.load_after.copy()
    half = split_halves(p, FLOPS, 64)
    check_cover(pieces, p)
    h0 = np.bincount(p.server[half == 0], p.cost[half == 0], minlength=16)
    h1 = np.bincount(p.server[half == 1], p.cost[half == 1], minlength=16)
    np.testing.assert_allclose(h0 + h1, load, rtol=1e-9)
    assert (np.abs(h0 - h1) <= 0.05 * load).all()


def test_contiguous_pieces_match_build_shard():
    docs = [[5, 17, 3, 40], [64], [1] * 9 + [30]]
    for cp in (1, 2, 3, 5):
        payloads = []
        for dp, lens in enumerate(docs):
            for c in range(cp):
                payloads.append(payload(build_shard(lens, c, cp, "contiguous"), dp))
        got, want = decode(payloads), contiguous_pieces(docs, cp)
        for f in ("rank", "doc", "start", "length", "local"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), (cp, f)


def test_decode_rejects_inconsistent_shards():
    a = payload(build_shard([4, 4], 0, 2), 0)
    b = payload(build_shard([5, 3], 1, 2), 0)
    with pytest.raises(ValueError, match="doc_lens"):
        decode([a, b])
    with pytest.raises(ValueError, match="exactly once"):  # the same half twice
        decode([a, payload(build_shard([4, 4], 0, 2), 0)])
    with pytest.raises(ValueError, match="exactly once"):  # half the tokens missing
        decode([a])


def test_kv_sent_once_per_destination():
    """Each (server, document) receives every needed key exactly once, whatever number of
    parts of that document it runs."""
    pieces = contiguous_pieces(streams(8, 4096, "longctx", seed=11), cp=2)
    p = plan(pieces.tasks(), 16, FLOPS, tolerance=0.0, block=16)
    split_halves(p, FLOPS, 16)
    tr = transfers(p.parts, p.server, pieces)
    key = tr.kv_dst * (1 << 40) + tr.kv_doc
    for k in np.unique(key):
        m = key == k
        s, e = np.sort(tr.kv_start[m]), np.sort(tr.kv_end[m])
        assert s[0] == 0 and (s[1:] == e[:-1]).all()  # disjoint, contiguous from 0
        srv, doc = divmod(int(k), 1 << 40)
        need = p.parts.q_end[(p.server == srv) & (p.parts.doc == doc)].max()
        assert e[-1] == need


def test_kv_sent_once_per_step_across_ping_pong_halves():
    """With ping-pong, a server whose two halves need the same document's keys (the part cut
    at the middle of its load) receives them once: the second half's transfer skips what the
    first sent, so both halves together send exactly the one-transfer amount, and less than
    two independent halves would (the dedup triggers on this batch)."""
    def remote_kv(tr):
        return int(((tr.kv_end - tr.kv_start)[tr.kv_src != tr.kv_dst]).sum())

    pieces = contiguous_pieces(streams(8, 4096, "longctx", seed=11), cp=2)
    p = plan(pieces.tasks(), 16, FLOPS, tolerance=0.0, block=16)
    half = split_halves(p, FLOPS, 16)
    groups = [half == 0, half == 1]
    independent = [transfers(p.parts.take(g), p.server[g], pieces) for g in groups]
    first = transfers(p.parts.take(groups[0]), p.server[groups[0]], pieces)
    second = transfers(p.parts.take(groups[1]), p.server[groups[1]], pieces, held=first)
    whole = transfers(p.parts, p.server, pieces)
    assert remote_kv(first) + remote_kv(second) == remote_kv(whole)
    assert remote_kv(first) + remote_kv(second) < sum(remote_kv(t) for t in independent)
    # ... and the second half never re-sends a key range the first sent to that server
    sent = {}
    for tr in (first, second):
        for dst, doc, s, e in zip(tr.kv_dst, tr.kv_doc, tr.kv_start, tr.kv_end):
            for a, b in sent.get((dst, doc), []):
                assert e <= a or s >= b, (dst, doc, (s, e), (a, b))
            sent.setdefault((dst, doc), []).append((s, e))


def test_bad_arguments_name_the_field():
    t = contiguous_pieces([[10, 20]]).tasks()
    for kwargs, field in (({"tolerance": -1}, "tolerance"), ({"block": 0}, "block"),
                          ({"memory_cap": -5}, "memory_cap"), ({"servers": 9}, "servers")):
        with pytest.raises(ValueError, match=field):
            plan(t, 1 if field != "servers" else 4, FLOPS, **kwargs)
    with pytest.raises(ValueError, match="owners"):
        plan(t, 0, FLOPS)


def test_planner_is_fast_at_512_ranks():
    """The brief's budget is 20 ms per step at 512 ranks; on a shared CPU allow 5x slack so
    only a real regression (a Python loop over tasks or tokens) fails here."""
    pieces = contiguous_pieces(streams(512, 131072, "pretrain", seed=1))
    best = min(_cpu_ms(lambda: plan(pieces.tasks(), 512, CostModel(), tolerance=0.05))
               for _ in range(3))
    assert best < 100, best


def _cpu_ms(fn):
    t = time.process_time()
    fn()
    return (time.process_time() - t) * 1e3


def test_cost_model_table():
    table = {"device": "test", "kernel": "test", "num_heads_q": 2, "head_dim": 4,
             "q_lens": [128, 512], "kv_lens": [128, 512, 2048],
             "fwd_ms": [[1.0, 3.0, 10.0], [None, 8.0, 30.0]],
             "bwd_ms": [[2.0, 6.0, 20.0], [None, 16.0, 60.0]]}
    cm = CostModel(2, 1, 4, table=table)
    got = cm.cost([128, 128, 512, 512], [128, 2048, 512, 2048])
    np.testing.assert_allclose(got, np.array([3.0, 30.0, 24.0, 90.0]) * 1e-3, rtol=1e-12)
    # interpolation lies between neighbours; tiny queries cost as a padded tile; cost grows
    mid = cm.cost(256, 1024)
    assert cm.cost(128, 512) < mid < cm.cost(512, 2048)
    assert cm.cost(3, 3) == pytest.approx(cm.cost(128, 128))
    x = cm.cost(np.full(50, 300), np.linspace(300, 4000, 50))
    assert (np.diff(x) > 0).all()
    # twice the heads, twice the time
    np.testing.assert_allclose(CostModel(4, 2, 4, table=table).cost(200, 900),
                               2 * cm.cost(200, 900), rtol=1e-12)
    with pytest.raises(ValueError, match="q_lens"):
        CostModel(table={k: v for k, v in table.items() if k != "q_lens"})
    with pytest.raises(ValueError, match="num_heads_kv"):
        CostModel(4, 3, 8, table=None)


def test_flops_cost_model_is_additive():
    """With FLOPs, splitting a task conserves cost: the planner's bookkeeping is exact."""
    s, e, cut = 1000, 5000, 2345
    whole = FLOPS.cost(e - s, e)
    parts = FLOPS.cost(cut - s, cut) + FLOPS.cost(e - cut, e)
    np.testing.assert_allclose(whole, parts, rtol=1e-12)
    np.testing.assert_allclose(prefix_pairs(s, e), causal_pairs(e - s, e))


def test_block_fits_pieces_shorter_than_it():
    """parallel.cad.block=128 with 128 tokens per rank (cp=3, one 384-token document): cuts on
    128-token blocks can only move whole pieces, so the plan stays as imbalanced as before.
    The fitted block balances it within the tolerance; at long context it stays 128."""
    short = contiguous_pieces([[384]], cp=3).tasks()
    coarse = plan(short, 3, FLOPS, tolerance=0.1, block=128)
    assert coarse.imbalance_after == coarse.imbalance_before > 1.6
    block = fitting_block(short, 3, 128, 0.1)
    assert block < 128 and block & (block - 1) == 0  # a power of two below the configured one
    assert plan(short, 3, FLOPS, tolerance=0.1, block=block).imbalance_after <= 1.1
    long = contiguous_pieces([[131072]], cp=8).tasks()
    assert fitting_block(long, 8, 128, 0.1) == 128
    assert fitting_block(long, 8, 96, 0.1) == 96  # never above the configured block
    # dedicated servers: the mean is over the servers, so the same block fits
    assert fitting_block(short, 1, 128, 0.1) >= block
