"""The cross-entropy row kernel: per-row loss and, in place, d(loss)/d(logits).

One program per row of a [n, V] logits buffer (V up to ~256K). Pass 1 streams the row in
BLOCK_V blocks keeping an online max and sum of exponentials in fp32, so the row is never
held whole; loss = lse - x[label]. Pass 2 (WRITE_GRAD) streams it again and overwrites it with
softmax - onehot in the buffer's dtype: the backward GEMMs then read the gradient from the
very buffer the forward GEMM wrote, and no second [n, V] tensor exists. Rows labelled
IGNORE get loss 0 and a zero gradient row.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _online_update(m, s, x):
    m_new = tl.maximum(m, tl.max(x, 0))
    return m_new, s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)


@triton.jit
def _grad(x, cols, lse, label, ignored):
    p = tl.exp(x - lse)
    p = tl.where(cols == label, p - 1.0, p)
    return tl.where(ignored, 0.0, p)


@triton.jit
def _ce_rows_kernel(logits, stride_row, labels, losses, V, IGNORE: tl.constexpr,
                    BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    # Full blocks load and store without a mask, so they vectorise whatever V is (the row
    # stride is padded to 16 elements by the caller); only the ragged tail block is masked.
    row = tl.program_id(0).to(tl.int64)  # n * V passes 2**31 at chunk 16K x vocab 128K
    ptr = logits + row * stride_row
    label = tl.load(labels + row)
    ignored = label == IGNORE
    offs = tl.arange(0, BLOCK_V)
    v_full = V // BLOCK_V * BLOCK_V

    m = float("-inf")
    s = 0.0
    for start in range(0, v_full, BLOCK_V):
        m, s = _online_update(m, s, tl.load(ptr + start + offs).to(tl.float32))
    if v_full < V:
        cols = v_full + offs
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m, s = _online_update(m, s, x)
    lse = m + tl.log(s)
    # an ignored row's label (-100) is no column: read column 0 instead and discard it
    x_label = tl.load(ptr + tl.where(ignored, 0, label)).to(tl.float32)
    tl.store(losses + row, tl.where(ignored, 0.0, lse - x_label))

    if WRITE_GRAD:
        for start in range(0, v_full, BLOCK_V):
            cols = start + offs
            x = tl.load(ptr + cols).to(tl.float32)
            tl.store(ptr + cols, _grad(x, cols, lse, label, ignored).to(logits.dtype.element_ty))
        if v_full < V:
            cols = v_full + offs
            mask = cols < V
            x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(ptr + cols, _grad(x, cols, lse, label, ignored).to(logits.dtype.element_ty),
                     mask=mask)


def ce_rows(logits, labels, losses, write_grad: bool, max_block_v: int = 8192,
            ignore_index: int = -100) -> None:
    """logits [n, V] (unit column stride; overwritten with softmax - onehot if write_grad),
    labels [n] int64, losses [n] fp32 (written). Pad the row stride to a multiple of 16
    elements so rows start aligned for vector loads."""
    n, v = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must have unit column stride")
    if n == 0:
        return
    block = min(triton.next_power_of_2(v), max_block_v)
    # enough lanes for 16-byte vector loads over the block, not more (short rows)
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    _ce_rows_kernel[(n,)](logits, logits.stride(0), labels, losses, v, IGNORE=ignore_index,
                          BLOCK_V=block, WRITE_GRAD=write_grad, num_warps=num_warps)
