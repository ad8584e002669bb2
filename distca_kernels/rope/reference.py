"""Plain-torch fused-qkv RoPE: the definition the Triton kernel is checked against, and the
path for fp64 and for CPU tensors outside the interpreter.

`qkv_rope_reference` is differentiable torch ops (its autograd backward is the inverse
rotation); `qkv_rope_backward_reference` writes that backward out, so the op's autograd
Function can save only cos/sin on this path too. Math in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch

from distca_kernels.precision import accumulator_dtype


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, acc: torch.dtype,
            dtype: torch.dtype) -> torch.Tensor:
    """x [T, n, D] -> a new contiguous [T, n, D] in `dtype`: [x1 c - x2 s, x2 c + x1 s]."""
    x1, x2 = x.to(acc).chunk(2, dim=-1)
    c, s = cos.to(acc).unsqueeze(1), sin.to(acc).unsqueeze(1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(dtype)


def qkv_rope_reference(qkv, cos, sin, heads: int, kv_heads: int, head_dim: int):
    """Same contract as `distca_kernels.rope.qkv_rope` (differentiable w.r.t. qkv, cos and sin)."""
    acc = accumulator_dtype(qkv.dtype)
    x = qkv.unflatten(1, (heads + 2 * kv_heads, head_dim))
    q = _rotate(x[:, :heads], cos, sin, acc, qkv.dtype)
    k = _rotate(x[:, heads:heads + kv_heads], cos, sin, acc, qkv.dtype)
    v = x[:, heads + kv_heads:].clone(memory_format=torch.contiguous_format)
    return q, k, v


def qkv_rope_backward_reference(dq, dk, dv, cos, sin, heads: int, kv_heads: int,
                                head_dim: int, dtype: torch.dtype):
    """d_qkv [T, (H + 2 Hk) D] in `dtype` from dq [T,H,D], dk, dv [T,Hk,D] (each may be None:
    zeros): the inverse rotation (sin negated) on the q and k parts, dv copied."""
    t = cos.shape[0]
    acc = accumulator_dtype(dtype)
    out = torch.zeros(t, heads + 2 * kv_heads, head_dim, dtype=dtype, device=cos.device)
    for g, lo, hi, rotate in ((dq, 0, heads, True), (dk, heads, heads + kv_heads, True),
                              (dv, heads + kv_heads, heads + 2 * kv_heads, False)):
        if g is not None:
            out[:, lo:hi] = _rotate(g, cos, -sin.to(acc), acc, dtype) if rotate else g
    return out.flatten(1)
