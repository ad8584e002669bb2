"""Pieces shared by the forward and backward Triton kernels.

Work is split into *segments*: runs of up to `chunks_per_segment` chunks of BT tokens, never
crossing a document boundary. One program owns one (segment, head, V-block) and walks its
chunks in order with the d_k x BV state in fp32 registers, so per-chunk states never touch
device memory; only one state per segment does (see `segment_scan_kernel`).

Decay modes (constexpr DECAY): 0 none, 1 a constant log-decay per head (g_gamma),
2 a per-token log-decay (g). All exponents the kernels take are <= 0: within a chunk we use
b_i = inclusive cumsum of g from the chunk start, and only exp(b_i), exp(b_last - b_j) and
exp(b_i - b_j) for i >= j (the causal mask is applied to the exponent, as -inf, before exp).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton reads TRITON_INTERPRET when it is imported; we follow the same value.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def chunk_log_decay(g, gam, t0, eos, i_h, H, BT: tl.constexpr, DECAY: tl.constexpr):
    """Return (b [BT], b_last): cumulative log-decay from the chunk start, and its value at the
    chunk's last valid row. Rows past the end of the segment repeat b_last."""
    rows = tl.arange(0, BT)
    if DECAY == 2:
        gv = tl.load(g + (t0 + rows) * H + i_h, mask=(t0 + rows) < eos, other=0.).to(tl.float32)
        b = tl.cumsum(gv, axis=0)
        b_last = tl.sum(gv, axis=0)
    else:
        n_valid = tl.minimum(eos - t0, BT).to(tl.float32)
        b = gam * tl.minimum((rows + 1).to(tl.float32), n_valid)
        b_last = gam * n_valid
    return b, b_last


@triton.jit
def load_rows(ptr, t0, eos, i_h, H, D: tl.constexpr, cols, BT: tl.constexpr):
    """Load a [BT, len(cols)] tile of a [tokens, H, D] tensor for head i_h, rows t0..t0+BT-1;
    rows at or past `eos` and columns past D read as 0."""
    rows = tl.arange(0, BT)
    t = t0 + rows
    mask = (t < eos)[:, None] & (cols < D)[None, :]
    return tl.load(ptr + (t[:, None] * H + i_h) * D + cols[None, :], mask=mask, other=0.)


@triton.jit
def store_rows(ptr, val, t0, eos, i_h, H, D: tl.constexpr, cols, BT: tl.constexpr):
    rows = tl.arange(0, BT)
    t = t0 + rows
    mask = (t < eos)[:, None] & (cols < D)[None, :]
    tl.store(ptr + (t[:, None] * H + i_h) * D + cols[None, :], val.to(ptr.dtype.element_ty),
             mask=mask)


def tuned(fn, key):
    """Autotune over warps and pipeline depth on a GPU; under the interpreter the plain kernel
    (autotuning there would time every variant on the CPU for nothing). Every tuned kernel
    overwrites all of its outputs, so the tuner's repeated launches are harmless."""
    if INTERPRET:
        return fn
    configs = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3)]
    return triton.autotune(configs=configs, key=key)(fn)
