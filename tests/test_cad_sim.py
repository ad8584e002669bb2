"""The CAD scale simulator's pure parts: WLB packing, 1F1B with stragglers, the lock-step
ticks, per-document CP's head-tail split and CAD's pooling of idle ranks."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cad_sim_baselines import per_doc_cp_layer_times, wlb_pack
from benchmarks.cad_sim_cad import plan_tick, tick_layer_time, unit_bytes
from benchmarks.cad_sim_model import SHAPES, GpuCosts, gpu_costs, pick_table
from benchmarks.cad_sim_pipeline import lockstep_ticks, one_f_one_b
from parallel.cad.tasks import CostModel


def test_wlb_pack_keeps_every_document_under_the_cap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 400)
    cap = lengths.sum() / 8 * 1.2
    b = wlb_pack(lengths, lengths.astype(float) ** 2, 8, cap)
    assert b.shape == lengths.shape and b.min() >= 0 and b.max() < 8
    tokens = np.bincount(b, lengths, minlength=8)
    assert tokens.sum() == lengths.sum()
    assert tokens.max() <= cap


def test_wlb_pack_balances_like_lpt():
    # no binding cap and workload = length: greedy least-loaded leaves buckets within one
    # document of each other
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 1000, 300)
    b = wlb_pack(lengths, lengths.astype(float), 6, cap=np.inf)
    tokens = np.bincount(b, lengths, minlength=6)
    assert tokens.max() - tokens.min() <= lengths.max()


def test_wlb_pack_falls_back_to_fewest_tokens_then_defers():
    # doc 2's least-work bucket (0) is full, bucket 1 has the fewest tokens and room
    assert wlb_pack([10, 1, 1], [1.0, 100.0, 100.0], 2, cap=10).tolist() == [0, 1, 1]
    # a document longer than the cap is never dropped: it is deferred, the short ones go
    # first (4 -> bucket 0, 4 -> bucket 1), then it joins the least-work bucket (tie: 0)
    assert wlb_pack([50, 4, 4], [50.0, 4.0, 4.0], 2, cap=10).tolist() == [0, 0, 1]
    assert wlb_pack([50, 4, 4], [50.0, 5.0, 4.0], 2, cap=10).tolist() == [1, 0, 1]


@pytest.mark.parametrize("p,m", [(1, 4), (2, 4), (4, 4), (4, 8), (8, 16)])
def test_1f1b_bubble_matches_theory(p, m):
    f, b = 1.0, 2.0
    span = one_f_one_b(np.full((p, m), f), np.full((p, m), b))
    busy = m * (f + b)
    assert (span - busy) / span == pytest.approx((p - 1) / (m + p - 1))


def test_1f1b_straggler_by_hand():
    # p=2, m=2, micro-batch 1 three times slower. Stage 0: F0 [0,1], F1 [1,4], B0 [4,6],
    # B1 [13,19]; stage 1: F0 [1,2], B0 [2,4], F1 [4,7], B1 [7,13]
    f = np.array([[1.0, 3.0]] * 2)
    b = np.array([[2.0, 6.0]] * 2)
    assert one_f_one_b(f, b) == pytest.approx(19.0)
    # the same work evenly spread finishes earlier: imbalance across micro-batches costs time
    assert one_f_one_b(np.full((2, 2), 2.0), np.full((2, 2), 4.0)) == pytest.approx(18.0)


@pytest.mark.parametrize("p,m", [(1, 3), (2, 4), (4, 8), (3, 2)])
def test_lockstep_ticks_respect_dependencies(p, m):
    ticks = lockstep_ticks(p, m)
    assert len(ticks) == 2 * (m + p - 1)
    at = {}
    for k, (kind, active) in enumerate(ticks):
        assert len({s for s, _ in active}) == len(active)  # a stage does one op per tick
        for s, j in active:
            assert (kind, s, j) not in at
            at[(kind, s, j)] = k
    assert len(at) == 2 * p * m
    for s in range(p):
        for j in range(m):
            assert at[("F", s, j)] < at[("B", s, j)]
            if s:
                assert at[("F", s - 1, j)] < at[("F", s, j)]
            if s < p - 1:
                assert at[("B", s + 1, j)] < at[("B", s, j)]
    # with equal ops every tick costs one op: the same span as 1F1B
    span = sum(1.0 if kind == "F" else 2.0 for kind, active in ticks if active)
    assert span == pytest.approx(one_f_one_b(np.ones((p, m)), np.full((p, m), 2.0)))


def _flop_costs() -> GpuCosts:
    """Attention priced in causal FLOPs (forward = 1/3.5 of forward + backward)."""
    cm = CostModel(4, 1, 128, 2, table=None)
    cm_fwd = CostModel(4, 1, 128, 2, table=None, nominal_tflops=400.0 * 3.5)
    return GpuCosts(SHAPES["8b"], 8, cm, cm_fwd, 1e-9, 2e-9, 400.0)


def test_per_doc_cp_head_tail_splits_one_document_evenly():
    gc = _flop_costs()
    whole = per_doc_cp_layer_times([8192], [0], 1, 1, gc, bw=np.inf)
    for c in (2, 4, 8):
        cp = per_doc_cp_layer_times([8192], [0], 1, c, gc, bw=np.inf)
        # the slowest rank runs 1/c of the document's attention and of its tokens
        assert cp["fwd"][0] == pytest.approx(whole["fwd"][0] / c, rel=1e-9)
        assert cp["bwd"][0] == pytest.approx(whole["bwd"][0] / c, rel=1e-9)
    # the all-gather is what per-document CP pays on top
    assert per_doc_cp_layer_times([8192], [0], 1, 4, gc, bw=1e9)["fwd"][0] > \
        per_doc_cp_layer_times([8192], [0], 1, 4, gc, bw=np.inf)["fwd"][0]


def test_cad_tick_pools_attention_onto_idle_ranks():
    gc = gpu_costs(SHAPES["8b"], 8, pick_table("h100")[2])
    busy = np.full(4, 16384, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    pt = plan_tick([busy, empty, empty, empty], gc, tolerance=0.1, block=128)
    attn = pt["attn_F"]
    assert attn.min() > 0  # dummy ranks serve
    assert attn.max() <= attn.mean() * 1.1 + 1e-12
    t = tick_layer_time(pt, "F", gc, bw=np.inf, resend=False)
    lin, att = gc.lin_fwd_tok * busy.sum(), gc.attn(busy, busy)[0].sum()
    # the busy rank keeps its linear work and about a quarter of the attention
    assert lin + att / 4 * 0.9 < t["time"] <= lin + att / 4 * 1.1
    assert unit_bytes(gc, "B", resend=True)["disp_q"] > unit_bytes(gc, "B", resend=False)["disp_q"]


def test_pick_table_auto_prefers_h200():
    gpu, path, table = pick_table("auto")
    assert "gemm_bf16" in table
    import os
    h200 = os.path.join(os.path.dirname(path), "cost_table_h200.json")
    assert gpu == ("h200" if os.path.exists(h200) else "h100")
