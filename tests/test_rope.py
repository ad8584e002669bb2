"""distca_kernels.rope.qkv_rope against RoPE by definition (`apply_rope` below) in fp64.

The CPU tests run the torch path (TRITON_INTERPRET unset; the Triton kernels under the
interpreter are tests/test_rope_interpret.py). The gpu-marked tests run the Triton kernel in
bf16/fp16/fp32 on a CUDA GPU. The helpers here (_case, _expected, _run) are shared with the
interpreter tests.
"""
import pytest
import torch

from distca.config.schema import ModelConfig
from distca.model.rope import rope_cos_sin
from distca_kernels.rope import (
    qkv_rope,
    qkv_rope_backward_reference,
    qkv_rope_reference,
    uses_triton,
)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated pairwise (half-split convention, as HF Llama): RoPE by definition,
    written out here independently of the kernel and its reference."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

F64 = torch.float64
# (T, H, Hk, D): GQA, MHA, T=1, head dims that are not powers of two
SHAPES = [(7, 4, 1, 6), (5, 3, 3, 10), (1, 2, 1, 4), (9, 4, 2, 8), (4, 5, 1, 2)]


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch, request):
    if "gpu" not in request.keywords:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _case(t, h, hk, d, dtype=F64, cos_dtype=None, pad=0, seed=0, device="cpu"):
    """qkv [T, (H+2Hk)D] (a strided view of a wider tensor when pad > 0) and cos/sin from
    positions that restart at every document (the model's rope_cos_sin)."""
    gen = torch.Generator().manual_seed(seed)
    width = (h + 2 * hk) * d
    wide = torch.randn(t, width + pad, generator=gen, dtype=F64)
    qkv = wide.to(device=device, dtype=dtype)[:, pad // 2:pad // 2 + width]
    lengths, left = [], t
    while left > 0:
        lengths.append(min(left, int(torch.randint(1, 6, (1,), generator=gen))))
        left -= lengths[-1]
    pos = torch.cat([torch.arange(n) + int(torch.randint(0, 50, (1,), generator=gen))
                     for n in lengths]) if t else torch.zeros(0, dtype=torch.long)
    cos, sin = rope_cos_sin(pos.to(device), d, ModelConfig(rope_theta=10000.0), cos_dtype or dtype)
    return qkv, cos, sin


def _grads(t, h, hk, d, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed + 1000)
    return [torch.randn(t, n, d, generator=gen, dtype=F64).to(device) for n in (h, hk, hk)]


def _expected(qkv, cos, sin, h, hk, d, grads):
    """fp64 (q, k, v) through the model's apply_rope, and d_qkv for grads (None: output
    unused)."""
    x = qkv.detach().double().requires_grad_()
    t = x.shape[0]
    qr, kr, vr = x.split([h * d, hk * d, hk * d], -1)
    c, s = cos.double(), sin.double()
    outs = [apply_rope(qr.reshape(t, h, d), c, s), apply_rope(kr.reshape(t, hk, d), c, s),
            vr.reshape(t, hk, d)]
    loss = sum((o * g).sum() for o, g in zip(outs, grads) if g is not None)
    (dx,) = torch.autograd.grad(loss, x)
    return [o.detach() for o in outs], dx


def _run(qkv, cos, sin, h, hk, d, grads):
    """The op's (q, k, v) and d_qkv for grads (None: output left out of the loss)."""
    x = qkv.detach().clone().requires_grad_() if qkv.is_contiguous() else \
        _strided_leaf(qkv)
    leaf, view = x if isinstance(x, tuple) else (x, x)
    outs = qkv_rope(view, cos, sin, h, hk, d)
    loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(outs, grads) if g is not None)
    loss.backward()
    return [o.detach() for o in outs], _grad_of_view(leaf, view, qkv)


def _strided_leaf(qkv):
    """A leaf holding qkv's base so that the op sees the same strided view."""
    base = qkv._base.detach().clone().requires_grad_()
    off = qkv.storage_offset() - qkv._base.storage_offset()
    return base, base.as_strided(qkv.shape, qkv.stride(), base.storage_offset() + off)


def _grad_of_view(leaf, view, qkv):
    if leaf is view:
        return leaf.grad
    off = qkv.storage_offset() - qkv._base.storage_offset()
    return leaf.grad.as_strided(qkv.shape, qkv.stride(), leaf.grad.storage_offset() + off)


def _check_exact(got, d_qkv, want, d_want):
    for a, b in zip(got, want):
        assert a.is_contiguous() and a.dtype == F64
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(d_qkv, d_want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_apply_rope_fp64(shape):
    qkv, cos, sin = _case(*shape, seed=sum(shape))
    grads = _grads(*shape, seed=sum(shape))
    _check_exact(*_run(qkv, cos, sin, *shape[1:], grads),
                 *_expected(qkv, cos, sin, *shape[1:], grads))
    assert not uses_triton(qkv)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_strided_view_of_a_wider_tensor(shape):
    qkv, cos, sin = _case(*shape, pad=7, seed=3)
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    grads = _grads(*shape, seed=3)
    _check_exact(*_run(qkv, cos, sin, *shape[1:], grads),
                 *_expected(qkv, cos, sin, *shape[1:], grads))


@pytest.mark.parametrize("used", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 0)])
def test_unused_outputs_give_none_gradients(used):
    shape = (6, 4, 1, 6)
    qkv, cos, sin = _case(*shape, seed=5)
    grads = [g if u else None for g, u in zip(_grads(*shape, seed=5), used)]
    _check_exact(*_run(qkv, cos, sin, *shape[1:], grads),
                 *_expected(qkv, cos, sin, *shape[1:], grads))


def test_non_contiguous_output_gradients():
    t, h, hk, d = 5, 4, 2, 6
    qkv, cos, sin = _case(t, h, hk, d, seed=9)
    x = qkv.clone().requires_grad_()
    q, k, v = qkv_rope(x, cos, sin, h, hk, d)
    gq = torch.randn(h, t, d, dtype=F64).transpose(0, 1)
    gk = torch.randn(t, hk, 2 * d, dtype=F64)[..., ::2]
    (q * gq).sum().backward(retain_graph=True)
    (k * gk).sum().backward(retain_graph=True)
    v.sum().backward()  # an expanded (stride 0) gradient
    _, want = _expected(qkv, cos, sin, h, hk, d, [gq, gk, torch.ones(t, hk, d, dtype=F64)])
    torch.testing.assert_close(x.grad, want, rtol=1e-14, atol=1e-14)


def test_gradcheck_fp64():
    t, h, hk, d = 3, 2, 1, 6
    qkv, cos, sin = _case(t, h, hk, d, seed=11)
    x = qkv.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda y: qkv_rope(y, cos, sin, h, hk, d), (x,))


def test_written_out_backward_equals_autograd_of_the_reference():
    t, h, hk, d = 6, 3, 1, 10
    qkv, cos, sin = _case(t, h, hk, d, seed=12)
    grads = _grads(t, h, hk, d, seed=12)
    x = qkv.clone().requires_grad_()
    outs = qkv_rope_reference(x, cos, sin, h, hk, d)
    (want,) = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, grads)), x)
    got = qkv_rope_backward_reference(*grads, cos, sin, h, hk, d, F64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


def test_saves_only_cos_and_sin_and_outputs_own_their_memory():
    t, h, hk, d = 4, 4, 1, 6
    qkv, cos, sin = _case(t, h, hk, d, dtype=torch.float32)
    x = qkv.clone().requires_grad_()
    y = x * 1  # a non-leaf, like the projection's output
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: packed.append(s) or s, lambda s: s):
        q, k, v = qkv_rope(y, cos, sin, h, hk, d)
    assert len(packed) == 2
    assert {p.data_ptr() for p in packed} == {cos.data_ptr(), sin.data_ptr()}
    for o in (q, k, v):
        assert o.is_contiguous() and o.dtype == torch.float32
        assert o.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_torch_path_is_at_least_as_accurate_as_apply_rope(dtype):
    shape = (16, 4, 2, 10)
    qkv, cos, sin = _case(*shape, dtype=dtype, cos_dtype=torch.float32, seed=13)
    grads = [g.to(dtype) for g in _grads(*shape, seed=13)]
    got, dx = _run(qkv, cos, sin, *shape[1:], grads)
    want, dwant = _expected(qkv, cos, sin, *shape[1:], grads)
    torch_outs, dtorch = _apply_rope_in(dtype, qkv, cos, sin, *shape[1:], grads)
    for a, b, c in zip(got + [dx], want + [dwant], torch_outs + [dtorch]):
        assert a.dtype == dtype
        err, err_torch = (a.double() - b).abs().max(), (c.double() - b).abs().max()
        assert err <= 2 * err_torch + 1e-6, (err, err_torch)
    assert torch.equal(got[2], qkv[:, (shape[1] + shape[2]) * shape[3]:].reshape(got[2].shape))


def _apply_rope_in(dtype, qkv, cos, sin, h, hk, d, grads):
    """The model's current path (split + apply_rope) in `dtype`, cos/sin cast to it too."""
    x = qkv.detach().to(dtype).requires_grad_()
    t = x.shape[0]
    qr, kr, vr = x.split([h * d, hk * d, hk * d], -1)
    c, s = cos.to(dtype), sin.to(dtype)
    outs = [apply_rope(qr.reshape(t, h, d), c, s), apply_rope(kr.reshape(t, hk, d), c, s),
            vr.reshape(t, hk, d)]
    (dx,) = torch.autograd.grad(sum((o * g.to(dtype)).sum() for o, g in zip(outs, grads)), x)
    return [o.detach() for o in outs], dx


def test_empty_sequence():
    qkv, cos, sin = _case(0, 2, 1, 4)
    q, k, v = qkv_rope(qkv, cos, sin, 2, 1, 4)
    assert q.shape == (0, 2, 4) and k.shape == (0, 1, 4) and v.shape == (0, 1, 4)


@pytest.mark.parametrize("change, match", [
    ({"head_dim": 5}, "head_dim must be even"),
    ({"head_dim": 0}, "head_dim must be a positive int"),
    ({"heads": 2.0}, "heads must be a positive int"),
    ({"kv_heads": True}, "kv_heads must be a positive int"),
    ({"heads": 3}, "qkv must have width"),
    ({"qkv": torch.zeros(4, 24)}, "qkv must have width"),
    ({"qkv": torch.zeros(4, 4, 6)}, "qkv must be 2-D"),
    ({"qkv": torch.zeros(4, 24, dtype=torch.int32)}, "qkv must be a float"),
    ({"qkv": [[0.0]]}, "qkv must be a torch.Tensor"),
    ({"cos": torch.zeros(4, 6)}, r"cos must be \[T, head_dim/2\]"),
    ({"cos": torch.zeros(3, 3)}, r"cos must be \[T, head_dim/2\]"),
    ({"sin": torch.zeros(4, 3, 1)}, r"sin must be \[T, head_dim/2\]"),
    ({"sin": torch.zeros(4, 3, dtype=torch.int64)}, "sin must be a float"),
    ({"cos": torch.zeros(4, 3, requires_grad=True)}, "cos requires grad"),
])
def test_validation(change, match):
    args = {"qkv": torch.zeros(4, 36), "cos": torch.zeros(4, 3), "sin": torch.zeros(4, 3),
            "heads": 4, "kv_heads": 1, "head_dim": 6}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        qkv_rope(**args)


# ---- the Triton kernel on a CUDA GPU ----

# the 1B model's heads; odd head dims; T=1; 40 heads padded to a 64-head block; 96 heads
# looped over in 32-head blocks
GPU_SHAPES = [(257, 16, 4, 128), (33, 4, 1, 6), (1, 2, 2, 10), (70, 40, 8, 64), (9, 96, 8, 128)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype, cos_dtype", [(torch.bfloat16, torch.bfloat16),
                                              (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float16),
                                              (torch.float32, torch.float32)])
@pytest.mark.parametrize("pad", [0, 24])
def test_gpu_kernel_against_fp64(shape, dtype, cos_dtype, pad):
    """The kernel rounds once (fp32 math): its error vs fp64 must stay within 2x that of the
    model's current bf16/fp16 path (apply_rope in the low dtype) + a small atol."""
    x = torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")  # poison freed memory
    del x
    qkv, cos, sin = _case(*shape, dtype=dtype, cos_dtype=cos_dtype, pad=pad, seed=shape[0],
                          device="cuda")
    assert uses_triton(qkv)
    for used in [(1, 1, 1), (1, 0, 0), (0, 1, 1)]:
        grads = [g.to(dtype) if u else None
                 for g, u in zip(_grads(*shape, seed=shape[0], device="cuda"), used)]
        got, dx = _run(qkv, cos, sin, *shape[1:], grads)
        want, dwant = _expected(qkv, cos, sin, *shape[1:], grads)
        torch_outs, dtorch = _apply_rope_in(dtype, qkv, cos, sin, *shape[1:],
                                            [g if g is not None else torch.zeros_like(w)
                                             for g, w in zip(grads, want)])
        atol = 1e-6 if dtype == torch.float32 else 1e-4
        for name, a, b, c in zip("qkvd", got + [dx], want + [dwant], torch_outs + [dtorch]):
            assert a.dtype == dtype and torch.isfinite(a).all(), name
            err, err_torch = (a.double() - b).abs().max(), (c.double() - b).abs().max()
            print(f"{shape} {dtype} {cos_dtype} {used} {name}: kernel {err:.2e} "
                  f"torch {err_torch:.2e}")
            assert err <= 2 * err_torch + atol, (name, err, err_torch)
        assert torch.equal(got[2].double(), want[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_non_contiguous_gradients_and_saved_tensors():
    t, h, hk, d = 65, 8, 2, 64
    qkv, cos, sin = _case(t, h, hk, d, dtype=torch.bfloat16, seed=1, device="cuda")
    x = qkv.clone().requires_grad_()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: packed.append(s) or s, lambda s: s):
        q, k, _ = qkv_rope(x * 1, cos, sin, h, hk, d)
    assert len(packed) == 2
    gq = torch.randn(h, t, d, device="cuda", dtype=torch.bfloat16).transpose(0, 1)
    ((q * gq).sum() + k.sum()).backward()
    _, want = _expected(qkv, cos, sin, h, hk, d, [gq.double(), torch.ones_like(k).double(), None])
    assert (x.grad.double() - want).abs().max() <= 2 ** -7 * want.abs().max()
