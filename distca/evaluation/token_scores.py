"""Per-token scores of the LM head for evaluation: each token's cross-entropy and the id the
model ranks first, without full-vocabulary logits on any rank.

Training needs only the summed loss (the fused head, distca_kernels/linear_ce); evaluation
tasks need more: the loss at each position (loss by position) and the argmax (does greedy
decoding reproduce a key). Under tensor parallelism each rank holds a range of the vocabulary
(`VocabParallelLMHead`): the maxima, the sums of exponentials and the target logits are
combined over the TP group, and the first-ranked id is the lowest id among the ranks whose
local maximum is the global one. Chunks of tokens bound the logits in memory.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from parallel import comm
from parallel.tensor.comm import gather_sequence

CHUNK = 2048


def _gathered(weight):
    """ZeRO-3 partitions every weight: gather the head's for the duration."""
    if hasattr(weight, "ds_id"):
        import deepspeed
        return deepspeed.zero.GatheredParameters([weight])
    return contextlib.nullcontext()


@torch.no_grad()
def per_token(head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden: the final norm's output on this rank ([P, d] sequence-parallel rows under TP, else
    [T, d]), labels [T] (-100: none) -> (cross-entropy [T] fp32, 0 where no label; argmax ids [T])."""
    group = getattr(head, "group", None)
    start = getattr(head, "start", 0)
    h = gather_sequence(hidden, labels.shape[0], group) if group is not None else hidden
    losses = torch.zeros(labels.shape[0], dtype=torch.float32, device=h.device)
    best = torch.zeros(labels.shape[0], dtype=torch.long, device=h.device)
    with _gathered(head.weight):
        weight = head.weight
        for s in range(0, h.shape[0], CHUNK):
            logits = (h[s:s + CHUNK] @ weight.t().to(h.dtype)).float()
            y = labels[s:s + CHUNK]
            local_max, local_arg = logits.max(dim=1)
            row_max = local_max.clone()
            if group is not None:
                comm.all_reduce(row_max, dist.ReduceOp.MAX, group)
            shifted = logits - row_max.unsqueeze(1)
            own = (y >= start) & (y < start + logits.shape[1])
            col = torch.where(own, y - start, torch.zeros_like(y))
            sums = torch.stack([shifted.exp().sum(dim=1), shifted.gather(1, col.unsqueeze(1)).squeeze(1) * own])
            # the first-ranked id: the lowest id among the ranks holding the maximum
            cand = torch.where(local_max == row_max, local_arg + start, torch.full_like(local_arg, 1 << 62))
            if group is not None:
                comm.all_reduce(sums, dist.ReduceOp.SUM, group)
                comm.all_reduce(cand, dist.ReduceOp.MIN, group)
            losses[s:s + CHUNK] = (sums[0].log() - sums[1]) * (y != -100)
            best[s:s + CHUNK] = cand
    return losses, best
