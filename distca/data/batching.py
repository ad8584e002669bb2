"""From token ranges to this rank's micro-batches.

A micro-batch is one flat token stream (its pieces concatenated; a piece is a document or the
part of one that the packer kept together), described by its piece lengths; next-token labels
never cross a piece. The parallel plan's shard builder then picks this CP rank's tokens.
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

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.input_ids.to(device), self.labels.to(device), self.shard.to(device))


def micro_batch(tokens: torch.Tensor, doc_lens: list[int], plan) -> MicroBatch:
    """This rank's part of one micro-batch stream (on the CPU)."""
    labels = next_token_labels(tokens, doc_lens)
    shard = plan.build_shard(doc_lens)
    return MicroBatch(shard.local(tokens), shard.local(labels), shard)
