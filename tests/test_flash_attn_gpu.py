"""bf16/fp16 (and fp32) Triton kernels on the GPU against an fp64 reference. Run on the GPU machine."""
from __future__ import annotations

import pytest
import torch

import kernels.flash_attn.interface as interface
from kernels.flash_attn import flash_attn_varlen_func
from tests.test_flash_attn_helpers import compare_to_oracle, fp64_oracle, make_inputs, random_lengths, run_with_grads

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Relative-error bounds vs fp64. The kernels round P and dS to the input dtype before the
# second matmul, like every flash-attention kernel; these bounds leave ~3x room over what
# that rounding gives.
TOL = {torch.bfloat16: (2e-2, 3e-2), torch.float16: (3e-3, 5e-3), torch.float32: (1e-5, 1e-5)}


def public(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=scale, causal=causal, return_lse=True)


@pytest.fixture(autouse=True)
def kernel_only(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("CUDA input fell back to the torch reference")
    monkeypatch.setattr(interface, "attention_varlen_reference", boom)
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
