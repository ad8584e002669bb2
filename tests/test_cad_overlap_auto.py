"""`parallel.cad.overlap=auto` (the default): each micro-batch runs the overlap mode its plan's
cost model prices cheapest (parallel/cad/overlap_choice.py).

- the choice itself: nothing to exchange or a fast link -> none; an exchange about the size
  of the kernel with no nano-batch option -> halves; a slow link with the layer's projections
  and MLP to hide under -> nanobatch;
- at cp=3 (gloo, fp64, a 3-layer model) a skewed micro-batch (one long document across the
  ranks and short ones) and a balanced one (one whole document per rank): every rank picks the
  same mode, the choice follows the link speed (slow: nano-batches for the skewed batch; fast:
  none), the balanced batch runs in place with no all-to-all at all, and outputs and
  gradients equal one process's (local attention) in every case;
- `parallel.cad.link_gbps=0` measures the link once, and every rank prices with the same
  number (the group's slowest, agreed by one all-reduce).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from parallel.cad.overlap_choice import LayerPrice, choose
from parallel.comm_counter import CommCounter
from parallel.config import CADConfig, ModelShape, ParallelConfig
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed

VOCAB = 64
SKEWED = [70, 3, 5, 4, 2, 6]   # 90 tokens: one document across all three ranks, short ones
BALANCED = [30, 30, 30]        # one whole document per rank: nothing to move


def test_choice_follows_the_exchange_and_what_can_hide_it():
    layer = dict(before=1.0, after=4.0)
    assert choose(LayerPrice(0.0, 2.0, **layer), halves=True, nanobatch=True) == "none"
    assert choose(LayerPrice(1e-4, 2.0, **layer), halves=True, nanobatch=True) == "none"  # fast link
    assert choose(LayerPrice(2.0, 2.0, 0.0, 0.0), halves=True, nanobatch=False) == "halves"
    assert choose(LayerPrice(2.0, 2.0, 0.0, 0.0), halves=False, nanobatch=False) == "none"
    assert choose(LayerPrice(8.0, 2.0, **layer), halves=True, nanobatch=True) == "nanobatch"
    # the same slow exchange with nothing to hide it under the MLP: halves, not nano-batches
    assert choose(LayerPrice(8.0, 2.0, 0.0, 0.0), halves=True, nanobatch=True) == "halves"


def _model(plan, layers="SSS"):
    mcfg = to_typed(compose_config(["experiment=tiny", f"model.layers={layers}"])).model
    return build_model(mcfg, VOCAB, plan.core_attention if plan else LocalCoreAttention(),
                       plan.linear_attention if plan else LocalLinearAttention(), seed=0).double().train()


def _grads(model, doc_lens, shard):
    tokens = torch.randint(0, VOCAB, (sum(doc_lens),), generator=torch.Generator().manual_seed(1))
    labels = next_token_labels(tokens, doc_lens)
    model.zero_grad(set_to_none=True)
    hidden = model(shard.local(tokens), shard)  # final hidden states, local order
    loss = model(shard.local(tokens), shard, shard.local(labels))
    loss.backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, world):
    ref = _model(None)
    for gbps, want_skewed in ((1e-6, "nanobatch"), (1e9, "none")):
        cfg = ParallelConfig(cp=world, cp_algo="cad",
                             cad=CADConfig(tolerance=0.0, block=2, cost_table="none", link_gbps=gbps))
        plan = ParallelPlan(cfg, ModelShape(4, 2, "SSS"), world)
        plan.setup()
        model = _model(plan)
        cad = plan.core_attention
        for docs, want in ((SKEWED, want_skewed), (BALANCED, "none")):
            shard = plan.build_shard(docs)
            with CommCounter() as comm:
                hidden, grads = _grads(model, docs, shard)
            m = cad.step_metrics()
            mode = ["none", "halves", "nanobatch"][int(m["cad_overlap"])]
            everyone = [None] * world
            dist.all_gather_object(everyone, mode)
            assert everyone == [mode] * world, (gbps, docs, everyone)
            assert mode == want, (gbps, docs, mode, m)
            if docs is BALANCED:  # in place: not one all-to-all in forward or backward
                assert comm.calls.get("all_to_all_single", 0) == 0, comm.calls
                assert m["cad_bytes"] == 0
            else:
                assert m["cad_moved_work"] > 0, m
            one = build_shard(docs)
            ref_hidden, ref_grads = _grads(ref, docs, one)
            torch.testing.assert_close(hidden, shard.local(ref_hidden), rtol=1e-10, atol=1e-10)
            for name, g in grads.items():  # each rank's share of the loss: summed over the group
                dist.all_reduce(g)
                torch.testing.assert_close(g, ref_grads[name], rtol=1e-9, atol=1e-10,
                                           msg=f"{gbps} {docs} d{name}")
    cfg = ParallelConfig(cp=world, cp_algo="cad", cad=CADConfig(tolerance=0.0, block=2, cost_table="none",
                                                                link_gbps=0))
    plan = ParallelPlan(cfg, ModelShape(4, 2, "SSS"), world)
    plan.setup()
    _grads(_model(plan), SKEWED, plan.build_shard(SKEWED))
    rates = [None] * world
    dist.all_gather_object(rates, plan.core_attention.planner.link_rate)
    assert rates[0] > 0 and rates == [rates[0]] * world, rates


@pytest.mark.slow
def test_auto_picks_one_mode_everywhere_and_matches_one_process():
    run_distributed(_worker, 3)
