"""Plain-torch SwiGLU on the half-split layout: the definition the Triton kernels are checked
against, and the path taken where they do not run (CPU without TRITON_INTERPRET, fp64).

gate, up = gate_up.chunk(2, -1); out = silu(gate) * up, in fp32 (fp64 for fp64 input), cast
back to gate_up's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distca_kernels.precision import accumulator_dtype


def swiglu_reference(gate_up):
    """Differentiable by autograd (it saves silu(gate) besides gate_up: for tests)."""
    gate, up = gate_up.to(accumulator_dtype(gate_up.dtype)).chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def swiglu_backward_reference(dout, gate_up):
    """Written-out backward from gate_up alone: d(gate_up) [..., 2F], a new tensor in
    gate_up's dtype. With s = sigmoid(gate):
    d gate = dout * up * s * (1 + gate * (1 - s)),  d up = dout * gate * s."""
    acc = accumulator_dtype(gate_up.dtype)
    gate, up = gate_up.to(acc).chunk(2, dim=-1)
    dh = dout.to(acc)
    s = torch.sigmoid(gate)
    return torch.cat([dh * up * s * (1 + gate * (1 - s)), dh * gate * s],
                     dim=-1).to(gate_up.dtype)
