"""The accumulation rule every op and strategy shares: fp32 for fp32 and 16-bit inputs, fp64
for fp64 inputs (so fp64 tests of kernels and distributed paths stay exact)."""
from __future__ import annotations

import torch


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
