"""Public entry point of RMSNorm: validates, then runs the Triton kernels or the torch
reference inside one autograd Function that saves only x, weight and the per-row rstd.

Dispatch follows distca_kernels/triton_loader.py: CUDA tensors run the Triton kernels; CPU fp16/fp32
tensors run them in Triton's interpreter under TRITON_INTERPRET=1; everything else (fp64, CPU
without the variable, rows wider than MAX_D) runs the torch reference with the same saved
tensors and a written-out backward.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from distca_kernels.rms_norm.reference import (
    rms_norm_backward_reference,
    rms_norm_forward_reference,
)
from distca_kernels.arguments import FLOAT_DTYPES, require_float_tensor
from distca_kernels.triton_loader import INTERPRETER_DTYPES, load_kernels, triton_mode

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_D = 32768  # widest row one Triton program holds in registers (32 warps, 32 fp32 a thread)


def _kernels(x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype):
    """The kernel module for these inputs, or None for the torch reference."""
    use, interpret = triton_mode(x, _TRITON_DTYPES)
    allowed = INTERPRETER_DTYPES if interpret else _TRITON_DTYPES
    if not use or weight.dtype not in allowed or out_dtype not in allowed \
            or x.numel() == 0 or x.shape[-1] > MAX_D:
        return None
    return load_kernels("distca_kernels.rms_norm.triton_rms_norm", interpret)


def uses_triton(x: torch.Tensor, weight: torch.Tensor, out_dtype=None) -> bool:
    """Whether `rms_norm` would run the Triton kernels for these inputs."""
    return _kernels(x, weight, x.dtype if out_dtype is None else out_dtype) is not None


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """[n, d] view with unit column stride (any row stride); a copy only where none exists."""
    t2 = t.reshape(-1, d)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        d = x.shape[-1]
        kernels = _kernels(x, weight, out_dtype)
        # the op fixes its own dtypes: an enclosing autocast must not recast anything inside
        with torch.autocast(device_type=x.device.type, enabled=False):
            if kernels is not None:
                y, rstd = kernels.rms_norm_forward(_rows(x, d), weight, eps, out_dtype)
            else:
                y, rstd = rms_norm_forward_reference(x.reshape(-1, d), weight, eps, out_dtype)
        ctx.save_for_backward(x, weight, rstd)
        ctx.kernels = kernels
        return y.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            if ctx.kernels is not None:
                dx, dw = ctx.kernels.rms_norm_backward(_rows(dy, d), _rows(x, d), weight, rstd)
            else:
                dx, dw = rms_norm_backward_reference(dy.reshape(-1, d), x.reshape(-1, d),
                                                     weight, rstd)
        dx = dx.view(x.shape) if ctx.needs_input_grad[0] else None
        return dx, dw if ctx.needs_input_grad[1] else None, None, None


def _validate(x, weight, eps, out_dtype):
    require_float_tensor("x", x)
    require_float_tensor("weight", weight)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a last dimension of at least 1, got shape {tuple(x.shape)}")
    if tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"weight must have shape [d] = [{x.shape[-1]}] (x's last dimension), "
                         f"got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight must be on x's device {x.device}, got {weight.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be None or a float16/bfloat16/float32/float64 dtype, "
                         f"got {out_dtype!r}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension: y = (x * rsqrt(mean(x^2, -1) + eps)) * weight.

    x [..., d] and weight [d] of any float dtypes (e.g. an fp32 residual stream or bf16
    activations, with fp32 master weights). Computed in fp32 (fp64 for fp64 x) and returned
    in out_dtype (default x.dtype): out_dtype=torch.bfloat16 under bf16 autocast hands the
    next matmul its operand directly. An enclosing autocast does not change anything.
    Differentiable w.r.t. x (dx in x.dtype) and weight (dweight in weight.dtype, summed in
    fp32). Saved for backward: x, weight and one fp32 rstd per row.
    """
    _validate(x, weight, eps, out_dtype)
    return _RMSNormFunction.apply(x, weight, float(eps), x.dtype if out_dtype is None
                                  else out_dtype)
