"""rms_norm's torch path (the autograd Function with the written-out backward) against an
fp64 naive RMSNorm, incl. gradients, mixed dtypes, autocast and validation; plus the Triton
kernels on a GPU in bf16 (marked gpu).

Errors are max-abs errors scaled by the size of the quantity or its terms: |y| for y,
max(|dx|, |dy w rstd|) for dx (at d = 1 dx is a near-cancellation of two terms of size
|dy w rstd|), sum_rows |dy xhat| for dweight.
"""
import pytest
import torch

from distca_kernels.rms_norm import rms_norm, rms_norm_reference, uses_triton

EPS = 1e-5
# fp32 math against fp64: measured scaled errors <= 2e-7 (y, dx, dweight; widths 1 to 2048)
TOL32 = 5e-6
# a result rounded to a 16-bit dtype: up to half an ulp, 2^-8 (bf16) / 2^-11 (fp16) of its
# size, plus fp32 math; measured up to 0.9 of that
ROUND = {torch.bfloat16: 2 ** -8 + TOL32, torch.float16: 2 ** -11 + TOL32,
         torch.float32: TOL32, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def naive(x, w, eps=EPS):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def module_formula(x, w, eps=EPS):
    """distca/model/layers.py:RMSNorm.forward as of this op's writing."""
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * w.to(acc)).to(x.dtype)


def case(shape, x_dtype=torch.float32, w_dtype=torch.float32, out_dtype=None, seed=0,
         device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = (torch.randn(shape, generator=gen) * 3).to(device, x_dtype)
    w = (1 + 0.5 * torch.randn(d, generator=gen)).to(device, w_dtype)
    dy = torch.randn(shape, generator=gen).to(device, out_dtype or x_dtype)
    return x, w, dy


def run(fn, x, w, dy, **kw):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w, EPS, **kw)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def errors(x, w, dy, y, dx, dw):
    """Scaled max errors of (y, dx, dw) against the fp64 naive reference on the same inputs."""
    y64, dx64, dw64 = run(lambda a, b, eps: naive(a, b, eps), x.double(), w.double(),
                          dy.double())
    d = x.shape[-1]
    rstd = torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + EPS)
    xhat = x.double() * rstd

    def err(a, b, scale):
        return ((a.double() - b).abs().max() / scale.max().clamp_min(1e-300)).item()

    return (err(y, y64, y64.abs()),
            err(dx, dx64, torch.maximum((dy.double() * w.double() * rstd).abs(), dx64.abs())),
            err(dw, dw64, (dy.double() * xhat).abs().reshape(-1, d).sum(0)))


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (4, 3), (7, 130), (3, 2000), (2, 2048),
                                   (2, 3, 130), (2, 1, 4, 3)])
def test_fp32_matches_fp64_reference(shape):
    x, w, dy = case(shape, seed=sum(shape))
    y, dx, dw = run(rms_norm, x, w, dy)
    assert y.shape == x.shape and dx.shape == x.shape and dw.shape == w.shape
    assert max(errors(x, w, dy, y, dx, dw)) < TOL32


def test_matches_the_model_module_exactly():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x, w, _ = case((4, 130), x_dtype=dtype)
        assert torch.equal(rms_norm(x, w, EPS), module_formula(x, w))


@pytest.mark.parametrize("shape", [(3, 7), (2, 2, 5), (4, 1)])
def test_gradcheck_fp64(shape):
    x, w, _ = case(shape, x_dtype=torch.float64, w_dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 0.1), (x, w))


@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", [
    (torch.float32, torch.float32, torch.bfloat16),
    (torch.float32, torch.float32, torch.float16),
    (torch.bfloat16, torch.float32, None),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16, None),
    (torch.float16, torch.float32, None),
    (torch.float32, torch.bfloat16, torch.float32),
    (torch.float64, torch.float32, None),
    (torch.float32, torch.float64, torch.float64),
])
def test_mixed_dtypes(x_dtype, w_dtype, out_dtype):
    x, w, dy = case((3, 2, 130), x_dtype, w_dtype, out_dtype, seed=1)
    y, dx, dw = run(rms_norm, x, w, dy, out_dtype=out_dtype)
    assert (y.dtype, dx.dtype, dw.dtype) == (out_dtype or x_dtype, x_dtype, w_dtype)
    ey, edx, edw = errors(x, w, dy, y, dx, dw)
    math = ROUND[torch.float64 if x_dtype == torch.float64 else torch.float32]
    assert ey < max(ROUND[out_dtype or x_dtype], math)
    assert edx < max(ROUND[x_dtype], math)
    assert edw < max(ROUND[w_dtype], math)


@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_enclosing_autocast_changes_nothing(out_dtype):
    x, w, dy = case((5, 130), out_dtype=out_dtype, seed=2)
    plain = run(rms_norm, x, w, dy, out_dtype=out_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(rms_norm, x, w, dy, out_dtype=out_dtype)
    for a, b in zip(auto, plain):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_strided_inputs():
    base, w, _ = case((6, 3, 260), seed=3)
    for x in (base[..., :130],            # a row stride wider than d
              base.transpose(0, 1),       # leading dims that do not flatten to one stride
              base[:, 0, :130].t().contiguous().t()):  # a strided last dim
        dy = torch.randn(x.shape)
        y, dx, dw = run(rms_norm, x, w[:x.shape[-1]], dy)
        assert max(errors(x, w[:x.shape[-1]], dy, y, dx, dw)) < TOL32


def test_empty_rows():
    for shape in [(0, 4), (2, 0, 4)]:
        x, w, dy = case(shape)
        y, dx, dw = run(rms_norm, x, w, dy)
        assert y.shape == shape and dx.shape == shape
        assert torch.equal(dw, torch.zeros(4))


def test_saves_only_x_weight_and_rstd():
    x, w, _ = case((6, 130))
    x.requires_grad_()
    w.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        rms_norm(x, w, EPS, torch.bfloat16)
    assert len(saved) == 3
    assert saved[0] is x and saved[1] is w
    assert saved[2].shape == (6,) and saved[2].dtype == torch.float32


def test_grads_only_where_asked():
    x, w, dy = case((3, 8))
    xg = x.clone().requires_grad_()
    rms_norm(xg, w, EPS).backward(dy)
    assert xg.grad is not None and w.grad is None
    wg = w.clone().requires_grad_()
    rms_norm(x, wg, EPS).backward(dy)
    assert wg.grad is not None


@pytest.mark.parametrize("args,match", [
    ((torch.ones(2, 4), torch.ones(3), EPS), "weight must have shape"),
    ((torch.ones(2, 4), torch.ones(1, 4), EPS), "weight must have shape"),
    ((torch.ones(2, 4, dtype=torch.int32), torch.ones(4), EPS), "x must be a float"),
    ((torch.ones(2, 4), torch.ones(4, dtype=torch.int64), EPS), "weight must be a float"),
    ((torch.ones(2, 0), torch.ones(0), EPS), "last dimension"),
    ((torch.tensor(1.0), torch.ones(1), EPS), "last dimension"),
    (([1.0, 2.0], torch.ones(2), EPS), "x must be a torch.Tensor"),
    ((torch.ones(2, 4), torch.ones(4), -1e-5), "eps"),
    ((torch.ones(2, 4), torch.ones(4), float("nan")), "eps"),
    ((torch.ones(2, 4), torch.ones(4), True), "eps"),
    ((torch.ones(2, 4), torch.ones(4), EPS, torch.int8), "out_dtype"),
])
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        rms_norm(*args)


# ---------------------------------------------------------------- GPU (bf16), marked gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("shape", [(4096, 2048), (20000, 2048), (777, 130), (33, 3), (5, 1),
                                   (300, 5000), (2, 3, 4096)])
@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", [
    (torch.float32, torch.float32, torch.bfloat16),   # fp32 residual into a bf16 matmul
    (torch.bfloat16, torch.float32, None),
    (torch.bfloat16, torch.bfloat16, None),
])
@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_kernel_vs_torch_in_bf16(shape, x_dtype, w_dtype, out_dtype):
    """Triton error vs fp64 <= 2x the torch reference's (same dtypes) + a small atol."""
    x, w, dy = case(shape, x_dtype, w_dtype, out_dtype, seed=len(shape), device="cuda")
    assert uses_triton(x, w, out_dtype)
    kernel = errors(x, w, dy, *run(rms_norm, x, w, dy, out_dtype=out_dtype))
    torch_ = errors(x, w, dy, *run(rms_norm_reference, x, w, dy, out_dtype=out_dtype))
    print(shape, x_dtype, w_dtype, out_dtype, "kernel", kernel, "torch", torch_)
    for k, t in zip(kernel, torch_):
        assert k <= 2 * t + 1e-3


@pytest.mark.parametrize("shape", [(4096, 2048), (777, 130), (5, 1), (2, 3, 130)])
@pytest.mark.gpu
@needs_cuda
def test_gpu_fp32_matches_fp64(shape):
    x, w, dy = case(shape, seed=5, device="cuda")
    assert max(errors(x, w, dy, *run(rms_norm, x, w, dy))) < TOL32


@pytest.mark.gpu
@needs_cuda
def test_gpu_strided_rows_and_autocast():
    base, w, _ = case((1000, 3, 2048), seed=6, device="cuda")
    x = base[:, 1, :]  # row stride 3 * 2048
    dy = torch.randn(x.shape, device="cuda").bfloat16()
    plain = run(rms_norm, x, w, dy, out_dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = run(rms_norm, x, w, dy, out_dtype=torch.bfloat16)
    for a, b in zip(auto, plain):
        assert torch.equal(a, b)
    ey, edx, edw = errors(x, w, dy, *plain)
    assert ey < ROUND[torch.bfloat16] and edx < TOL32 and edw < TOL32
