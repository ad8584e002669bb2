"""rms_norm's Triton kernels under Triton's CPU interpreter, fp32 and fp16, against the fp64
naive RMSNorm: outputs and both gradients, odd widths, 3-D and row-strided inputs, and the
backward's persistent loop with several tiles per program and a partial last tile.

Needs TRITON_INTERPRET=1 before triton's first import (a fresh process: see
tests/fresh_process.py); skipped elsewhere. Error measures and tolerances as in
test_rms_norm.py (measured: fp32 <= 2e-7 scaled; 16-bit results <= 0.9 half-ulp).
"""
import os

import pytest
import torch

from distca_kernels.rms_norm import rms_norm, uses_triton
from distca_kernels.triton_loader import load_kernels
from tests.test_rms_norm import EPS, ROUND, TOL32, case, errors, run

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 at process start")


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (4, 3), (7, 130), (3, 2000), (2, 2048),
                                   (2, 3, 130)])
def test_fp32(shape):
    x, w, dy = case(shape, seed=sum(shape))
    assert uses_triton(x, w)
    y, dx, dw = run(rms_norm, x, w, dy)
    assert max(errors(x, w, dy, y, dx, dw)) < TOL32


@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", [
    (torch.float32, torch.float32, torch.float16),   # fp32 residual into a 16-bit matmul
    (torch.float16, torch.float32, None),
    (torch.float16, torch.float16, None),
    (torch.float16, torch.float32, torch.float32),
    (torch.float32, torch.float16, torch.float32),
])
@pytest.mark.parametrize("shape", [(3, 1), (2, 3, 130), (3, 2048)])
def test_fp16_mixes(shape, x_dtype, w_dtype, out_dtype):
    x, w, dy = case(shape, x_dtype, w_dtype, out_dtype, seed=1)
    assert uses_triton(x, w, out_dtype)
    y, dx, dw = run(rms_norm, x, w, dy, out_dtype=out_dtype)
    assert (y.dtype, dx.dtype, dw.dtype) == (out_dtype or x_dtype, x_dtype, w_dtype)
    ey, edx, edw = errors(x, w, dy, y, dx, dw)
    assert ey < ROUND[out_dtype or x_dtype]
    assert edx < ROUND[x_dtype]
    assert edw < ROUND[w_dtype]


def test_strided_rows_and_columns():
    base, w, _ = case((5, 3, 260), seed=3)
    for x in (base[..., :130], base.transpose(0, 1), base[:, 0, :7].t().contiguous().t()):
        wx = w[:x.shape[-1]].contiguous()
        dy = torch.randn(x.shape)
        assert max(errors(x, wx, dy, *run(rms_norm, x, wx, dy))) < TOL32


@pytest.mark.parametrize("n,d,block_m,programs", [(7, 130, 2, 3), (9, 3, 4, 2), (5, 1, 1, 8),
                                                  (16, 64, 4, 1)])
def test_backward_loop_and_partials(n, d, block_m, programs):
    """Each program walks several row tiles (the last one partial) and adds a dW partial."""
    kernels = load_kernels("distca_kernels.rms_norm.triton_rms_norm", True)
    x, w, dy = case((n, d), seed=n + d)
    y, rstd = kernels.rms_norm_forward(x, w, EPS, torch.float32, block_m=block_m)
    dx, dw = kernels.rms_norm_backward(dy, x, w, rstd, block_m=block_m, programs=programs)
    assert max(errors(x, w, dy, y, dx, dw)) < TOL32
    ref_rstd = torch.rsqrt(x.double().pow(2).mean(-1) + EPS)
    assert ((rstd.double() - ref_rstd).abs() / ref_rstd).max() < TOL32


def test_autocast_does_not_reach_the_kernels():
    x, w, dy = case((4, 130), seed=4)
    plain = run(rms_norm, x, w, dy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(rms_norm, x, w, dy)
    for a, b in zip(auto, plain):
        assert a.dtype == b.dtype and torch.equal(a, b)
