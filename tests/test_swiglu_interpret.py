"""swiglu's Triton kernels under Triton's CPU interpreter, fp32 and fp16, against the fp64
naive silu(gate) * up: output and d(gate_up), odd widths, 3-D and row-strided inputs, and
tiles that stack rows, split a row into several column blocks, or end part-way.

Needs TRITON_INTERPRET=1 before triton's first import (a fresh process: see
tests/fresh_process.py); skipped elsewhere. Error measures and tolerances as in
test_swiglu.py (measured: fp32 <= 4e-7 scaled; fp16 <= 0.9 half-ulp).
"""
import os

import pytest
import torch

from distca_kernels.swiglu import swiglu, uses_triton
from distca_kernels.triton_loader import load_kernels
from tests.test_swiglu import ROUND, TOL32, case, errors, run

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 at process start")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2), (5, 2), (4, 6), (7, 260), (3, 4096), (2, 10000),
                                   (2, 3, 260)])
def test_matches_fp64_reference(shape, dtype):
    gu, dout = case(shape, dtype, seed=sum(shape))
    assert uses_triton(gu)
    out, dgu = run(swiglu, gu, dout)
    assert out.dtype == dtype and dgu.dtype == dtype and dgu.shape == gu.shape
    assert max(errors(gu, dout, out, dgu)) < ROUND[dtype]


def test_strided_inputs():
    base, _ = case((5, 3, 520), seed=3)
    for gu in (base[..., :260], base.transpose(0, 1), base[:, 0, :6].t().contiguous().t()):
        dout = torch.randn(gu.shape[:-1] + (gu.shape[-1] // 2,))
        assert max(errors(gu, dout, *run(swiglu, gu, dout))) < TOL32


@pytest.mark.parametrize("n,f,block_m,block_f", [(7, 130, 2, 32), (5, 3, 4, 2), (3, 64, 1, 16),
                                                 (9, 1, 4, 1), (6, 5, 4, 8)])
def test_row_and_column_blocks_with_partial_tiles(n, f, block_m, block_f):
    kernels = load_kernels("distca_kernels.swiglu.triton_swiglu", True)
    gu, dout = case((n, 2 * f), seed=n + f)
    out = kernels.swiglu_forward(gu, block_f=block_f, block_m=block_m)
    dgu = kernels.swiglu_backward(dout, gu, block_f=block_f, block_m=block_m)
    assert max(errors(gu, dout, out, dgu)) < TOL32


def test_autocast_does_not_reach_the_kernels():
    gu, dout = case((4, 260), seed=4)
    plain = run(swiglu, gu, dout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(swiglu, gu, dout)
    for a, b in zip(auto, plain):
        assert a.dtype == b.dtype and torch.equal(a, b)
