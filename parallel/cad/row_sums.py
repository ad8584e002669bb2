"""Gradients of gathered rows summed back into zeros: an indexed copy where no row repeats.

Every CAD backward ends in "dest[index] += src" into a fresh zero buffer (the gather of the
forward, reversed). `index_add_` does it with atomics: on an H100 it ran several times below
copy speed in bf16 (5.5% of a 16K step of the 1B model with the exchange path forced,
`benchmarks/results/cad_overlap_one_gpu_h100_profile.json`), and where a row repeats the sum's
order is the atomics'. Whether an index repeats is known from the plan on the host, so the
common case (each query once, each key sent to one server, one segment per document) takes a
plain indexed copy: no atomics, bitwise the same result (0 + x = x), deterministic.
"""
from __future__ import annotations

import numpy as np
import torch


def no_repeats(tokens: np.ndarray) -> bool:
    """No value appears twice (host check at plan time; plans index with int64 numpy arrays)."""
    return tokens.size < 2 or bool(np.bincount(tokens - tokens.min()).max() <= 1)


def add_rows_into_zeros(dest: torch.Tensor, index: torch.Tensor, src: torch.Tensor,
                        unique: bool) -> torch.Tensor:
    """dest[index] += src, where dest's rows at `index` are still zero. `unique`: `index`
    repeats no row (from `no_repeats` on the plan)."""
    if unique:
        return dest.index_copy_(0, index, src)
    return dest.index_add_(0, index, src)
