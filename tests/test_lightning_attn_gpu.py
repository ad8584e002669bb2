"""The Triton kernels on a CUDA GPU against the fp64 dense reference (run on the GPU machine).

bf16 is what the model runs (the CPU interpreter cannot check it: its bf16 matmuls are
wrong). The algebra itself is pinned at fp32 rounding level by the interpreter tests; fp32 on
the GPU compiles slowly (three-pass TF32 products) and is left out to save GPU minutes.
Freed memory is poisoned with NaN first, so an output element the kernels never write shows
up. Run with DISTCA_LIGHTNING_AUTOTUNE=0 to skip tuning (one compile per kernel variant).
"""
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

if torch.cuda.is_available():
    from distca_kernels.lightning_attn import chunk_lightning_attn, lightning_attn_reference
    from distca_kernels.lightning_attn.chunked import chunk_lightning_attn_triton

BF16_TOL = 1.5e-2  # bf16 operands (P, states) against fp64; measured values are printed
# dg is a reverse cumulative sum of q.dq - k.dk, a difference of nearly equal bf16-rounded
# terms, so its relative error is larger than the other gradients'.
BF16_TOL_DG = 5e-2


def _poison_allocator():
    """Fill a large block with NaN and free it; the caching allocator hands it out again."""
    x = torch.full((256 * 1024 * 1024,), float("nan"), device="cuda")
    del x


def _case(t, h, kd, vd, decay, n_states, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, device="cuda") * scale

    q, k, v = rnd(1, t, h, kd), rnd(1, t, h, kd), rnd(1, t, h, vd)
    g_gamma = -torch.rand(h, generator=gen, device="cuda") * 0.3 if decay == "gamma" else None
    g = -torch.rand(1, t, h, generator=gen, device="cuda") * 0.1 if decay == "g" else None
    s0 = rnd(n_states, h, kd, vd, scale=0.1)
    return [q.to(dtype), k.to(dtype), v.to(dtype), g_gamma, g, s0]


def _forward_backward(fn, tensors, cu, dtype, seed):
    leaves = [None if x is None else x.detach().to(dtype if i < 3 else x.dtype, copy=True)
              .requires_grad_() for i, x in enumerate(tensors)]
    if dtype == torch.float64:
        leaves = [None if x is None else x.detach().double().requires_grad_() for x in leaves]
    q, k, v, g_gamma, g, s0 = leaves
    o, final = fn(q, k, v, g_gamma, g, None, s0, True, cu)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, device="cuda")
    dfinal = torch.randn(final.shape, generator=gen, device="cuda")
    loss = (o.to(final.dtype) * do.to(final.dtype)).sum() + (final * dfinal.to(final.dtype)).sum()
    loss.backward()
    return [o.detach(), final.detach()] + [None if x is None else x.grad for x in leaves]


def _errors(fn, tensors, cu, dtype, seed=0):
    _poison_allocator()
    got = _forward_backward(fn, tensors, cu, dtype, seed)
    ref = _forward_backward(lightning_attn_reference, tensors, cu, torch.float64, seed)
    names = ["o", "final", "dq", "dk", "dv", "dg_gamma", "dg", "dinitial_state"]
    errs = {}
    for name, a, b in zip(names, got, ref):
        if b is None:
            continue
        assert a is not None, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values (unwritten memory?)"
        errs[name] = ((a.double() - b).norm() / b.norm()).item()
    print({k: f"{v:.1e}" for k, v in errs.items()})
    return errs


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
def test_bf16_varlen_against_fp64(decay):
    # documents of 1, 699, 1400, 13 and 1983 tokens (ragged tails, a 1-token document)
    cu = torch.tensor([0, 1, 700, 2100, 2113, 4096], device="cuda", dtype=torch.int32)
    tensors = _case(4096, 4, 128, 128, decay, 5, torch.bfloat16, seed=1)
    errs = _errors(chunk_lightning_attn, tensors, cu, torch.bfloat16)
    for name, err in errs.items():
        if name == "dg_gamma":
            continue
        assert err < (BF16_TOL_DG if name.startswith("dg") else BF16_TOL), errs
    if decay == "gamma":
        # d g_gamma_h = sum_t dg_t: terms of both signs that mostly cancel (|sum| is ~5% of
        # sum |dg_t| here), so bf16 noise in each term is judged on the terms' scale: the
        # sum must be as accurate as the per-token gradients it adds up.
        err = _gamma_grad_error_on_term_scale(tensors, cu)
        print({"dg_gamma_on_term_scale": f"{err:.1e}"})
        assert err < BF16_TOL_DG


def _gamma_grad_error_on_term_scale(tensors, cu):
    q, k, v, g_gamma, _, s0 = tensors
    got = _forward_backward(chunk_lightning_attn, tensors, cu, torch.bfloat16, 0)[5]
    # the same decay written per token, so the reference yields the per-token terms
    g_tok = g_gamma.view(1, 1, -1).expand(q.shape[0], q.shape[1], -1).contiguous()
    ref = _forward_backward(lightning_attn_reference, [q, k, v, None, g_tok, s0], cu,
                            torch.float64, 0)[6]
    terms = ref[0].abs().sum(0)
    return ((got.double() - ref[0].sum(0)).norm() / terms.norm()).item()


def test_segment_plans_agree_on_a_long_sequence():
    """One chunk per segment (many states through the scan) and 64 chunks per segment (long
    in-register walks) must give the same result on 64K tokens."""
    tensors = _case(65536, 2, 128, 128, "gamma", 1, torch.bfloat16, seed=3)
    q, k, v, g_gamma, _, s0 = tensors
    outs = [chunk_lightning_attn_triton(q, k, v, g_gamma, None, None, s0, True,
                                        chunks_per_segment=cps) for cps in (1, 64)]
    for a, b in zip(outs[0], outs[1]):
        assert torch.isfinite(a).all()
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert rel < 1e-2, rel


@pytest.mark.parametrize("decay", ["gamma", "g"])
def test_forward_backward_pair_equals_the_autograd_function(decay):
    """chunk_lightning_attn_forward / _backward (LASP-2's intra-rank part) run the same
    kernels as the autograd path: the same output to the bit, gradients to bf16 rounding."""
    from distca_kernels.lightning_attn import chunk_lightning_attn_backward, chunk_lightning_attn_forward
    q, k, v, g_gamma, g, _ = _case(3000, 4, 128, 128, decay, 1, torch.bfloat16, seed=5)
    cu = torch.tensor([0, 1000, 1001, 3000], device="cuda", dtype=torch.int32)
    do = torch.randn(q.shape[:3] + (v.shape[-1],), device="cuda").to(torch.bfloat16)
    o, res = chunk_lightning_attn_forward(q, k, v, g_gamma, g, cu_seqlens=cu)
    got = chunk_lightning_attn_backward(do, q, k, v, res.tensors, res, g_gamma, g, cu)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    decays = [None if x is None else x.detach().clone().requires_grad_() for x in (g_gamma, g)]
    o_ref, _ = chunk_lightning_attn(*leaves, *decays, cu_seqlens=cu)
    (o_ref.float() * do.float()).sum().backward()
    assert torch.equal(o, o_ref.detach())
    wants = [x.grad for x in leaves] + [None if x is None else x.grad for x in decays]
    for name, a, b in zip(("dq", "dk", "dv", "dg_gamma", "dg"), got, wants):
        assert (a is None) == (b is None), name
        if b is not None:
            assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3), name
