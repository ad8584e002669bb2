"""From a global batch of packed samples to this rank's micro-batches.

Every rank draws the whole global batch from the (deterministic) packer, so the token count
that normalises the loss is known locally and identical everywhere, with no collective.
A micro-batch is one flat token stream: its samples concatenated, documents never crossing a
sample boundary. The parallel plan's shard builder then picks this rank's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distca.data.labels import next_token_labels
from parallel.context.shard import Shard


@dataclass
class MicroBatch:
    input_ids: torch.Tensor   # [T_local] this rank's tokens, shard order
    labels: torch.Tensor      # [T_local]
    shard: Shard


def global_label_count(samples) -> int:
    return sum(int((next_token_labels(s.tokens, s.doc_lens) != -100).sum()) for s in samples)


def rank_micro_batches(samples, plan, micro_batch_size: int, device) -> list[MicroBatch]:
    """This DP replica's share of the global batch, as micro-batches sharded by `plan`."""
    dp, dp_rank = plan.dims.dp, plan.dp_rank
    per_dp = len(samples) // dp
    mine = samples[dp_rank * per_dp:(dp_rank + 1) * per_dp]
    out = []
    for i in range(0, len(mine), micro_batch_size):
        group = mine[i:i + micro_batch_size]
        tokens = torch.cat([s.tokens for s in group])
        doc_lens = [n for s in group for n in s.doc_lens]
        labels = torch.cat([next_token_labels(s.tokens, s.doc_lens) for s in group])
        shard = plan.build_shard(doc_lens)
        out.append(MicroBatch(shard.local(tokens).to(device), shard.local(labels).to(device),
                              shard.to(device)))
    return out
