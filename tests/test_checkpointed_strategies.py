"""Every context-parallel strategy under activation recompute (`model.recompute`):

- full: each checkpointed block is recomputed exactly once per backward: a model of L layers
  calls its strategy 2 L times per micro-batch (L forwards, L recomputes), counted;
- selective: the attention half is never recomputed (L calls), only the MLP half;
- every rank issues the same collectives (counted per operation, compared across ranks);
- gradients equal those of the same model without checkpointing (fp64, same layout).

Before the fix, CAD's server and LASP-2's intra-rank kernel kept an autograd graph built in
forward and differentiated it with a nested backward; under non-reentrant checkpointing
that nested backward re-ran the whole block: LASP-2 made 9 strategy calls for 3 layers,
and CAD re-ran its all-to-alls on the ranks that had served something only, which hung or
broke the group's collectives. One spawn per world size runs every case.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from parallel.config import CADConfig, ModelShape, ParallelConfig
from parallel.comm_counter import CommCounter
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed

VOCAB = 64
CAD_MOVING = {"tolerance": 0.0, "block": 2, "cost_table": "none"}  # tiny sizes: force moves
# (label, layers, dp, cp, cp_algo, ulysses, CAD options)
CASES = {
    3: [("cad halves", "SSS", 1, 3, "cad", 1, {**CAD_MOVING, "overlap": "halves"}),
        ("cad servers=1", "SSS", 1, 3, "cad", 1, {**CAD_MOVING, "servers": 1, "overlap": "halves"}),
        ("cad ping_pong=off", "SSS", 3, 1, "cad", 1, {**CAD_MOVING, "ping_pong": False, "overlap": "halves"}),
        ("cad defaults", "SSS", 1, 3, "cad", 1, {}),
        ("cad nanobatch backward=resend", "SSS", 1, 3, "cad", 1, {**CAD_MOVING, "backward": "resend"}),
        ("cad halves backward=resend", "SSS", 1, 3, "cad", 1,
         {**CAD_MOVING, "backward": "resend", "overlap": "halves"}),
        ("cad overlap=nanobatch", "SSS", 1, 3, "cad", 1, {**CAD_MOVING, "overlap": "nanobatch"}),
        ("lasp2 + cad nanobatch (hybrid)", "LSL", 1, 3, "cad", 1,
         {**CAD_MOVING, "overlap": "nanobatch"}),
        ("ring", "SSS", 1, 3, "ring", 1, {}),
        ("allgather", "SSS", 1, 3, "allgather", 1, {}),
        ("lasp2 + allgather", "LLL", 1, 3, "allgather", 1, {}),
        ("lasp2 + cad halves (hybrid)", "LSL", 1, 3, "cad", 1, {**CAD_MOVING, "overlap": "halves"})],
    4: [("cad halves dp=2 cp=2", "SSS", 2, 2, "cad", 1, {**CAD_MOVING, "overlap": "halves"}),
        ("ulysses (kv heads < degree)", "SSS", 1, 4, "ulysses", 1, {}),
        ("usp cp=4 ulysses=2", "SSS", 1, 4, "usp", 2, {}),
        ("cad nanobatch dp=2 cp=2", "SSS", 2, 2, "cad", 1, {**CAD_MOVING, "overlap": "nanobatch"})],
}
DOCS = [[19, 5, 30, 2, 8], [3, 61], [40, 24]]  # one micro-batch per DP rank, 64 tokens each


class Counting:
    """A strategy that counts its calls (and passes everything else through); under CAD's
    nano-batches a layer's call is its two phased nano-batches, counted once."""

    def __init__(self, inner):
        self.inner, self.calls, self.nano_calls = inner, 0, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    # the nano-batch interface (distca/model/nano_batches.py), declared so the model sees it
    def nano_rows(self, shard, device, layer):  # strategies without nano-batches: never split
        inner = getattr(self.inner, "nano_rows", None)
        return inner(shard, device, layer) if inner is not None else None

    def start(self, q, k, v, shard, nano, scale):
        self.calls += nano == 0
        self.nano_calls += 1
        return self.inner.start(q, k, v, shard, nano, scale)

    def serve(self, handle):
        return self.inner.serve(handle)

    def collect(self, handle):
        return self.inner.collect(handle)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _grads(model, recompute, ids, labels, shard, counters):
    model.cfg.recompute = recompute
    model.zero_grad(set_to_none=True)
    for c in counters:
        c.calls = 0
    with CommCounter() as comm:
        loss = model(ids, shard, labels)
        loss.backward()
    return ([p.grad.clone() for p in model.parameters()], [c.calls for c in counters],
            dict(comm.calls))


def _worker(rank, world, cases):
    for label, layers, dp, cp, algo, ulysses, options in cases:
        mcfg = to_typed(compose_config(["experiment=tiny", f"model.layers={layers}"])).model
        pcfg = ParallelConfig(dp=dp, cp=cp, cp_algo=algo, ulysses=ulysses, cad=CADConfig(**options))
        plan = ParallelPlan(pcfg, ModelShape(mcfg.heads, mcfg.kv_heads, layers), world)
        plan.setup()  # collective (process groups): same order on every rank
        core, linear = Counting(plan.core_attention), Counting(plan.linear_attention)
        model = build_model(mcfg, VOCAB, core, linear, seed=0).double().train()
        doc_lens = DOCS[plan.dp_rank % len(DOCS)]
        g = torch.Generator().manual_seed(plan.dp_rank)
        tokens = torch.randint(0, VOCAB, (sum(doc_lens),), generator=g)
        shard = plan.build_shard(doc_lens)
        ids, labels = shard.local(tokens), shard.local(next_token_labels(tokens, doc_lens))
        counters = [core, linear]
        plain, _, _ = _grads(model, "none", ids, labels, shard, counters)
        if algo == "cad" and options.get("overlap") == "nanobatch":  # phased
            assert core.nano_calls == 2 * layers.count("S"), (label, core.nano_calls)
            # ... and gives the gradients of the one-call path (fp64)
            core.inner.options.overlap = "halves"
            one_call, _, _ = _grads(model, "none", ids, labels, shard, counters)
            core.inner.options.overlap = "nanobatch"
            for (name, _), a, b in zip(model.named_parameters(), plain, one_call):
                err = (a - b).abs().max().item()
                assert err <= 1e-12 * max(1.0, b.abs().max().item()), f"{label}: d{name} nano vs one call {err}"
        for mode, per_layer in (("full", 2), ("selective", 1)):
            got, calls, comm = _grads(model, mode, ids, labels, shard, counters)
            want = [per_layer * layers.count("S"), per_layer * layers.count("L")]
            assert calls == want, f"{label} {mode}: strategy calls (softmax, linear) {calls}, expected {want}"
            everyone = [None] * world
            dist.all_gather_object(everyone, comm)
            assert all(c == everyone[0] for c in everyone), f"{label} {mode}: ranks' collectives differ {everyone}"
            for (name, _), a, b in zip(model.named_parameters(), got, plain):
                err = (a - b).abs().max().item()
                assert err <= 1e-12 * max(1.0, b.abs().max().item()), f"{label} {mode}: d{name} differs by {err}"


@pytest.mark.parametrize("world_size", sorted(CASES))
def test_strategies_recompute_once_under_checkpointing(world_size):
    run_distributed(_worker, world_size, CASES[world_size])
