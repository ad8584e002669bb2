"""Public entry point of SwiGLU: validates, then runs the Triton kernels or the torch
reference inside one autograd Function that saves only gate_up.

Dispatch follows distca_kernels/triton_loader.py: CUDA fp16/bf16/fp32 tensors run the Triton kernels;
CPU fp16/fp32 tensors run them in Triton's interpreter under TRITON_INTERPRET=1; everything
else (fp64, CPU without the variable) runs the torch reference with a written-out backward.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from distca_kernels.swiglu.reference import swiglu_backward_reference, swiglu_reference
from distca_kernels.arguments import require_float_tensor
from distca_kernels.triton_loader import load_kernels, triton_mode

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels(gate_up: torch.Tensor):
    """The kernel module for this input, or None for the torch reference."""
    use, interpret = triton_mode(gate_up, _TRITON_DTYPES)
    if not use or gate_up.numel() == 0:
        return None
    return load_kernels("distca_kernels.swiglu.triton_swiglu", interpret)


def uses_triton(gate_up: torch.Tensor) -> bool:
    """Whether `swiglu` would run the Triton kernels for this input."""
    return _kernels(gate_up) is not None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[n, width] view with unit column stride (any row stride); a copy only where none
    exists (e.g. a transposed input), which costs one extra read and write of it."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(1) == 1 else t2.contiguous()


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        kernels = _kernels(gate_up)
        out_shape = gate_up.shape[:-1] + (gate_up.shape[-1] // 2,)
        # the op keeps gate_up's dtype: an enclosing autocast must not recast anything inside
        with torch.autocast(device_type=gate_up.device.type, enabled=False):
            if kernels is not None:
                out = kernels.swiglu_forward(_rows(gate_up)).view(out_shape)
            else:
                out = swiglu_reference(gate_up)
        ctx.save_for_backward(gate_up)
        ctx.kernels = kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        (gate_up,) = ctx.saved_tensors
        with torch.autocast(device_type=gate_up.device.type, enabled=False):
            if ctx.kernels is not None:
                return ctx.kernels.swiglu_backward(_rows(dout),
                                                   _rows(gate_up)).view(gate_up.shape)
            return swiglu_backward_reference(dout, gate_up)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate, up = gate_up.chunk(2, dim=-1) (the half-split layout of
    `SwiGLU.gate_up`): gate_up [..., 2F] -> [..., F] in gate_up's dtype, computed in fp32
    (fp64 for fp64 input). An enclosing autocast changes nothing. Differentiable; saves only
    gate_up, and the backward returns d(gate_up) as a new tensor.
    """
    require_float_tensor("gate_up", gate_up)
    if gate_up.dim() < 1 or gate_up.shape[-1] == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dimension must be 2F (even, >= 2): gate then up, "
                         f"got shape {tuple(gate_up.shape)}")
    return _SwiGLUFunction.apply(gate_up)
