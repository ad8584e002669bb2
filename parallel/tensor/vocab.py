"""Vocabulary-parallel embedding and cross-entropy: each TP rank holds rows
[start, start + V/tp) of the embedding (and LM head) matrix, and full-vocabulary logits never
exist anywhere, not even one chunk of them.

Embedding: ids outside the rank's rows look up zeros; the sequence-parallel reduce-scatter that
follows sums the one non-zero contribution per token and leaves each rank its rows.
Cross-entropy (Megatron's): per chunk of tokens, local logits [c, V/tp] in fp32; one all-reduce
MAX of the row maxima, one all-reduce SUM of [sum of exp, target logit] (the target from the
rank that owns it); loss = log(sum exp) - (target - max). The backward is local: softmax minus
one-hot on this rank's columns, no communication. Every TP rank computes the same loss, and
each differentiates it with respect to its own columns only, so nothing is counted tp times.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from parallel import comm
from parallel.tensor.comm import gather_sequence, scatter_sequence


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, start: int, group):
        vocab_local = logits.shape[1]
        row_max = logits.detach().max(dim=1).values
        comm.all_reduce(row_max, dist.ReduceOp.MAX, group)
        shifted = logits - row_max.unsqueeze(1)
        exp = shifted.exp()
        own = (labels >= start) & (labels < start + vocab_local)
        col = torch.where(own, labels - start, torch.zeros_like(labels))
        target = shifted.gather(1, col.unsqueeze(1)).squeeze(1) * own
        sums = torch.stack([exp.sum(dim=1), target])
        comm.all_reduce(sums, dist.ReduceOp.SUM, group)
        valid = labels != -100
        loss = (sums[0].log() - sums[1]) * valid
        ctx.save_for_backward(exp.div_(sums[0].unsqueeze(1)), col, own & valid, valid)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad):
        softmax, col, hit, valid = ctx.saved_tensors
        g = softmax * valid.unsqueeze(1).to(softmax.dtype)
        g[torch.arange(g.shape[0], device=g.device), col] -= hit.to(g.dtype)
        return g * grad, None, None, None


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, start: int, group):
    logits = h @ weight.t()
    if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32, never lower
        logits = logits.float()
    if group is None:
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return _VocabParallelCrossEntropy.apply(logits, labels, start, group)


class VocabParallelEmbedding(nn.Module):
    """ids [T] -> this rank's sequence rows [P, d] of their embeddings (sequence parallel)."""

    def __init__(self, weight: nn.Parameter, start: int, group):
        super().__init__()
        self.weight, self.start, self.group = weight, start, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        own = (ids >= self.start) & (ids < self.start + self.weight.shape[0])
        local = torch.where(own, ids - self.start, torch.zeros_like(ids))
        rows = F.embedding(local, self.weight) * own.unsqueeze(-1).to(self.weight.dtype)
        return scatter_sequence(rows, self.group)


class VocabParallelLMHead(nn.Module):
    """The output projection fused with the loss, vocabulary-parallel: hidden rows [P, d]
    (sequence parallel) and labels [T] -> the summed cross-entropy over labels != -100, the
    same on every TP rank. Chunks of tokens are recomputed in backward, as in the model's
    own chunked head."""

    def __init__(self, weight: nn.Parameter, start: int, group, chunk: int):
        super().__init__()
        self.weight, self.start, self.group, self.chunk = weight, start, group, chunk

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = gather_sequence(hidden, labels.shape[0], self.group)
        if h.shape[0] == 0:  # no tokens (a CAD pool rank): a zero still on the graph, so the
            return h.sum().float()  # backward reaches every layer's collectives
        total = h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))
        for s in range(0, h.shape[0], self.chunk):
            args = (h[s:s + self.chunk], self.weight, labels[s:s + self.chunk], self.start, self.group)
            if torch.is_grad_enabled() and h.requires_grad:
                total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
            else:
                total = total + _chunk_loss(*args)
        return total
