"""Held-out loss by position: the standard "loss vs position" curve of long-context work. Each
held-out token's loss goes into the bucket of its position inside its document
(`eval.position_buckets` equal buckets over data.seq_len); a model that uses its long context
keeps lowering the loss in the far buckets."""
from __future__ import annotations

import torch
import torch.distributed as dist

from distca.evaluation.forward import run_forward
from distca.evaluation.token_scores import per_token


def bucket_edges(seq_len: int, buckets: int) -> list[int]:
    return [round(i * seq_len / buckets) for i in range(buckets + 1)]


def position_loss(model, stage, micro_batches, amp, device, seq_len: int, buckets: int, counts_here: bool) -> dict:
    """{eval_position_loss: mean loss per bucket (None for an empty one), eval_position_edges};
    `micro_batches`: this rank's held-out micro-batches; `counts_here`: this rank adds its sums
    (one rank of each TP group: they all compute the same values)."""
    sums = torch.zeros(2, buckets, dtype=torch.float64, device=device)

    def finish(m, x, mb):
        loss, _ = per_token(m.lm_head, m.head(x, None), mb.labels)
        pos = mb.shard.position_ids.to(loss.device)
        bucket = (pos * buckets // seq_len).clamp(max=buckets - 1)
        valid = mb.labels != -100
        sums[0].index_add_(0, bucket[valid], loss[valid].double())
        sums[1].index_add_(0, bucket[valid], torch.ones_like(loss[valid], dtype=torch.float64))

    for micro in micro_batches:
        run_forward(model, stage, micro, amp, finish)
    if not counts_here:
        sums.zero_()
    if dist.is_initialized():
        dist.all_reduce(sums)
    means = [float(s / c) if c > 0 else None for s, c in zip(sums[0].tolist(), sums[1].tolist())]
    return {"eval_position_loss": means, "eval_position_edges": bucket_edges(seq_len, buckets)}
