"""CAD on a GPU (one process): the CUDA path (device index tensors, the Triton varlen kernel
over received tasks, int32 cu_seqlens) against local attention, bf16, outputs and grads.
Skipped without CUDA. Run on the GPU machine: pytest -m gpu tests/test_cad_gpu.py
"""
from __future__ import annotations

import pytest
import torch

from distca.cad.attention import CADAttention
from parallel.context.local import LocalCoreAttention
from parallel.context.shard import build_shard

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("ping_pong", [False, True])
def test_cad_on_gpu_matches_local_attention(ping_pong):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    doc_lens = [7000, 130, 1, 2500, 9000, 77, 4000]
    T, hq, hkv, d = sum(doc_lens), 8, 2, 128
    q = torch.randn(T, hq, d, generator=g).to(dev, torch.bfloat16)
    k = torch.randn(T, hkv, d, generator=g).to(dev, torch.bfloat16)
    v = torch.randn(T, hkv, d, generator=g).to(dev, torch.bfloat16)
    w = torch.randn(T, hq, d, generator=g).to(dev, torch.bfloat16)
    shard = build_shard(doc_lens).to(dev)

    def run(strategy):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        o = strategy(*leaves, shard, d ** -0.5)
        (o.float() * w.float()).sum().backward()
        return [o.detach().float()] + [x.grad.float() for x in leaves]

    ref = run(LocalCoreAttention())
    got = run(CADAttention(None, {"ping_pong": ping_pong, "block": 128}))
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, ref):
        # same kernel, same segments up to the ping-pong split: bf16 rounding only
        err = (a - b).abs().max().item()
        assert err <= 2e-2 * b.abs().max().item(), (name, err)
