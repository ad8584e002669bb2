"""Tensor parallelism against one process, fp64, gloo: the sequence-parallel collectives, the
vocabulary-parallel cross-entropy, and a whole model's loss and gradients.

The model check slices a seeded model over tp ranks (distca/parallelize/tensor_parallel.py), runs one
forward/backward on a micro-batch, reduces the gradients as the trainer does (GradSync),
reassembles every sliced gradient from its parts and compares it, and the loss, with the same
model unsliced in one process: softmax and linear layers (both decay kinds), GQA, tied
embeddings, activation checkpointing, a token count that tp does not divide.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca.model import build_model
from distca.parallelize.tensor_parallel import apply_tensor_parallel
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard
from parallel.tensor.comm import gather_sequence, local_rows, scatter_sequence
from parallel.tensor.grads import GradSync
from parallel.tensor.vocab import _chunk_loss
from tests.distributed_utils import run_distributed

VOCAB = 64
DOCS = [23, 1, 30, 9]  # 63 tokens: no tp in {2, 4} divides it


def _close(got, want, what, tol=1e-10):
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{what}: error {err:.3g}"


def _collectives(rank, world):
    group = dist.group.WORLD
    g = torch.Generator().manual_seed(0)
    for tokens in (7, 8, 1):
        full = torch.randn(tokens, 3, generator=g, dtype=torch.float64)
        mine = local_rows(full, group).requires_grad_()
        got = gather_sequence(mine, tokens, group)
        _close(got, full, "gather")
        # adjoint: <gather(x), y> == <x, gather^T(y)>, with gather^T the reduce-scatter
        y = torch.randn(tokens, 3, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
        (got * y).sum().backward()
        every = [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(every, y)
        _close(mine.grad, local_rows(sum(every), group), "gather backward")
        part = torch.randn(tokens, 3, generator=torch.Generator().manual_seed(10 + rank),
                           dtype=torch.float64)
        dist.all_gather(every, part)
        _close(scatter_sequence(part, group), local_rows(sum(every), group), "scatter")
    # vocabulary-parallel cross-entropy: the loss and gradient of full-vocabulary CE
    h = torch.randn(11, 5, generator=g, dtype=torch.float64)
    w = torch.randn(8 * world, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 8 * world, (11,), generator=g)
    labels[3] = -100
    ref_w = w.clone().requires_grad_()
    ref = F.cross_entropy(h @ ref_w.t(), labels, ignore_index=-100, reduction="sum")
    ref.backward()
    mine_w = w[8 * rank:8 * (rank + 1)].clone().requires_grad_()
    loss = _chunk_loss(h, mine_w, labels, 8 * rank, group)
    loss.backward()
    _close(loss, ref, "vocab-parallel CE")
    _close(mine_w.grad, ref_w.grad[8 * rank:8 * (rank + 1)], "vocab-parallel CE gradient")


@pytest.mark.parametrize("world_size", [2, 3])
def test_sequence_and_vocab_collectives(world_size):
    run_distributed(_collectives, world_size)


def _model(overrides, seed=0):
    mcfg = to_typed(compose_config(["experiment=tiny", *overrides])).model
    return build_model(mcfg, VOCAB, LocalCoreAttention(), LocalLinearAttention(), seed).double().train()


def _full_grads(model, rank, tp, group) -> dict:
    """Every parameter's gradient reassembled whole from the TP ranks' slices."""
    out = {}
    for name, p in model.named_parameters():
        spec = getattr(p, "tp_slice", None)
        if spec is None or tp == 1:
            out[name] = p.grad
            continue
        pieces = []
        for part in spec.local_parts(p.grad.contiguous(), tp):
            every = [torch.empty_like(part) for _ in range(tp)]
            dist.all_gather(every, part.contiguous(), group=group)
            pieces.append(torch.cat(every, spec.dim))
        out[name] = torch.cat(pieces, spec.dim)
    return out


CASES = [
    ["model.layers=SSSS"],
    ["model.layers=LSLS", "model.linear_decay=token", "model.recompute=full"],
    ["model.layers=LLS", "model.linear_decay=head", "model.tie_embeddings=true"],
]


def _model_parity(rank, world, overrides):
    group = dist.group.WORLD
    tokens = torch.randint(0, VOCAB, (sum(DOCS),), generator=torch.Generator().manual_seed(1))
    labels = next_token_labels(tokens, DOCS)
    shard = build_shard(DOCS)
    ref = _model(overrides)
    ref_loss = ref(tokens, shard, labels)
    ref_loss.backward()
    model = apply_tensor_parallel(_model(overrides), group)
    loss = model(tokens, shard, labels)
    loss.backward()
    GradSync(model.parameters(), group).finalize()
    _close(loss, ref_loss, f"loss {overrides}")
    grads = _full_grads(model, rank, world, group)
    for name, p in ref.named_parameters():
        _close(grads[name], p.grad, f"d{name} {overrides}")


@pytest.mark.parametrize("overrides", CASES, ids=["SSSS", "LSLS-token-ckpt", "LLS-tied"])
def test_model_loss_and_gradients_match_one_process(overrides):
    run_distributed(_model_parity, 2, ["model.kv_heads=2", *overrides])


def test_four_way_split_of_every_head():
    """tp=4 on a model with 4 query and 4 KV heads: one head of each per rank."""
    run_distributed(_model_parity, 4, ["model.kv_heads=4", "model.layers=SL"])
