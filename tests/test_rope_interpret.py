"""The qkv RoPE Triton kernel under Triton's CPU interpreter, fp32 and fp16, against the fp64
RoPE by definition (tests/test_rope.py apply_rope): q, k, v and d_qkv, elementwise.

Run in a fresh process started with TRITON_INTERPRET=1 (tests/fresh_process.py says why);
skipped elsewhere. Bound per element: the kernel computes in fp32 and rounds once to the
output dtype, so |out - exact| <= u_out |exact| + 4 u_fp32 (|x1||c| + |x2||s|), u the unit
roundoff (2^-24 fp32, 2^-11 fp16); v and the dv part are copies and must be exact.
"""
import os

import pytest
import torch

from distca_kernels.rope import qkv_rope, uses_triton
from distca_kernels.triton_loader import load_kernels
from tests.test_rope import _case, _expected, _grads, _run

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="run in a fresh process with TRITON_INTERPRET=1")

U = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11}
TINY = {torch.float32: 2.0 ** -150, torch.float16: 2.0 ** -25}  # half the smallest subnormal
SHAPES = [(7, 4, 1, 6), (5, 3, 3, 10), (1, 2, 1, 4), (6, 5, 2, 8), (3, 1, 1, 2)]


def _magnitude(x, cos, sin, n, d):
    """|x1||c| + |x2||s| and |x2||c| + |x1||s| per element of a [T, n*D] part."""
    x1, x2 = x.double().abs().reshape(x.shape[0], n, d).chunk(2, -1)
    c, s = cos.double().abs().unsqueeze(1), sin.double().abs().unsqueeze(1)
    return torch.cat([x1 * c + x2 * s, x2 * c + x1 * s], -1)


def _check(qkv, cos, sin, h, hk, d, grads):
    dtype = qkv.dtype
    assert uses_triton(qkv)
    grads = [None if x is None else x.to(dtype) for x in grads]  # both sides see the same dq
    got, dx = _run(qkv, cos, sin, h, hk, d, grads)
    want, dwant = _expected(qkv, cos, sin, h, hk, d, grads)
    u = U[dtype]
    t = qkv.shape[0]
    parts = [(got[0], want[0], qkv[:, :h * d], h),
             (got[1], want[1], qkv[:, h * d:(h + hk) * d], hk)]
    zeros = [torch.zeros(t, n, d, dtype=dtype) for n in (h, hk, hk)]
    g = [x if x is not None else z for x, z in zip(grads, zeros)]
    dparts = dx.reshape(t, h + 2 * hk, d).split([h, hk, hk], 1)
    dwparts = dwant.reshape(t, h + 2 * hk, d).split([h, hk, hk], 1)
    parts += [(dparts[0], dwparts[0], g[0].flatten(1), h),
              (dparts[1], dwparts[1], g[1].flatten(1), hk)]
    worst = 0.0
    for a, b, x, n in parts:
        assert a.dtype == dtype and torch.isfinite(a).all()
        bound = u * b.abs() + 4 * 2.0 ** -24 * _magnitude(x, cos, sin, n, d) + TINY[dtype]
        ratio = ((a.double() - b).abs() / bound).max().item() if a.numel() else 0.0
        worst = max(worst, ratio)
        assert ratio <= 1.0, ratio
    assert torch.equal(got[2].double(), want[2]) and torch.equal(dparts[2].double(), dwparts[2])
    return worst


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, cos_dtype", [(torch.float32, torch.float32),
                                              (torch.float16, torch.float32),
                                              (torch.float16, torch.float16)])
def test_forward_backward(shape, dtype, cos_dtype):
    qkv, cos, sin = _case(*shape, dtype=dtype, cos_dtype=cos_dtype, seed=sum(shape))
    grads = _grads(*shape, seed=sum(shape))
    _check(qkv, cos, sin, *shape[1:], grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_view_of_a_wider_tensor(dtype):
    shape = (6, 4, 1, 10)
    qkv, cos, sin = _case(*shape, dtype=dtype, cos_dtype=torch.float32, pad=9, seed=4)
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    _check(qkv, cos, sin, *shape[1:], _grads(*shape, seed=4))


@pytest.mark.parametrize("used", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)])
def test_missing_gradients_are_zeros(used):
    shape = (5, 4, 2, 6)
    qkv, cos, sin = _case(*shape, dtype=torch.float32, seed=6)
    grads = [g if u else None for g, u in zip(_grads(*shape, seed=6), used)]
    _check(qkv, cos, sin, *shape[1:], grads)


def test_non_contiguous_and_expanded_gradients():
    t, h, hk, d = 5, 4, 2, 6
    qkv, cos, sin = _case(t, h, hk, d, dtype=torch.float32, seed=8)
    x = qkv.clone().requires_grad_()
    assert uses_triton(x)
    q, k, v = qkv_rope(x, cos, sin, h, hk, d)
    gq = torch.randn(h, t, d).transpose(0, 1)
    gk = torch.randn(t, hk, 2 * d)[..., ::2]
    torch.autograd.backward([q, k, v.sum()], [gq, gk, None])
    _, want = _expected(qkv, cos, sin, h, hk, d,
                        [gq.double(), gk.double(), torch.ones(t, hk, d, dtype=torch.float64)])
    assert (x.grad.double() - want).abs().max() <= 1e-6 * want.abs().max()


def test_head_blocks_loop(monkeypatch):
    """Wide models loop over blocks of heads: force 2-head blocks at a small size."""
    kernels = load_kernels("distca_kernels.rope.triton_rope", True)
    monkeypatch.setattr(kernels, "_MAX_BLOCK", 8)
    shape = (4, 5, 3, 6)
    qkv, cos, sin = _case(*shape, dtype=torch.float32, seed=10)
    _check(qkv, cos, sin, *shape[1:], _grads(*shape, seed=10))


def test_reports_worst_error(capsys):
    worst = {}
    for dtype in (torch.float32, torch.float16):
        shape = (32, 4, 1, 10)
        qkv, cos, sin = _case(*shape, dtype=dtype, cos_dtype=torch.float32, seed=12)
        grads = [x.to(dtype) for x in _grads(*shape, seed=12)]
        worst[dtype] = _check(qkv, cos, sin, *shape[1:], grads)
        got, dx = _run(qkv, cos, sin, *shape[1:], grads)
        want, dwant = _expected(qkv, cos, sin, *shape[1:], grads)
        print(dtype, "max abs err q", (got[0].double() - want[0]).abs().max().item(),
              "k", (got[1].double() - want[1]).abs().max().item(),
              "d_qkv", (dx.double() - dwant).abs().max().item(), "bound ratio", worst[dtype])
