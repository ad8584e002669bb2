"""linear_cross_entropy_sum (the torch path of the fused LM head + CE) against the naive dense
fp64 reference: loss, grad_hidden, grad_weight, over chunk boundaries, ignored labels, odd
vocabularies, partial requires_grad, autocast, no_grad and tied weights. The Triton row kernel
is checked under the interpreter (test_linear_ce_interpret.py) and on the GPU (bf16, the
tests marked gpu at the end of this file)."""
import pytest
import torch

from distca_kernels.linear_ce import (
    ce_rows_torch,
    linear_cross_entropy_reference,
    linear_cross_entropy_sum,
)

TOL64 = 1e-10  # fp64 chunked vs fp64 dense: same math, other summation order (~1e-15 seen)
TOL32 = 2e-5   # fp32 relative to the gradient's scale; measured ~1e-6


def _case(t, d, v, seed=0, ignore=(), dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(t, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5
    y = torch.randint(0, v, (t,), generator=gen)
    y[list(ignore)] = -100
    return h.to(dtype), w.to(dtype), y


def _run(fn, h, w, y, scale=1.0, need=(True, True), **kw):
    hl = h.detach().clone().requires_grad_(need[0])
    wl = w.detach().clone().requires_grad_(need[1])
    loss = fn(hl, wl, y, **kw)
    if need[0] or need[1]:
        (loss * scale).backward()
    return loss.detach(), hl.grad, wl.grad


def _ref(h, w, y, scale=1.0, need=(True, True)):
    return _run(linear_cross_entropy_reference, h.double(), w.double(), y, scale, need)


def _max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("t,v,chunk", [(37, 131, 8), (37, 1000, 8), (16, 131, 8), (5, 131, 4096),
                                       (1, 7, 3), (9, 2, 1)])
def test_fp64_matches_dense_reference(t, v, chunk):
    h, w, y = _case(t, 12, v, ignore=[0] if t > 2 else [])
    got, ref = _run(linear_cross_entropy_sum, h, w, y, chunk=chunk), _ref(h, w, y)
    assert got[0].dtype == torch.float64
    for a, b in zip(got, ref):
        assert _max_rel(a, b) < TOL64


@pytest.mark.parametrize("t,v,chunk", [(37, 131, 8), (37, 1000, 16)])
def test_fp32_matches_fp64_reference(t, v, chunk):
    h, w, y = _case(t, 16, v, ignore=[2, 30], dtype=torch.float32)
    got, ref = _run(linear_cross_entropy_sum, h, w, y, chunk=chunk), _ref(h, w, y)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    for a, b in zip(got, ref):
        assert _max_rel(a, b) < TOL32


def test_gradcheck_fp64():
    h, w, y = _case(5, 3, 7, ignore=[1])
    h.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy_sum(a, b, y, chunk=2),
                                    (h, w))


def test_grad_output_scaling_and_partial_requires_grad():
    h, w, y = _case(37, 8, 131, ignore=[4])
    for need in [(True, True), (True, False), (False, True)]:
        got = _run(linear_cross_entropy_sum, h, w, y, 0.37, need, chunk=8)
        ref = _ref(h, w, y, 0.37, need)
        assert _max_rel(got[0], ref[0]) < TOL64
        for a, b, n in zip(got[1:], ref[1:], need):
            assert (a is None) == (not n)
            if n:
                assert _max_rel(a, b) < TOL64


def test_ignored_labels():
    h, w, y = _case(11, 8, 131, ignore=range(11))
    loss, gh, gw = _run(linear_cross_entropy_sum, h, w, y, chunk=4)
    assert loss.item() == 0 and gh.abs().max() == 0 and gw.abs().max() == 0
    h, w, y = _case(11, 8, 131, ignore=[0, 1, 2, 3, 10])  # a whole chunk ignored, then a row
    for a, b in zip(_run(linear_cross_entropy_sum, h, w, y, chunk=4), _ref(h, w, y)):
        assert _max_rel(a, b) < TOL64
    assert _run(linear_cross_entropy_sum, h, w, y, chunk=4)[1][:4].abs().max() == 0


def test_empty_batch():
    h, w, y = _case(0, 8, 13)
    loss, gh, gw = _run(linear_cross_entropy_sum, h, w, y, chunk=4)
    assert loss.item() == 0 and gh.shape == (0, 8) and gw.abs().max() == 0


def test_noncontiguous_hidden_and_bf16_hidden_dtypes():
    h, w, y = _case(21, 8, 131)
    base = h.t().contiguous().requires_grad_()  # hidden is the transposed view of a leaf
    loss = linear_cross_entropy_sum(base.t(), w, y, chunk=8)
    loss.backward()
    ref = _ref(h, w, y)
    assert _max_rel(base.grad.t(), ref[1]) < TOL64
    # bf16 activations with fp32 master weights: each gradient in its input's dtype
    hb = h.to(torch.bfloat16).requires_grad_()
    wf = w.float().requires_grad_()
    loss = linear_cross_entropy_sum(hb, wf, y, chunk=8)
    loss.backward()
    assert loss.dtype == torch.float32
    assert hb.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32


def test_no_grad_matches_and_builds_no_graph():
    h, w, y = _case(37, 8, 131, ignore=[5], dtype=torch.float32)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    with_grad = linear_cross_entropy_sum(hl, wl, y, chunk=8)
    with torch.no_grad():
        no_grad = linear_cross_entropy_sum(hl, wl, y, chunk=8)
    plain = linear_cross_entropy_sum(h, w, y, chunk=8)
    assert no_grad.grad_fn is None and plain.grad_fn is None and with_grad.grad_fn is not None
    assert torch.equal(no_grad, with_grad.detach()) and torch.equal(plain, no_grad)


def test_tied_weight_accumulates_over_calls():
    """An embedding table used as the head twice (two micro-batches): grads add up."""
    h, w, y = _case(19, 8, 131, ignore=[3])
    tokens = torch.randint(0, 131, (19,), generator=torch.Generator().manual_seed(1))

    def model(fn, w_leaf):
        x = torch.nn.functional.embedding(tokens, w_leaf) + h
        return fn(x[:10], w_leaf, y[:10]) * 0.5 + fn(x[10:], w_leaf, y[10:]) * 2.0

    grads = []
    for fn in (lambda a, b, c: linear_cross_entropy_sum(a, b, c, chunk=4),
               linear_cross_entropy_reference):
        w_leaf = w.clone().requires_grad_()
        model(fn, w_leaf).backward()
        grads.append(w_leaf.grad)
    assert _max_rel(grads[0], grads[1]) < TOL64


def test_retained_graph_second_backward():
    h, w, y = _case(9, 4, 13)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy_sum(hl, wl, y, chunk=4)
    loss.backward(retain_graph=True)
    first = wl.grad.clone()
    (loss * 3).backward()
    assert _max_rel(wl.grad, 4 * first) < TOL64


def test_autocast_bf16_cpu():
    """Under autocast the result is what it is without it; bf16 GEMMs err no more than 2x
    the dense bf16 computation (bf16 logits, fp32 softmax) against the fp64 reference."""
    h, w, y = _case(37, 32, 1000, ignore=[7], dtype=torch.float32)
    plain = _run(linear_cross_entropy_sum, h, w, y, chunk=8, compute_dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = _run(linear_cross_entropy_sum, h, w, y, chunk=8, compute_dtype=torch.bfloat16)
        dense_bf16 = _run(linear_cross_entropy_reference, h, w, y,
                          compute_dtype=torch.bfloat16)
    ref = _ref(h, w, y)
    for a, b, c, r in zip(plain, auto, dense_bf16, ref):
        assert torch.equal(a, b)
        assert a.dtype == torch.float32
        assert _max_rel(a, r) <= 2 * _max_rel(c, r) + 1e-4, (_max_rel(a, r), _max_rel(c, r))


def test_fp32_compute_of_fp64_inputs():
    h, w, y = _case(13, 8, 131)
    got = _run(linear_cross_entropy_sum, h, w, y, chunk=4, compute_dtype=torch.float32)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64
    for a, b in zip(got, _ref(h, w, y)):
        assert _max_rel(a, b) < TOL32


def test_ce_rows_torch_matches_definition():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 131, generator=gen, dtype=torch.float64) * 5
    y = torch.tensor([0, 130, -100, 7, 7, -100])
    losses = torch.empty(6, dtype=torch.float64)
    g = x.clone()
    ce_rows_torch(g, y, losses, True)
    xl = x.clone().requires_grad_()
    per_row = torch.nn.functional.cross_entropy(xl, y, reduction="none")
    per_row.sum().backward()
    assert torch.allclose(losses, per_row.detach(), atol=1e-12, rtol=0)
    assert torch.allclose(g, xl.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad", [131, -1, -101])
def test_rejects_out_of_range_labels(bad):
    h, w, y = _case(5, 4, 131)
    y[2] = bad
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy_sum(h, w, y)


@pytest.mark.parametrize("mutate,name", [
    (lambda h, w, y: (h[0], w, y), "hidden"),
    (lambda h, w, y: (h, w[:, :3], y), "weight"),
    (lambda h, w, y: (h, w[:0], y), "weight"),
    (lambda h, w, y: (h.long(), w, y), "hidden"),
    (lambda h, w, y: (h, w, y.int()), "labels"),
    (lambda h, w, y: (h, w, y[:-1]), "labels"),
    (lambda h, w, y: (h, w, y.tolist()), "labels"),
])
def test_rejects_bad_inputs(mutate, name):
    h, w, y = _case(5, 4, 13)
    with pytest.raises(ValueError, match=name):
        linear_cross_entropy_sum(*mutate(h, w, y))


@pytest.mark.parametrize("kw,name", [({"chunk": 0}, "chunk"), ({"chunk": 2.0}, "chunk"),
                                     ({"chunk": True}, "chunk"),
                                     ({"compute_dtype": torch.int32}, "compute_dtype")])
def test_rejects_bad_options(kw, name):
    h, w, y = _case(5, 4, 13)
    with pytest.raises(ValueError, match=name):
        linear_cross_entropy_sum(h, w, y, **kw)


def test_row_kernel_compiles_for_sm90_with_vector_loads():
    """Without a GPU: the kernel builds for Hopper and its full blocks use 16-byte loads and
    stores even for a vocabulary that is no multiple of 16 (rows are padded, V is not)."""
    import re

    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from distca_kernels.triton_loader import load_kernels
    fn = load_kernels("distca_kernels.linear_ce.triton_ce", False)._ce_rows_kernel
    const = {"IGNORE": -100, "BLOCK_V": 8192, "WRITE_GRAD": True}
    sig = {"logits": "*bf16", "stride_row": "i32", "labels": "*i64", "losses": "*fp32", "V": "i32"}
    sig.update({k: "constexpr" for k in const})
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(4)}  # pointers and row stride
    ptx = triton.compile(ASTSource(fn, sig, const, aligned), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": 16}).asm["ptx"]
    assert re.search(r"ld\.global(\.\w+)*\.v4", ptx) and re.search(r"st\.global(\.\w+)*\.v4", ptx)


# ---- GPU (bf16 is what training runs; the interpreter cannot check bf16 dots) ----

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("t,d,v,chunk", [(1000, 256, 32003, 384), (300, 128, 128256, 128),
                                         (64, 64, 1000, 4096)])
def test_gpu_bf16_autocast_vs_fp64(t, d, v, chunk):
    from distca_kernels.linear_ce import uses_triton
    h, w, y = _case(t, d, v, ignore=[0, t // 2, t - 1], dtype=torch.float32)
    h, w, y = h.cuda(), w.cuda() * 0.2, y.cuda()
    assert uses_triton(h, torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = _run(linear_cross_entropy_sum, h, w, y, chunk=chunk, compute_dtype=torch.bfloat16)
        dense_bf16 = _run(linear_cross_entropy_reference, h, w, y,
                          compute_dtype=torch.bfloat16)
    ref = _ref(h, w, y)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    from distca_kernels.linear_ce.interface import _gemm_writes_fp32
    print("bf16 GEMMs write fp32 directly:", _gemm_writes_fp32(h.device, torch.bfloat16))
    for name, a, c, r in zip(["loss", "grad_hidden", "grad_weight"], got, dense_bf16, ref):
        err, base = _max_rel(a, r), _max_rel(c, r)
        print(f"{name}: kernel {err:.2e}, dense bf16 {base:.2e}")
        assert err <= 2 * base + 1e-4, (name, err, base)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp32_vs_fp64():
    h, w, y = _case(257, 64, 5000, ignore=[3], dtype=torch.float32)
    h, w, y = h.cuda(), w.cuda(), y.cuda()
    got = _run(linear_cross_entropy_sum, h, w, y, chunk=100)
    for a, b in zip(got, _ref(h, w, y)):
        assert _max_rel(a, b) < 1e-4  # allows TF32 if a caller enabled it
