"""Labels for next-token prediction on packed samples.

The loss itself is the LM head fused with cross-entropy (distca_kernels/linear_ce, called by the
model's head): a *sum* over tokens, which the trainer divides by the global token count so
every parallel layout agrees.
"""
from __future__ import annotations

import torch


def next_token_labels(tokens: torch.Tensor, doc_lens: list[int]) -> torch.Tensor:
    """Labels for a packed stream: the next token of the same document, -100 at each doc end
    (a document's last token has no successor inside this sample)."""
    labels = torch.full_like(tokens, -100)
    labels[:-1] = tokens[1:]
    ends = torch.cumsum(torch.tensor(doc_lens, dtype=torch.int64), 0) - 1
    labels[ends] = -100
    return labels
