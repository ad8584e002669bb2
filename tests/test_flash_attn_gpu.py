"""bf16/fp16 (and fp32) Triton kernels on the GPU against an fp64 reference. Run on the GPU machine."""
from __future__ import annotations

import pytest
import torch

import distca_kernels.flash_attn.interface as interface
from distca_kernels.flash_attn import flash_attn_varlen_func
from tests.test_flash_attn_helpers import (compare_to_oracle, forward_backward_pair, fp64_oracle, make_inputs,
                                           random_lengths, run_with_grads)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Relative-error bounds vs fp64. The kernels round P and dS to the input dtype before the
# second matmul, like every flash-attention kernel; these bounds leave ~3x room over what
# that rounding gives.
TOL = {torch.bfloat16: (2e-2, 3e-2), torch.float16: (3e-3, 5e-3), torch.float32: (1e-5, 1e-5)}


def public(q, k, v, cu_q, cu_k, mq, mk, scale, causal, deterministic=None):
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=scale, causal=causal, return_lse=True,
                                  deterministic=deterministic)


@pytest.fixture(autouse=True)
def kernel_only(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("CUDA input fell back to the torch reference")
    monkeypatch.setattr(interface, "attention_varlen_reference", boom)
    monkeypatch.setattr(interface, "attention_varlen_reference_backward", boom)
    # poison the caching allocator so an output element the kernels never write shows up as NaN
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


def lengths(seed, count, max_len):
    gen = torch.Generator().manual_seed(seed)
    return random_lengths(gen, count, max_len, min_len=1) + [1, 0, 1]


# Each distinct (dtype, head dim, causal, GQA ratio) is a kernel compile: cover the
# combinations without the full product (the interpreter tests cover the logic in depth).
@pytest.mark.parametrize("dtype,d,hq,hkv,causal", [
    (torch.bfloat16, 128, 8, 2, True),
    (torch.bfloat16, 64, 8, 8, False),
    (torch.bfloat16, 128, 8, 1, False),
    (torch.bfloat16, 128, 8, 8, False),  # MHA: the fused backward
    (torch.float16, 128, 4, 4, True),
    (torch.float16, 64, 8, 2, True),
])
def test_packed_documents(dtype, d, hq, hkv, causal):
    lens = lengths(d + hq + hkv, 9, 700)
    inp = make_inputs(lens, lens, hq, hkv, d, dtype, device="cuda", seed=1)
    got = run_with_grads(public, inp, causal)
    tol, grad_tol = TOL[dtype]
    errors = compare_to_oracle(got, fp64_oracle(inp, causal), tol, 1e-2, grad_tol)
    print(f"\n{dtype} d={d} hq={hq} hkv={hkv} causal={causal}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


def test_query_shards_shorter_than_keys():
    """Ring/allgather/CAD pieces: few queries against a long key prefix, bottom-right causal."""
    lq = [130, 1, 64, 0, 257]
    lk = [1000, 77, 64, 13, 600]
    inp = make_inputs(lq, lk, 8, 2, 128, torch.bfloat16, device="cuda", seed=2)
    tol, grad_tol = TOL[torch.bfloat16]
    errors = compare_to_oracle(run_with_grads(public, inp, True), fp64_oracle(inp, True), tol, 1e-2, grad_tol)
    print("\nshards bf16: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


def test_fp32_runs_in_full_precision():
    lens = lengths(5, 4, 300)
    inp = make_inputs(lens, lens, 4, 2, 64, torch.float32, device="cuda", seed=3)
    errors = compare_to_oracle(run_with_grads(public, inp, True), fp64_oracle(inp, True), 1e-5, 1e-4, 1e-5)
    print("\nfp32: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


def _variants():
    from dataclasses import replace

    from distca_kernels.flash_attn.block_config import TileConfig, select_configs
    base = select_configs(128, torch.bfloat16, interpret=False)
    # the Triton kernels, with TMA descriptors or with pointer loads
    triton = replace(base, **{name: getattr(base, name).fallback or getattr(base, name) for name in ("forward", "dkdv", "dq")})
    pointer = replace(triton, **{name: replace(getattr(triton, name), tma=False) for name in ("forward", "dkdv", "dq")})
    return {
        "default": base,
        "pointer-loads": pointer,
        "fused-gluon": replace(base, fused=TileConfig(128, 64, 8, tma=True, gluon=True)),
        "dq-128x128": replace(triton, dq=TileConfig(128, 128, 8, 2, tma=True)),
        "triton-tma": triton,
        "gluon-forward-128x64": replace(base, forward=TileConfig(128, 64, 4, tma=True, gluon=True)),
        "gluon-dkdv-128x32": replace(base, dkdv=TileConfig(128, 32, 8, 3, tma=True, gluon=True)),
        "gluon-dq-128x64": replace(base, dq=TileConfig(128, 64, 8, 3, tma=True, gluon=True)),
    }


@pytest.mark.parametrize("variant", ["default", "pointer-loads", "fused-gluon", "dq-128x128",
                                     "triton-tma", "gluon-forward-128x64", "gluon-dkdv-128x32", "gluon-dq-128x64"])
def test_kernel_variants(variant):
    """Every forward/backward path (TMA or pointer loads, two-kernel or fused backward, other
    tiles) on packed documents and on query shards shorter than their keys."""
    from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention
    configs = _variants()[variant]

    def call(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
        return TritonVarlenAttention.apply(q, k, v, cu_q, cu_k, scale, causal, False, configs)

    tol, grad_tol = TOL[torch.bfloat16]
    for lq, lk in ((lengths(7, 9, 700),) * 2, ([130, 1, 64, 0, 257], [1000, 77, 64, 13, 600])):
        inp = make_inputs(lq, lk, 8, 2, 128, torch.bfloat16, device="cuda", seed=4)
        errors = compare_to_oracle(run_with_grads(call, inp, True, scale=128 ** -0.5),
                                   fp64_oracle(inp, True, 128 ** -0.5), tol, 1e-2, grad_tol)
        print(f"\n{variant}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


@pytest.mark.parametrize("dtype,hkv,causal", [(torch.bfloat16, 8, False), (torch.float16, 8, True),
                                               (torch.bfloat16, 1, True)])
def test_gluon_forward_beyond_the_variants(dtype, hkv, causal):
    """The warp-specialized Gluon forward beyond test_kernel_variants' causal GQA 8/2: without
    the causal mask (its diagonal is moved past every key), fp16, and MQA."""
    from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention
    configs = _variants()["default"]

    def call(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
        return TritonVarlenAttention.apply(q, k, v, cu_q, cu_k, scale, causal, False, configs)

    tol, grad_tol = TOL[dtype]
    lens = lengths(11, 9, 900)
    inp = make_inputs(lens, lens, 8, hkv, 128, dtype, device="cuda", seed=5)
    errors = compare_to_oracle(run_with_grads(call, inp, causal, scale=128 ** -0.5),
                               fp64_oracle(inp, causal, 128 ** -0.5), tol, 1e-2, grad_tol)
    print(f"\ngluon forward {dtype} hkv={hkv} causal={causal}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


def _off_alignment(t):
    """t's values (and its gradient path) in storage 2 bytes past a 16-byte boundary."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


def test_inputs_tma_cannot_address_take_the_triton_kernels():
    """q, k, v off 16-byte alignment: TMA (and so Gluon) cannot read them; the default configs
    must fall back to the Triton pointer-load kernels with tiles that fit, not fail."""
    lens = lengths(11, 6, 500)
    inp = make_inputs(lens, lens, 8, 2, 128, torch.bfloat16, device="cuda", seed=7)

    def call(q, k, v, *rest, **kw):
        return public(_off_alignment(q), _off_alignment(k), _off_alignment(v), *rest, **kw)

    tol, grad_tol = TOL[torch.bfloat16]
    errors = compare_to_oracle(run_with_grads(call, inp, True), fp64_oracle(inp, True), tol, 1e-2, grad_tol)
    print("\nmisaligned bf16: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))


@pytest.mark.parametrize("hkv", [2, 8])
def test_documents_never_see_each_other(hkv):
    """Non-finite values in one document must not reach another's outputs or gradients (the
    TMA loads see the whole packed tensor; their segment bounds are what keeps them apart).
    hkv = 8 (MHA) runs the fused backward, whose dQ sums may round differently run to run."""
    lens = [300, 257, 129]
    inp = make_inputs(lens, lens, 8, hkv, 128, torch.bfloat16, device="cuda", seed=5)
    clean = run_with_grads(public, inp, True)
    for name in ("q", "k", "v", "do"):
        inp[name][300:557] = float("nan")
    dirty = run_with_grads(public, inp, True)
    keep = torch.cat([torch.arange(0, 300), torch.arange(557, 686)]).cuda()
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), clean, dirty):
        rows_a, rows_b = (a[:, keep], b[:, keep]) if name == "lse" else (a[keep], b[keep])
        assert torch.isfinite(rows_b).all(), f"{name}: NaN leaked across documents"
        if hkv == 8 and name == "dq":
            torch.testing.assert_close(rows_a, rows_b, rtol=1e-2, atol=1e-4, msg=f"{name}: other documents changed it")
        else:
            assert torch.equal(rows_a, rows_b), f"{name}: other documents changed the result"


@pytest.mark.parametrize("how", ["argument", "torch-setting"])
@pytest.mark.parametrize("hkv", [8, 2])
def test_deterministic_backward_is_bitwise_reproducible(how, hkv):
    """deterministic=True (or torch.use_deterministic_algorithms(True) with the default None)
    runs the backward without atomics: two runs give identical bits, for MHA too, where the
    default would take the fused backward."""
    lens = lengths(9, 9, 700)
    inp = make_inputs(lens, lens, 8, hkv, 128, torch.bfloat16, device="cuda", seed=6)

    def call(*args, **kw):
        if how == "argument":
            return public(*args, **kw, deterministic=True)
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return public(*args, **kw)
        finally:
            torch.use_deterministic_algorithms(before)

    first, second = run_with_grads(call, inp, True), run_with_grads(call, inp, True)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("hq,hkv", [(8, 2), (8, 8)])
def test_forward_backward_pair_bf16(hq, hkv):
    """flash_attn_varlen_forward / _backward (CAD's servers) on the GPU kernels, bf16, with
    d(lse): within the same bounds as the autograd entry point."""
    lens = lengths(hq + 3, 9, 700)
    inp = make_inputs(lens, lens, hq, hkv, 128, torch.bfloat16, device="cuda", seed=2)
    got = run_with_grads(forward_backward_pair, inp, True)
    tol, grad_tol = TOL[torch.bfloat16]
    errors = compare_to_oracle(got, fp64_oracle(inp, True), tol, 1e-2, grad_tol)
    print(f"\npair bf16 hq={hq} hkv={hkv}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
