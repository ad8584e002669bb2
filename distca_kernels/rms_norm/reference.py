"""Plain-torch RMSNorm: the definition the Triton kernels are checked against, and the path
taken where they do not run (CPU without TRITON_INTERPRET, fp64).

y = (x * rsqrt(mean(x^2, -1) + eps)) * weight, in fp32 (fp64 for fp64 x), cast to out_dtype.
The same operations in the same order as distca/model/layers.py:RMSNorm.
"""
from __future__ import annotations

import torch

from distca_kernels.precision import accumulator_dtype


def rms_norm_reference(x, weight, eps, out_dtype=None):
    """Differentiable by autograd (it saves the normalised copy: for tests, not training)."""
    acc = accumulator_dtype(x.dtype)
    xf = x.to(acc)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.to(acc)).to(x.dtype if out_dtype is None else out_dtype)


def rms_norm_forward_reference(x, weight, eps, out_dtype):
    """(y in out_dtype, rstd [...] in the accumulator dtype): the forward with its residual."""
    acc = accumulator_dtype(x.dtype)
    xf = x.to(acc)
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(acc)).to(out_dtype), rstd.squeeze(-1)


def rms_norm_backward_reference(dy, x, weight, rstd):
    """Written-out backward from the saved x and rstd: (dx in x.dtype, dweight in weight.dtype).

    With xhat = x * rstd and g = dy * weight:
    dx = rstd * (g - xhat * mean(g * xhat, -1)),  dweight = sum over rows of dy * xhat.
    """
    acc = accumulator_dtype(x.dtype)
    r = rstd.to(acc).unsqueeze(-1)
    xhat = x.to(acc) * r
    dyf = dy.to(acc)
    g = dyf * weight.to(acc)
    dx = r * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dyf * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dw.to(weight.dtype)
