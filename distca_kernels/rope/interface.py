"""Public entry point: checks the inputs, then runs the Triton kernel or the torch reference
inside one autograd Function that saves only cos and sin.

Dispatch follows distca_kernels/triton_loader.py: CUDA fp16/bf16/fp32 run the Triton kernel; CPU
fp16/fp32 run it in Triton's interpreter under TRITON_INTERPRET=1 (read at call time);
everything else, fp64 included, runs the torch reference (reference.py), whose backward is
written out so that this path saves nothing more than the kernel path.
"""
from __future__ import annotations

import torch

from distca_kernels.rope.reference import qkv_rope_backward_reference, qkv_rope_reference
from distca_kernels.arguments import require_float_tensor
from distca_kernels.triton_loader import load_kernels, triton_mode

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def uses_triton(qkv: torch.Tensor) -> bool:
    """Whether `qkv_rope` would run the Triton kernel for this qkv."""
    return triton_mode(qkv, _TRITON_DTYPES)[0]


def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
             kv_heads: int, head_dim: int):
    """Split a fused qkv projection and rotate q and k (RoPE, half-split convention).

    qkv [T, (H + 2 Hk) D], laid out [q heads | k heads | v heads], each head D contiguous
    (a row stride wider than the row is fine); cos, sin [T, D/2], per token (positions may
    restart per document), fp32 or any float dtype. Returns (q [T,H,D], k [T,Hk,D],
    v [T,Hk,D]), each a new contiguous tensor in qkv's dtype, so qkv can be freed:
    with x1, x2 the two halves of a head, out = [x1 cos - x2 sin, x2 cos + x1 sin]
    (HF Llama's half-split convention), math in fp32 (fp64 for fp64). Differentiable
    w.r.t. qkv only; cos and sin are constants and must not require grad.
    """
    _validate(qkv, cos, sin, heads, kv_heads, head_dim)
    return _QkvRope.apply(qkv, cos, sin, heads, kv_heads, head_dim)


class _QkvRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, heads, kv_heads, head_dim):
        use_triton, interpret = triton_mode(qkv, _TRITON_DTYPES)
        ctx.kernels = load_kernels("distca_kernels.rope.triton_rope", interpret) if use_triton else None
        ctx.rope_shape = (heads, kv_heads, head_dim)
        ctx.qkv_dtype = qkv.dtype
        ctx.save_for_backward(cos, sin)
        # None stays None in backward: a missing gradient is written as zeros, never read
        ctx.set_materialize_grads(False)
        if ctx.kernels is None:  # (autograd runs Function.forward without grad)
            return qkv_rope_reference(qkv, cos, sin, heads, kv_heads, head_dim)
        return ctx.kernels.qkv_rope_forward(_unit_stride(qkv), _unit_stride(cos), _unit_stride(sin),
                                            heads, kv_heads, head_dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        if ctx.kernels is None:
            d_qkv = qkv_rope_backward_reference(dq, dk, dv, cos, sin, *ctx.rope_shape,
                                                ctx.qkv_dtype)
        else:
            dq, dk, dv = (None if g is None else _unit_stride(g) for g in (dq, dk, dv))
            d_qkv = ctx.kernels.qkv_rope_backward(dq, dk, dv, _unit_stride(cos), _unit_stride(sin),
                                                  *ctx.rope_shape, ctx.qkv_dtype)
        return d_qkv, None, None, None, None, None


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernel indexes the last dim densely and the others by stride: copy only if needed
    (e.g. a gradient expanded from a scalar has stride 0 everywhere)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _validate(qkv, cos, sin, heads, kv_heads, head_dim):
    require_float_tensor("qkv", qkv)
    if qkv.dim() != 2:
        raise ValueError(f"qkv must be 2-D [T, (H + 2 Hk) D], got shape {tuple(qkv.shape)}")
    for name, n in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs of halves), got {head_dim}")
    width = (heads + 2 * kv_heads) * head_dim
    if qkv.shape[1] != width:
        raise ValueError(f"qkv must have width (heads + 2 kv_heads) head_dim = {width}, "
                         f"got {qkv.shape[1]}")
    want = (qkv.shape[0], head_dim // 2)
    for name, x in (("cos", cos), ("sin", sin)):
        require_float_tensor(name, x)
        if tuple(x.shape) != want:
            raise ValueError(f"{name} must be [T, head_dim/2] = {list(want)}, got "
                             f"{tuple(x.shape)}")
        if x.device != qkv.device:
            raise ValueError(f"{name} must be on qkv's device {qkv.device}, got {x.device}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but qkv_rope treats cos/sin as constants "
                             f"(no gradient flows to them): pass {name}.detach()")
