"""Triton kernels of `swiglu` and their launch wrappers, on 2-D views: gate_up [n, 2F] with
unit column stride and any row stride; out / d(out) [n, F].

Elementwise, so a program takes a tile of BLOCK_M rows x BLOCK_F columns of the gate half and
the matching columns of the up half (F apart in the same row); tiles are numbered row-major on
one grid axis (a second axis would cap the column blocks at 65535). fp32 math inside.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE_ELEMENTS = 2048  # per half and program: 16 values a thread at 4 warps


@triton.jit
def _tile(n_rows, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(F, BLOCK_F)
    rows = (pid // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % n_col_blocks) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows < n_rows)[:, None] & (cols < F)[None, :]
    return rows.to(tl.int64), cols, mask  # int64: rows * stride passes 2**31 at 128K tokens


@triton.jit
def _swiglu_forward_kernel(gu_ptr, out_ptr, n_rows, F, gu_stride, out_stride,
                    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows, cols, mask = _tile(n_rows, F, BLOCK_M, BLOCK_F)
    gate_ptrs = gu_ptr + rows[:, None] * gu_stride + cols[None, :]
    g = tl.load(gate_ptrs, mask=mask, other=0.).to(tl.float32)
    u = tl.load(gate_ptrs + F, mask=mask, other=0.).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(dout_ptr, gu_ptr, dgu_ptr, n_rows, F, dout_stride, gu_stride, dgu_stride,
                     BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows, cols, mask = _tile(n_rows, F, BLOCK_M, BLOCK_F)
    gate_ptrs = gu_ptr + rows[:, None] * gu_stride + cols[None, :]
    g = tl.load(gate_ptrs, mask=mask, other=0.).to(tl.float32)
    u = tl.load(gate_ptrs + F, mask=mask, other=0.).to(tl.float32)
    dh = tl.load(dout_ptr + rows[:, None] * dout_stride + cols[None, :], mask=mask,
                 other=0.).to(tl.float32)
    s = tl.sigmoid(g)
    # d silu(g) / dg = s * (1 + g * (1 - s)), as torch's silu backward
    dg = dh * u * s * (1. + g * (1. - s))
    du = dh * g * s
    dgate_ptrs = dgu_ptr + rows[:, None] * dgu_stride + cols[None, :]
    tl.store(dgate_ptrs, dg.to(dgu_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_ptrs + F, du.to(dgu_ptr.dtype.element_ty), mask=mask)


def _launch(n_rows: int, F: int, block_f: int | None, block_m: int | None):
    """(grid, BLOCK_M, BLOCK_F, num_warps): tiles of ~TILE_ELEMENTS, rows stacked when F is
    narrow (the block arguments override, for tests)."""
    bf = block_f or min(triton.next_power_of_2(F), TILE_ELEMENTS)
    bm = block_m or max(1, min(TILE_ELEMENTS // bf, triton.next_power_of_2(max(n_rows, 1))))
    warps = 4 if bm * bf >= 512 else 1
    grid = (triton.cdiv(n_rows, bm) * triton.cdiv(F, bf),)
    return grid, bm, bf, warps


def swiglu_forward(gu2: torch.Tensor, block_f: int | None = None,
                   block_m: int | None = None) -> torch.Tensor:
    """gu2 [n, 2F] (stride(1) == 1) -> silu(gate) * up [n, F] in gu2's dtype."""
    n, F = gu2.shape[0], gu2.shape[1] // 2
    out = torch.empty((n, F), dtype=gu2.dtype, device=gu2.device)
    grid, bm, bf, warps = _launch(n, F, block_f, block_m)
    _swiglu_forward_kernel[grid](gu2, out, n, F, gu2.stride(0), out.stride(0),
                          BLOCK_M=bm, BLOCK_F=bf, num_warps=warps)
    return out


def swiglu_backward(dout2: torch.Tensor, gu2: torch.Tensor, block_f: int | None = None,
                    block_m: int | None = None) -> torch.Tensor:
    """dout2 [n, F], gu2 [n, 2F] (stride(1) == 1) -> d(gate_up) [n, 2F], a new tensor in
    gu2's dtype."""
    n, F = gu2.shape[0], gu2.shape[1] // 2
    dgu = torch.empty((n, 2 * F), dtype=gu2.dtype, device=gu2.device)
    grid, bm, bf, warps = _launch(n, F, block_f, block_m)
    _swiglu_backward_kernel[grid](dout2, gu2, dgu, n, F, dout2.stride(0), gu2.stride(0), dgu.stride(0),
                           BLOCK_M=bm, BLOCK_F=bf, num_warps=warps)
    return dgu
