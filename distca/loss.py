"""Next-token cross-entropy that never materialises [tokens x vocab] logits at once.

Tokens are processed in chunks; each chunk's logits are recomputed in the backward pass
(activation checkpointing), so peak memory is one chunk of logits. The loss is a *sum* over
tokens; the trainer divides by the global token count so every parallel layout agrees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_ce_sum(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = h @ weight.t()
    if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32, never lower
        logits = logits.float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                              chunk: int = 4096) -> torch.Tensor:
    """Sum of CE over tokens whose label is not -100. hidden [T, d], weight [V, d], labels [T]."""
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s:s + chunk], labels[s:s + chunk]
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(_chunk_ce_sum, h, weight, y, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h, weight, y)
    return total


def next_token_labels(tokens: torch.Tensor, doc_lens: list[int]) -> torch.Tensor:
    """Labels for a packed stream: the next token of the same document, -100 at each doc end
    (a document's last token has no successor inside this sample)."""
    labels = torch.full_like(tokens, -100)
    labels[:-1] = tokens[1:]
    ends = torch.cumsum(torch.tensor(doc_lens, dtype=torch.int64), 0) - 1
    labels[ends] = -100
    return labels
