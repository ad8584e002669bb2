"""The kernels' explicit forward/backward pairs, which distributed strategies call inside
their own autograd Functions (so activation checkpointing sees every saved tensor), against
autograd through the fp64 torch references: outputs and every gradient.

flash attention: `flash_attn_varlen_forward` -> (o, lse), `flash_attn_varlen_backward`
with dO and d(lse) (the written-out reference backward on CPU; the Triton kernels are
checked under the interpreter in test_flash_attn_interpreter.py and in bf16 on the GPU).
lightning attention: `chunk_lightning_attn_forward` / `_backward` (the Triton path under
the interpreter in test_lightning_attn_interpret.py).
"""
from __future__ import annotations

import pytest
import torch

from distca_kernels.flash_attn import flash_attn_varlen_backward, flash_attn_varlen_forward
from distca_kernels.lightning_attn import (chunk_lightning_attn_backward, chunk_lightning_attn_forward,
                                    lightning_attn_reference)
from tests.test_flash_attn_helpers import (compare_to_oracle, forward_backward_pair, fp64_oracle,
                                           make_inputs, run_with_grads)

FP64_TOL = 1e-12


@pytest.mark.parametrize("lq,lk,hq,hkv,d,causal", [
    ([37, 1, 0, 20], [37, 1, 0, 20], 4, 4, 16, True),   # 1-token and empty segments
    ([5, 17, 1], [40, 33, 9], 4, 1, 8, True),          # queries shorter than keys, MQA
    ([30, 3], [10, 2], 2, 2, 8, True),                 # rows that see no key (lse = -inf)
    ([30, 3, 4], [10, 0, 4], 8, 2, 8, False),          # non-causal, an empty key segment
])
def test_flash_pair_matches_autograd_of_the_reference(lq, lk, hq, hkv, d, causal):
    inp = make_inputs(lq, lk, hq, hkv, d, torch.float64, seed=len(lq) + d)
    got = run_with_grads(forward_backward_pair, inp, causal, scale=0.3)
    compare_to_oracle(got, fp64_oracle(inp, causal, scale=0.3), FP64_TOL, FP64_TOL)


def test_flash_pair_builds_no_graph_and_checks_its_inputs():
    inp = make_inputs([6, 4], [6, 4], 2, 1, 8, torch.float64)
    q, k, v = (inp[n].clone().requires_grad_() for n in ("q", "k", "v"))
    args = (inp["cu_q"], inp["cu_k"], 6, 6)
    o, lse = flash_attn_varlen_forward(q, k, v, *args)
    assert o.grad_fn is None and lse.grad_fn is None  # the caller's Function owns autograd
    dq, dk, dv = flash_attn_varlen_backward(None, q, k, v, o, lse, *args, dlse=inp["dlse"].double())
    assert dv.abs().max() == 0 and dq.abs().max() > 0  # lse does not depend on v
    with pytest.raises(ValueError, match="lse"):
        flash_attn_varlen_backward(inp["do"], q, k, v, o, lse.t(), *args)
    with pytest.raises(ValueError, match="do must"):
        flash_attn_varlen_backward(inp["do"][:3], q, k, v, o, lse, *args)


def _lightning_case(decay, seed=0, t=29, h=2, kd=4, vd=6):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, t, h, kd, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, t, h, vd, generator=g, dtype=torch.float64)
    g_gamma = -torch.rand(h, generator=g, dtype=torch.float64) * 0.5 if decay == "gamma" else None
    gt = -torch.rand(1, t, h, generator=g, dtype=torch.float64) * 0.5 if decay == "g" else None
    do = torch.randn(1, t, h, vd, generator=g, dtype=torch.float64)
    cu = torch.tensor([0, 11, 12, 12, t], dtype=torch.int32)  # an empty and a 1-token document
    return q, k, v, g_gamma, gt, do, cu


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
def test_lightning_pair_matches_autograd_of_the_reference(decay):
    q, k, v, g_gamma, g, do, cu = _lightning_case(decay, seed=len(decay))
    o, res = chunk_lightning_attn_forward(q, k, v, g_gamma, g, scale=0.7, cu_seqlens=cu)
    assert o.grad_fn is None
    got = chunk_lightning_attn_backward(do, q, k, v, res.tensors, res, g_gamma, g, cu)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    decays = [None if x is None else x.clone().requires_grad_() for x in (g_gamma, g)]
    want_o, _ = lightning_attn_reference(*leaves, *decays, 0.7, None, False, cu)
    (want_o * do).sum().backward()
    assert (o - want_o).abs().max() <= FP64_TOL
    wants = [x.grad for x in leaves] + [None if x is None else x.grad for x in decays]
    for name, a, b in zip(("dq", "dk", "dv", "dg_gamma", "dg"), got, wants):
        assert (a is None) == (b is None), name
        if b is not None:
            assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item()), name
    no_decay_grad = chunk_lightning_attn_backward(do, q, k, v, res.tensors, res, g_gamma, g, cu,
                                                  need_decay_grad=False)
    assert no_decay_grad[3] is None and no_decay_grad[4] is None
