"""Triton kernel of the fused-qkv RoPE, forward and backward (one kernel, two directions).

One program per token moves every head of that token: cos/sin are loaded once, the q heads
and the k heads are rotated as 2-D [heads, D/2] blocks (a loop over head blocks bounds the
registers for wide models), v is copied as a [heads, D] block. fp32 math; each element is read
once and written once. The backward is the same kernel with sin negated (R^T = R(-theta))
reading dq/dk/dv and writing d_qkv; a missing gradient writes zeros without being read.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(src, src_row, src_head, dst, dst_row, dst_head, t, n_heads, c, s, cmask,
                  HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                  LOAD: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_HALF)
    src = src + t * src_row
    dst = dst + t * dst_row
    for h0 in range(0, n_heads, BLOCK_H):
        h = h0 + offs_h
        m = (h < n_heads)[:, None] & cmask[None, :]
        d_off = h[:, None] * dst_head + offs_c[None, :]
        if LOAD:
            s_off = h[:, None] * src_head + offs_c[None, :]
            x1 = tl.load(src + s_off, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + s_off + HALF, mask=m, other=0.0).to(tl.float32)
            y1 = x1 * c - x2 * s
            y2 = x2 * c + x1 * s
        else:
            y1 = tl.zeros([BLOCK_H, BLOCK_HALF], dtype=tl.float32)
            y2 = y1
        tl.store(dst + d_off, y1.to(dst.dtype.element_ty), mask=m)
        tl.store(dst + d_off + HALF, y2.to(dst.dtype.element_ty), mask=m)


@triton.jit
def _copy_heads(src, src_row, src_head, dst, dst_row, dst_head, t, n_heads,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                LOAD: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    src = src + t * src_row
    dst = dst + t * dst_row
    for h0 in range(0, n_heads, BLOCK_H):
        h = h0 + offs_h
        m = (h < n_heads)[:, None] & (offs_d < D)[None, :]
        if LOAD:
            x = tl.load(src + h[:, None] * src_head + offs_d[None, :], mask=m, other=0.0)
        else:
            x = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
        tl.store(dst + h[:, None] * dst_head + offs_d[None, :], x.to(dst.dtype.element_ty),
                 mask=m)


@triton.jit
def _qkv_rope_kernel(q_src, k_src, v_src, q_dst, k_dst, v_dst, cos, sin,
                     q_src_row, q_src_head, k_src_row, k_src_head, v_src_row, v_src_head,
                     q_dst_row, q_dst_head, k_dst_row, k_dst_head, v_dst_row, v_dst_head,
                     cos_row, sin_row, H, HK,
                     HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                     BLOCK_HK: tl.constexpr, BLOCK_HV: tl.constexpr, BLOCK_D: tl.constexpr,
                     INVERSE: tl.constexpr, LOAD_Q: tl.constexpr, LOAD_K: tl.constexpr,
                     LOAD_V: tl.constexpr):
    # int64: token offsets reach T * row_stride, past 2**31 at long contexts
    t = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_HALF)
    cmask = offs_c < HALF
    c = tl.load(cos + t * cos_row + offs_c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin + t * sin_row + offs_c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if INVERSE:
        s = -s
    _rotate_heads(q_src, q_src_row, q_src_head, q_dst, q_dst_row, q_dst_head, t, H, c, s,
                  cmask, HALF, BLOCK_HALF, BLOCK_HQ, LOAD_Q)
    _rotate_heads(k_src, k_src_row, k_src_head, k_dst, k_dst_row, k_dst_head, t, HK, c, s,
                  cmask, HALF, BLOCK_HALF, BLOCK_HK, LOAD_K)
    _copy_heads(v_src, v_src_row, v_src_head, v_dst, v_dst_row, v_dst_head, t, HK,
                2 * HALF, BLOCK_D, BLOCK_HV, LOAD_V)


_MAX_BLOCK = 2048  # elements of one [heads, cols] block: bounds registers per program


def _heads_block(n_heads: int, cols: int) -> int:
    return min(triton.next_power_of_2(n_heads), max(1, _MAX_BLOCK // cols))


def _launch(srcs, dsts, cos, sin, heads, kv_heads, head_dim, inverse):
    """srcs/dsts: three [T, n, D] tensors with last stride 1 (a src may be None: zeros)."""
    t = cos.shape[0]
    if t == 0:
        return
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    block_d = triton.next_power_of_2(head_dim)
    bq, bk = _heads_block(heads, block_half), _heads_block(kv_heads, block_half)
    bv = _heads_block(kv_heads, block_d)
    widest = max(bq * block_half, bk * block_half, bv * block_d)
    num_warps = min(8, max(1, widest // 256))
    src_args = [x if x is not None else d for x, d in zip(srcs, dsts)]
    strides = [n for x in src_args + list(dsts) for n in (x.stride(0), x.stride(1))]
    _qkv_rope_kernel[(t,)](
        *src_args, *dsts, cos, sin, *strides, cos.stride(0), sin.stride(0), heads, kv_heads,
        HALF=half, BLOCK_HALF=block_half, BLOCK_HQ=bq, BLOCK_HK=bk, BLOCK_HV=bv,
        BLOCK_D=block_d, INVERSE=inverse, LOAD_Q=srcs[0] is not None,
        LOAD_K=srcs[1] is not None, LOAD_V=srcs[2] is not None, num_warps=num_warps)


def qkv_rope_forward(qkv, cos, sin, heads: int, kv_heads: int, head_dim: int):
    """qkv [T, (H + 2 Hk) D] (last stride 1) -> new contiguous q [T,H,D], k, v [T,Hk,D]."""
    t = qkv.shape[0]
    x = qkv.unflatten(1, (heads + 2 * kv_heads, head_dim))
    srcs = [x[:, :heads], x[:, heads:heads + kv_heads], x[:, heads + kv_heads:]]
    dsts = [qkv.new_empty(t, n, head_dim) for n in (heads, kv_heads, kv_heads)]
    _launch(srcs, dsts, cos, sin, heads, kv_heads, head_dim, inverse=False)
    return tuple(dsts)


def qkv_rope_backward(dq, dk, dv, cos, sin, heads: int, kv_heads: int, head_dim: int,
                      dtype: torch.dtype):
    """d_qkv [T, (H + 2 Hk) D] contiguous in `dtype` from dq, dk, dv (None: zeros; last
    stride 1)."""
    t = cos.shape[0]
    d_qkv = torch.empty(t, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=cos.device)
    x = d_qkv.unflatten(1, (heads + 2 * kv_heads, head_dim))
    dsts = [x[:, :heads], x[:, heads:heads + kv_heads], x[:, heads + kv_heads:]]
    _launch([dq, dk, dv], dsts, cos, sin, heads, kv_heads, head_dim, inverse=True)
    return d_qkv
