"""CAD's nano-batch ping-pong (`parallel.cad.overlap=nanobatch`): the order of work.

One softmax layer at cp=2 over a micro-batch of several documents, recorded as a timeline
of collectives posted, waits, projections and MLPs. The schedule must be (per rank):
nano-batch 0's q/k/v all-to-all is posted before nano-batch 1's projections and waited for
after them; nano-batch 1's o return is posted before nano-batch 0's MLP and waited for after
it. So each nano-batch's communication is in flight while the other computes; with the
resend backward too (the LSE returns beside o, and the backward resends q/k/v, o and LSE). The planner
splits whole documents, equal tokens per rank where the documents allow, and each
nano-batch is planned from its own pieces. (Gradients: tests/test_checkpointed_strategies.py;
training parity: tests/test_checkpointed_training_parity.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from parallel import comm
from parallel.cad.nanobatch import nano_rows, split_documents, sub_pieces
from parallel.cad.tasks import contiguous_pieces
from parallel.config import CADConfig, ModelShape, ParallelConfig
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed

DOCS = [9, 14, 5, 20, 7, 11, 30]  # 96 tokens, 48 per rank


def _timeline(rank, world, backward):
    mcfg = to_typed(compose_config(["experiment=tiny", "model.layers=S"])).model
    pcfg = ParallelConfig(cp=world, cp_algo="cad", cad=CADConfig(overlap="nanobatch", cost_table="none",
                                                                 backward=backward))
    plan = ParallelPlan(pcfg, ModelShape(mcfg.heads, mcfg.kv_heads, "S"), world)
    plan.setup()
    model = build_model(mcfg, 64, plan.core_attention, plan.linear_attention, seed=0).double()
    tokens = torch.randint(0, 64, (sum(DOCS),), generator=torch.Generator().manual_seed(0))
    shard = plan.build_shard(DOCS)
    ids, labels = shard.local(tokens), shard.local(next_token_labels(tokens, DOCS))
    events = []
    blk = model.blocks[0]
    blk.mixer.qkv.register_forward_pre_hook(lambda *_: events.append("project"))
    blk.mlp.register_forward_pre_hook(lambda *_: events.append("mlp"))
    with comm.observe(lambda e: events.append(e.op)):
        model(ids, shard, labels).backward()
    fwd = events[:events.index("mlp") + 1 + events[events.index("mlp") + 1:].index("mlp") + 1]
    fwd = [e for e in fwd if e in ("project", "mlp", "all_to_all_single", "wait")]
    a2a = [i for i, e in enumerate(fwd) if e == "all_to_all_single"]
    waits = [i for i, e in enumerate(fwd) if e == "wait"]
    proj = [i for i, e in enumerate(fwd) if e == "project"]
    mlp = [i for i, e in enumerate(fwd) if e == "mlp"]
    # posts: dispatch 0, dispatch 1, return 0, return 1 (with resend each return is o and the
    # LSE); waited in the same order
    per_return = 2 if backward == "resend" else 1
    n = 2 + 2 * per_return
    assert len(a2a) == n and len(waits) == n and len(proj) == 2 and len(mlp) == 2, fwd
    assert a2a[0] < proj[1] < waits[0], f"dispatch 0 is not in flight during projections 1: {fwd}"
    assert a2a[-1] < mlp[0] < waits[-1], f"return 1 is not in flight during MLP 0: {fwd}"
    assert waits[-1] < mlp[1], fwd
    # backward, per nano-batch: dO out and [dq|dk|dv] back; resend also sends q/k/v, o and LSE
    # again (the servers kept nothing)
    total = events.count("all_to_all_single")
    assert total - n == (8 if backward == "resend" else 4), (backward, total)


@pytest.mark.parametrize("backward", ["stateful", "resend"])
def test_each_nano_batch_communicates_while_the_other_computes(backward):
    run_distributed(_timeline, 2, backward)


def test_documents_split_whole_and_balanced_per_rank():
    rng = np.random.default_rng(3)
    streams = [rng.integers(1, 40, size=12).tolist() for _ in range(3)]
    pieces = contiguous_pieces(streams, cp=2)
    side = split_documents(pieces)
    for d in np.unique(pieces.doc):  # whole documents: all pieces of one on one side
        assert np.unique(side[pieces.doc == d]).size == 1
    counts = np.zeros((2, 6))
    np.add.at(counts, (side, pieces.rank), pieces.length)
    assert (np.abs(counts[0] - counts[1]) <= 0.5 * counts.sum(0) + 1).all(), counts
    assert abs(counts[0].sum() - counts[1].sum()) <= 0.1 * counts.sum(), counts
    # rows of both nano-batches tile each rank's tokens once, and the sub-tables count their
    # local offsets within the nano-batch's rows
    for me in range(6):
        rows = np.concatenate([nano_rows(pieces, side == s, me) for s in (0, 1)])
        assert np.array_equal(np.sort(rows), np.arange(pieces.length[pieces.rank == me].sum()))
    for s in (0, 1):
        sub, _ = sub_pieces(pieces, side == s)
        for me in range(6):
            m = sub.rank == me
            assert np.array_equal(sub.local[m], np.cumsum(sub.length[m]) - sub.length[m])


def test_one_document_falls_back_to_one_call():
    pieces = contiguous_pieces([[64]], cp=2)
    side = split_documents(pieces)
    assert np.unique(side).size == 1  # nothing to pair it with: the model makes one call
