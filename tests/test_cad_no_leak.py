"""CAD keeps nothing alive from one step to the next, under every recompute policy.

A saved tensor that a later autograd Function returns ties a cycle through the C++ graph,
which Python's collector cannot see; where that graph is never run backward (the recomputed
forward of a checkpointed block) it leaked every step: on one H100, nano-batches with full
recompute grew by about 5 GB per 16K step until out of memory (issue 32). Here: the live
tensor bytes and CAD's per-call objects after the third step equal those after the first.
"""
from __future__ import annotations

import gc

import pytest
import torch

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from distca.model.softmax_attention import SoftmaxAttention
from parallel.cad.attention import CADAttention
from parallel.config import CADConfig
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard

DOCS = [96, 160, 64, 192]


def _live():
    gc.collect()
    storages, calls = {}, 0
    for o in gc.get_objects():
        if type(o) is torch.Tensor:
            st = o.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif type(o).__name__ in ("NanoCall", "StepRuntime"):
            calls += 1
    return sum(storages.values()), calls


@pytest.mark.parametrize("overlap", ["nanobatch", "halves", "none"])
@pytest.mark.parametrize("recompute", ["full", "selective", "none"])
def test_nothing_accumulates_over_steps(overlap, recompute):
    mcfg = to_typed(compose_config(["experiment=tiny", f"model.recompute={recompute}"])).model
    model = build_model(mcfg, 64, LocalCoreAttention(), LocalLinearAttention(), seed=0)
    cad = CADAttention(options=CADConfig(overlap=overlap, ping_pong=overlap != "none", cost_table="none"))
    for blk in model.blocks:
        if isinstance(blk.mixer, SoftmaxAttention):
            blk.mixer.core_attention = cad
    tokens = torch.randint(0, 64, (sum(DOCS),), generator=torch.Generator().manual_seed(0))
    labels = next_token_labels(tokens, DOCS)
    seen = []
    for _ in range(3):
        shard = build_shard(DOCS)  # a fresh micro-batch each step, as the trainer draws them
        model(tokens, shard, labels).backward()
        model.zero_grad(set_to_none=True)
        del shard
        seen.append(_live())
    assert seen[2] == seen[0], f"live (tensor bytes, CAD call objects) per step: {seen}"
