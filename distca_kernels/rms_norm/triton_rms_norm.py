"""Triton kernels of `rms_norm` and their launch wrappers (2-D [rows, d] views, last dim
contiguous, any row stride).

Forward: one program per tile of BLOCK_M rows x BLOCK_D = next_power_of_2(d) columns, so a
row is read once, reduced in registers and written once (plus 4 bytes of rstd).
Backward: a persistent grid of a few programs per multiprocessor; each walks row tiles with
a stride of the grid size, writes dx, and accumulates dy * xhat in registers. Each program
then writes one fp32 partial dW row; the partials are summed by torch (Liger's scheme: no
atomics, so dW is deterministic).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

TILE_ELEMENTS = 4096  # per program: 16 fp32 values a thread at 8 warps


@triton.jit
def _rms_norm_forward_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, d, x_stride, y_stride, eps,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < d
    mask = row_ok[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)  # rows * stride passes 2**31 at long sequences
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask,
                other=0.).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / d + eps)
    # (x * rstd) * w: the rounding order of the torch module
    y = (x * rstd[:, None]) * w[None, :]
    tl.store(y_ptr + rows[:, None] * y_stride + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_backward_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, n_rows, d, n_tiles,
                     dy_stride, x_stride, dx_stride,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < d
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # reduced over rows once, at the end
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows = rows.to(tl.int64)
        # rows past the end load as 0 and so add nothing to dw
        x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask,
                    other=0.).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * dy_stride + cols[None, :], mask=mask,
                     other=0.).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.)
        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * xhat, axis=1) / d
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * dx_stride + cols[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(dw_ptr + pid * d + cols, tl.sum(dw, axis=0), mask=col_ok)


def _blocks(n_rows: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): tiles of ~TILE_ELEMENTS (one row when d is larger)."""
    block_d = triton.next_power_of_2(d)
    block_m = max(1, min(TILE_ELEMENTS // block_d, triton.next_power_of_2(max(n_rows, 1))))
    warps = min(32, max(4, block_m * block_d // 512))
    return block_m, block_d, warps


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def rms_norm_forward(x2: torch.Tensor, weight: torch.Tensor, eps: float,
                     out_dtype: torch.dtype, block_m: int | None = None):
    """x2 [n, d] (stride(1) == 1) -> (y [n, d] out_dtype, rstd [n] fp32)."""
    n, d = x2.shape
    bm, bd, warps = _blocks(n, d)
    bm = block_m or bm
    y = torch.empty((n, d), dtype=out_dtype, device=x2.device)
    rstd = torch.empty((n,), dtype=torch.float32, device=x2.device)
    _rms_norm_forward_kernel[(triton.cdiv(n, bm),)](x2, weight, y, rstd, n, d, x2.stride(0), y.stride(0),
                                           eps, BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
    return y, rstd


def rms_norm_backward(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                      rstd: torch.Tensor, block_m: int | None = None,
                      programs: int | None = None):
    """dy2, x2 [n, d] (stride(1) == 1), rstd [n] fp32 -> (dx [n, d] in x's dtype,
    dweight [d] in weight's dtype)."""
    n, d = x2.shape
    bm, bd, warps = _blocks(n, d)
    bm = block_m or bm
    n_tiles = triton.cdiv(n, bm)
    if programs is None:
        # two resident programs a multiprocessor hide the latency of the row loop; more
        # would only add partial rows to sum
        programs = 2 * _sm_count(x2.device.index or 0) if x2.is_cuda else 4
    programs = max(1, min(programs, n_tiles))
    dx = torch.empty((n, d), dtype=x2.dtype, device=x2.device)
    partial = torch.empty((programs, d), dtype=torch.float32, device=x2.device)
    _rms_norm_backward_kernel[(programs,)](dy2, x2, weight, rstd, dx, partial, n, d, n_tiles,
                                  dy2.stride(0), x2.stride(0), dx.stride(0),
                                  BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
    return dx, partial.sum(0).to(weight.dtype)
