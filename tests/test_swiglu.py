"""swiglu's torch path (the autograd Function with the written-out backward) against an fp64
naive silu(gate) * up, incl. gradients, autocast and validation; plus the Triton kernels on a
GPU in bf16 (marked gpu).

Errors are max-abs errors scaled by the largest |value| of the quantity: the output, and
d(gate_up) per half.
"""
import pytest
import torch

from distca_kernels.swiglu import swiglu, swiglu_reference, uses_triton

# fp32 math against fp64: measured scaled errors <= 1e-7 (out, d up), 4e-7 (d gate)
TOL32 = 2e-6
# a result rounded to a 16-bit dtype: up to half an ulp, 2^-8 (bf16) / 2^-11 (fp16) of its
# size, plus fp32 math
ROUND = {torch.bfloat16: 2 ** -8 + TOL32, torch.float16: 2 ** -11 + TOL32,
         torch.float32: TOL32, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def naive(gate_up):
    f = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :f].double(), gate_up[..., f:].double()
    return gate * torch.sigmoid(gate) * up


def case(shape, dtype=torch.float32, seed=0, device="cpu"):
    """gate_up [..., 2F] (gates spread over the saturated range too) and d(out) [..., F]."""
    gen = torch.Generator().manual_seed(seed)
    gu = (torch.randn(shape, generator=gen) * 4).to(device, dtype)
    dout = torch.randn(shape[:-1] + (shape[-1] // 2,), generator=gen).to(device, dtype)
    return gu, dout


def run(fn, gu, dout):
    gu = gu.detach().clone().requires_grad_()
    out = fn(gu)
    out.backward(dout)
    return out.detach(), gu.grad


def errors(gu, dout, out, dgu):
    """Scaled max errors of (out, d gate, d up) against the fp64 naive reference."""
    out64, dgu64 = run(naive, gu.double(), dout.double())
    f = gu.shape[-1] // 2

    def err(a, b):
        return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    return (err(out, out64), err(dgu[..., :f], dgu64[..., :f]),
            err(dgu[..., f:], dgu64[..., f:]))


@pytest.mark.parametrize("shape", [(1, 2), (5, 2), (4, 6), (7, 260), (3, 4096), (2, 3, 260),
                                   (2, 1, 4, 6)])
def test_fp32_matches_fp64_reference(shape):
    gu, dout = case(shape, seed=sum(shape))
    out, dgu = run(swiglu, gu, dout)
    assert out.shape == dout.shape and dgu.shape == gu.shape
    assert max(errors(gu, dout, out, dgu)) < TOL32


def test_matches_the_model_module_exactly():
    """F.silu(gate) * up as distca/model/layers.py:SwiGLU computes it, for fp32 input."""
    gu, _ = case((4, 260))
    gate, up = gu.chunk(2, dim=-1)
    assert torch.equal(swiglu(gu), torch.nn.functional.silu(gate) * up)


@pytest.mark.parametrize("shape", [(3, 8), (2, 2, 6), (4, 2)])
def test_gradcheck_fp64(shape):
    gu, _ = case(shape, torch.float64)
    assert torch.autograd.gradcheck(swiglu, (gu.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype):
    gu, dout = case((3, 2, 260), dtype, seed=1)
    out, dgu = run(swiglu, gu, dout)
    assert out.dtype == dtype and dgu.dtype == dtype
    assert max(errors(gu, dout, out, dgu)) < ROUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_enclosing_autocast_changes_nothing(dtype):
    gu, dout = case((5, 260), dtype, seed=2)
    plain = run(swiglu, gu, dout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(swiglu, gu, dout)
    for a, b in zip(auto, plain):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)


def test_strided_inputs():
    base, _ = case((6, 3, 520), seed=3)
    for gu in (base[..., :260],           # a row stride wider than 2F
               base.transpose(0, 1),      # leading dims that do not flatten to one stride
               base[:, 0, :6].t().contiguous().t()):  # a strided last dim
        dout = torch.randn(gu.shape[:-1] + (gu.shape[-1] // 2,))
        assert max(errors(gu, dout, *run(swiglu, gu, dout))) < TOL32


def test_empty_rows():
    gu, dout = case((0, 6))
    out, dgu = run(swiglu, gu, dout)
    assert out.shape == (0, 3) and dgu.shape == (0, 6)


def test_saves_only_gate_up_and_returns_a_new_gradient():
    gu, dout = case((6, 260))
    gu.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = swiglu(gu)
    assert len(saved) == 1 and saved[0] is gu
    before = gu.detach().clone()
    out.backward(dout)
    assert torch.equal(gu.detach(), before)
    assert gu.grad.data_ptr() != gu.data_ptr()


@pytest.mark.parametrize("arg,match", [
    (torch.ones(2, 5), "last dimension"),
    (torch.ones(2, 0), "last dimension"),
    (torch.tensor(1.0), "last dimension"),
    (torch.ones(2, 4, dtype=torch.int32), "float"),
    (torch.ones(2, 4, dtype=torch.bool), "float"),
    ([1.0, 2.0], "torch.Tensor"),
])
def test_validation(arg, match):
    with pytest.raises(ValueError, match=f"gate_up.*{match}|{match}.*gate_up"):
        swiglu(arg)


# ---------------------------------------------------------------- GPU (bf16), marked gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("shape", [(4096, 16384), (777, 260), (33, 6), (5, 2), (300, 10000),
                                   (2, 3, 16384)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.gpu
@needs_cuda
def test_gpu_kernel_vs_torch_in_same_dtype(shape, dtype):
    """Triton error vs fp64 <= 2x the torch reference's (same dtype) + a small atol."""
    gu, dout = case(shape, dtype, seed=len(shape), device="cuda")
    assert uses_triton(gu)
    kernel = errors(gu, dout, *run(swiglu, gu, dout))
    torch_ = errors(gu, dout, *run(swiglu_reference, gu, dout))
    print(shape, dtype, "kernel", kernel, "torch", torch_)
    for k, t in zip(kernel, torch_):
        assert k <= 2 * t + 1e-3


@pytest.mark.parametrize("shape", [(4096, 16384), (777, 260), (5, 2)])
@pytest.mark.gpu
@needs_cuda
def test_gpu_fp32_matches_fp64(shape):
    gu, dout = case(shape, seed=5, device="cuda")
    assert max(errors(gu, dout, *run(swiglu, gu, dout))) < TOL32


@pytest.mark.gpu
@needs_cuda
def test_gpu_strided_rows_and_autocast():
    base, _ = case((1000, 3, 16384), torch.bfloat16, seed=6, device="cuda")
    gu = base[:, 1, :]  # row stride 3 * 2F
    dout = torch.randn(1000, 8192, device="cuda").bfloat16()
    plain = run(swiglu, gu, dout)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = run(swiglu, gu, dout)
    for a, b in zip(auto, plain):
        assert torch.equal(a, b)
    assert max(errors(gu, dout, *plain)) < ROUND[torch.bfloat16]
