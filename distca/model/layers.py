"""Building blocks shared by every mixer: RMSNorm and SwiGLU (rotary embeddings: rope.py). The
arithmetic is in fused kernels (distca_kernels/rms_norm, distca_kernels/swiglu), each with a torch path on
the CPU."""
from __future__ import annotations

import torch
import torch.nn as nn

from distca_kernels.rms_norm import rms_norm
from distca_kernels.swiglu import swiglu


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the next matmul runs in under autocast for x's device, or None."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalised in fp32 at least (fp64 stays fp64), as Llama does. Under autocast the
        # result is written in the matmul dtype directly: every consumer is a matmul that
        # would cast it anyway, so the values are the same and the fp32 copy is never made
        return rms_norm(x, self.weight, self.eps, out_dtype=autocast_dtype(x) or x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate_up(x)))  # gate_up is [gate | up]
