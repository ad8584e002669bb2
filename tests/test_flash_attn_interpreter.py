"""Triton kernels run in Triton's CPU interpreter (fp32) against an fp64 reference.

Run by test_triton_interpreter.py in a fresh process started with TRITON_INTERPRET=1 (triton's
own jit helpers must be built in interpreter mode); skipped elsewhere. Shapes stay small: the
interpreter runs every program in Python.
"""
from __future__ import annotations

import os

import pytest
import torch

import distca_kernels.flash_attn.interface as interface
from distca_kernels.flash_attn import flash_attn_varlen_func, merge_attention_partials
from distca_kernels.flash_attn.reference import attention_varlen_reference
from distca_kernels.flash_attn.block_config import AttentionConfigs, TileConfig
from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention
from tests.test_flash_attn_helpers import (compare_to_oracle, cu_from_lengths, forward_backward_pair, fp64_oracle,
                                           make_inputs, random_lengths, rel_err, run_with_grads)

FP32_TOL = 2e-5  # observed ~3e-7; fp32 accumulation order differs from the fp64 oracle
LSE_TOL = 1e-4


pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="run by test_triton_interpreter.py (needs TRITON_INTERPRET=1 at start)")


def public(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=scale, causal=causal, return_lse=True)


@pytest.fixture
def no_reference(monkeypatch):
    """Fail if the public function falls back to the torch reference instead of the kernel."""
    def boom(*a, **k):
        raise AssertionError("the torch reference ran instead of the Triton kernel")
    monkeypatch.setattr(interface, "attention_varlen_reference", boom)
    monkeypatch.setattr(interface, "attention_varlen_reference_backward", boom)


# (q lengths, k lengths, Hq, Hkv, head_dim, causal): tiles are 16 in the interpreter, so
# lengths like 37 and 20 leave partial tiles; 1-token and empty segments included.
CASES = [
    pytest.param([37, 1, 0, 20], [37, 1, 0, 20], 4, 4, 16, True, id="self-causal-gqa1-1tok-empty"),
    pytest.param([5, 17, 1], [40, 33, 9], 4, 1, 32, True, id="q-shorter-than-kv-mqa4"),
    pytest.param([9, 23], [9, 23], 8, 1, 16, True, id="gqa8-causal"),
    pytest.param([30, 3], [10, 2], 2, 2, 16, True, id="q-longer-than-kv-rows-see-nothing"),
    pytest.param([30, 3, 4], [10, 0, 4], 8, 1, 16, False, id="noncausal-gqa8-empty-kv"),
    pytest.param([33, 19], [50, 7], 8, 2, 64, False, id="noncausal-gqa4-d64"),
    pytest.param([18, 2], [18, 2], 2, 1, 128, True, id="d128"),
]


@pytest.mark.parametrize("lq,lk,hq,hkv,d,causal", CASES)
def test_kernel_matches_fp64_reference(lq, lk, hq, hkv, d, causal, no_reference):
    inp = make_inputs(lq, lk, hq, hkv, d, torch.float32, seed=len(lq) * 7 + d)
    got = run_with_grads(public, inp, causal)
    compare_to_oracle(got, fp64_oracle(inp, causal), FP32_TOL, LSE_TOL)


@pytest.mark.parametrize("lq,lk,hq,hkv,d,causal", CASES[:5])
def test_forward_backward_pair_matches_fp64_reference(lq, lk, hq, hkv, d, causal, no_reference):
    """flash_attn_varlen_forward / _backward (what CAD's servers call) on the Triton kernels."""
    inp = make_inputs(lq, lk, hq, hkv, d, torch.float32, seed=len(lq) * 5 + d)
    got = run_with_grads(forward_backward_pair, inp, causal, scale=0.4)
    compare_to_oracle(got, fp64_oracle(inp, causal, scale=0.4), FP32_TOL, LSE_TOL)


def test_random_packed_documents(no_reference):
    gen = torch.Generator().manual_seed(3)
    lengths = random_lengths(gen, 7, 40, min_len=1) + [1, 1]
    inp = make_inputs(lengths, lengths, 4, 1, 32, torch.float32, seed=5)
    got = run_with_grads(public, inp, True, scale=0.3)
    compare_to_oracle(got, fp64_oracle(inp, True, scale=0.3), FP32_TOL, LSE_TOL)


@pytest.mark.parametrize("fwd,dkdv,dq", [
    ((32, 16), (16, 32), (32, 16)),
    ((16, 32), (32, 16), (16, 32)),
])
def test_other_tile_shapes(fwd, dkdv, dq):
    """The masked/unmasked loop split must hold for any tile shape, not just the default."""
    cfg = AttentionConfigs(forward=TileConfig(*fwd), dkdv=TileConfig(*dkdv), dq=TileConfig(*dq))
    lq, lk = [41, 7, 0, 64], [70, 7, 3, 64]

    def with_cfg(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
        return TritonVarlenAttention.apply(q, k, v, cu_q, cu_k, 0.25, causal, True, cfg)

    inp = make_inputs(lq, lk, 2, 1, 16, torch.float32, seed=11)
    for causal in (True, False):
        compare_to_oracle(run_with_grads(with_cfg, inp, causal), fp64_oracle(inp, causal, 0.25), FP32_TOL, LSE_TOL)


def test_gluon_fused_config_takes_the_pair_where_gluon_cannot_run(no_reference):
    """A config with the one-kernel Gluon backward (the default with deterministic=False on
    Hopper) must run the dK/dV + dQ pair where Gluon cannot, here the interpreter."""
    cfg = AttentionConfigs(forward=TileConfig(16, 16), dkdv=TileConfig(16, 16), dq=TileConfig(16, 16),
                           fused=TileConfig(128, 64, 8, tma=True, gluon=True))

    def with_cfg(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
        return TritonVarlenAttention.apply(q, k, v, cu_q, cu_k, 0.5, causal, True, cfg, False)

    inp = make_inputs([37, 5], [37, 9], 4, 2, 16, torch.float32, seed=12)
    compare_to_oracle(run_with_grads(with_cfg, inp, True), fp64_oracle(inp, True, 0.5), FP32_TOL, LSE_TOL)


def test_fp16_forward_in_interpreter(no_reference):
    inp = make_inputs([21, 4], [21, 9], 2, 1, 32, torch.float16, seed=2)
    o, lse = flash_attn_varlen_func(inp["q"], inp["k"], inp["v"], inp["cu_q"], inp["cu_k"], 21, 21, return_lse=True)
    want = fp64_oracle(inp, True)
    assert o.dtype == torch.float16 and lse.dtype == torch.float32
    assert rel_err(o, want[0]) < 2e-3


def test_gradients_when_only_o_or_only_lse_is_used(no_reference):
    inp = make_inputs([19, 6], [25, 6], 2, 2, 16, torch.float32, seed=4)
    q, k, v = (inp[n].clone().requires_grad_() for n in ("q", "k", "v"))
    o = flash_attn_varlen_func(q, k, v, inp["cu_q"], inp["cu_k"], 19, 25)  # return_lse=False
    (o * inp["do"]).sum().backward()
    q64, k64, v64 = (inp[n].double().requires_grad_() for n in ("q", "k", "v"))
    o64, lse64 = attention_varlen_reference(q64, k64, v64, inp["cu_q"], inp["cu_k"], None, True)
    (o64 * inp["do"].double()).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(got, want) < FP32_TOL

    for t in (q, k, v, q64, k64, v64):
        t.grad = None
    _, lse = flash_attn_varlen_func(q, k, v, inp["cu_q"], inp["cu_k"], 19, 25, return_lse=True)
    (lse * inp["dlse"]).sum().backward()
    _, lse64 = attention_varlen_reference(q64, k64, v64, inp["cu_q"], inp["cu_k"], None, True)
    (lse64 * inp["dlse"].double()).sum().backward()
    assert v.grad.abs().max() == 0  # lse does not depend on v
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad)):
        assert rel_err(got, want) < FP32_TOL


def test_ring_style_merge_of_two_key_blocks_matches_full_attention(no_reference):
    """Split each segment's keys into a prefix (seen in full) and the causal diagonal block,
    attend to each separately, merge by lse: output and all gradients must equal one call."""
    lens = [24, 13]
    inp = make_inputs(lens, lens, 4, 2, 16, torch.float32, seed=9)
    q, k, v = (inp[n].clone().requires_grad_() for n in ("q", "k", "v"))
    # queries of the second half of each segment; keys split at the half
    halves = [(s, s + n // 2, s + n) for s, n in zip([0, 24], lens)]
    q_idx = torch.cat([torch.arange(m, e) for _, m, e in halves])
    pre_idx = torch.cat([torch.arange(s, m) for s, m, _ in halves])
    q_lens = [e - m for _, m, e in halves]
    pre_lens = [m - s for s, m, _ in halves]
    cu_q, cu_pre = cu_from_lengths(q_lens), cu_from_lengths(pre_lens)
    qs = q[q_idx]
    o1, l1 = flash_attn_varlen_func(qs, k[pre_idx], v[pre_idx], cu_q, cu_pre, max(q_lens), max(pre_lens),
                                    causal=False, return_lse=True)
    o2, l2 = flash_attn_varlen_func(qs, k[q_idx], v[q_idx], cu_q, cu_q, max(q_lens), max(q_lens),
                                    causal=True, return_lse=True)
    o, lse = merge_attention_partials([o1, o2], [l1, l2])
    do, dl = inp["do"][q_idx], inp["dlse"][:, q_idx]
    ((o * do).sum() + (lse * dl).sum()).backward()

    q64, k64, v64 = (inp[n].double().requires_grad_() for n in ("q", "k", "v"))
    full_o, full_lse = attention_varlen_reference(q64, k64, v64, inp["cu_q"], inp["cu_k"], None, True)
    ((full_o[q_idx] * do.double()).sum() + (full_lse[:, q_idx] * dl.double()).sum()).backward()
    assert rel_err(o, full_o[q_idx]) < FP32_TOL
    assert (lse.double() - full_lse[:, q_idx]).abs().max() < LSE_TOL
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(got, want) < FP32_TOL
