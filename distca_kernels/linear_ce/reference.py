"""Plain-torch pieces of the fused linear cross-entropy.

`linear_cross_entropy_reference`: the naive dense definition (full [T, V] logits, then
F.cross_entropy summed), differentiable by autograd; tests check the fused op against it.
`ce_rows_torch`: the torch twin of the Triton row kernel (triton_ce.ce_rows), the per-chunk
step of the fused op on paths without Triton (CPU without the interpreter, fp64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distca_kernels.precision import accumulator_dtype

IGNORE_INDEX = -100


def linear_cross_entropy_reference(hidden, weight, labels, compute_dtype=None):
    """sum over t with labels[t] != -100 of CE(hidden[t] @ weight.T, labels[t]), the logits
    computed in compute_dtype (default hidden's) and the softmax in fp32 (fp64 for fp64)."""
    cd = hidden.dtype if compute_dtype is None else compute_dtype
    logits = hidden.to(cd) @ weight.to(cd).t()
    loss = F.cross_entropy(logits.to(accumulator_dtype(cd)), labels, ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss.to(accumulator_dtype(hidden.dtype))


def ce_rows_torch(logits, labels, losses, write_grad: bool,
                  ignore_index: int = IGNORE_INDEX) -> None:
    """Same contract as triton_ce.ce_rows: losses[i] = lse_i - logits[i, labels[i]] (0 if
    ignored); with write_grad, logits is overwritten with softmax - onehot (0 rows if ignored)."""
    x = logits.to(accumulator_dtype(logits.dtype))
    lse = torch.logsumexp(x, dim=1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).unsqueeze(1)
    picked = x.gather(1, safe).squeeze(1)
    losses.copy_(torch.where(valid, lse - picked, 0))
    if write_grad:
        g = torch.exp(x - lse.unsqueeze(1))
        g.scatter_add_(1, safe, -valid.to(g.dtype).unsqueeze(1))
        g.masked_fill_(~valid.unsqueeze(1), 0)
        logits.copy_(g)
