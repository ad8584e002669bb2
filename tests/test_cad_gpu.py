"""CAD on a GPU (one process): the CUDA path (device index tensors, the Triton varlen kernel
over received tasks, int32 cu_seqlens) against local attention, bf16, outputs and grads.
One process moves nothing, so the product runs in place; each case also runs with the exchange
path forced (a planner whose `in_place` answers no), as it runs where work moves.
Skipped without CUDA. Run on the GPU machine: pytest -m gpu tests/test_cad_gpu.py
"""
from __future__ import annotations

import pytest
import torch

from parallel.cad.attention import CADAttention
from parallel.cad.micro_plan import Planner
from parallel.config import CADConfig
from parallel.context.local import LocalCoreAttention
from parallel.context.shard import build_shard

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class ExchangeAlways(Planner):
    def in_place(self, tr) -> bool:
        return False


def cad(forced: bool, **options) -> CADAttention:
    strategy = CADAttention(options=CADConfig(**options))
    if forced:
        strategy.planner = ExchangeAlways(strategy.options, strategy.rank, strategy.size)
    return strategy


@pytest.mark.parametrize("forced", [False, True], ids=["in-place", "exchange"])
@pytest.mark.parametrize("ping_pong", [False, True])
def test_cad_on_gpu_matches_local_attention(ping_pong, forced):
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
    got = run(cad(forced, ping_pong=ping_pong, block=128, overlap="halves" if ping_pong else "none"))
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, ref):
        # same kernel, same segments up to the ping-pong split: bf16 rounding only
        err = (a - b).abs().max().item()
        assert err <= 2e-2 * b.abs().max().item(), (name, err)


def test_cad_under_activation_checkpointing_on_gpu():
    """A small model with CAD attention, fp32 on the GPU kernels: checkpointing on gives the
    gradients of checkpointing off, and the strategy runs twice per layer, not more."""
    from distca.config import compose_config, to_typed
    from distca.data.labels import next_token_labels
    from distca.model import build_model
    from parallel.context.local import LocalLinearAttention
    dev = torch.device("cuda")
    mcfg = to_typed(compose_config(["experiment=tiny", "model.layers=SSS"])).model
    calls = []
    cad = CADAttention(options=CADConfig(block=16))
    model = build_model(mcfg, 256, lambda *a: calls.append(1) or cad(*a), LocalLinearAttention(),
                        seed=0).to(dev)
    doc_lens = [900, 31, 1, 300, 200]
    tokens = torch.randint(0, 256, (sum(doc_lens),), generator=torch.Generator().manual_seed(1))
    shard = build_shard(doc_lens).to(dev)
    ids, labels = tokens.to(dev), next_token_labels(tokens, doc_lens).to(dev)
    grads = []
    for ckpt in (False, True):
        mcfg.recompute = "full" if ckpt else "none"
        model.zero_grad(set_to_none=True)
        calls.clear()
        model(ids, shard, labels).backward()
        assert len(calls) == (6 if ckpt else 3), (ckpt, len(calls))
        grads.append([p.grad.clone() for p in model.parameters()])
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        err = (a - b).abs().max().item()
        assert err <= 1e-5 * max(1.0, b.abs().max().item()), (name, err)


@pytest.mark.parametrize("options", [dict(overlap="nanobatch"), dict(overlap="nanobatch", backward="resend"),
                                     dict(overlap="halves", backward="resend"),
                                     dict(overlap="none", backward="resend"), dict(overlap="auto")],
                         ids=["nanobatch", "nanobatch-resend", "halves-resend", "none-resend", "auto"])
@pytest.mark.parametrize("forced", [False, True], ids=["in-place", "exchange"])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_cad_modes_match_local_attention_in_a_model_on_gpu(options, recompute, forced):
    """Every CAD overlap / backward mode in a hybrid model (SLSS, the Triton kernels, bf16
    autocast) on the GPU: loss and gradients of local attention, to bf16 rounding."""
    from distca.config import compose_config, to_typed
    from distca.data.labels import next_token_labels
    from distca.model import build_model
    from parallel.context.local import LocalLinearAttention
    dev = torch.device("cuda")
    mcfg = to_typed(compose_config(["experiment=tiny", "model.layers=SLSS",
                                    f"model.recompute={recompute}"])).model
    doc_lens = [900, 31, 1, 300, 2000, 200]
    tokens = torch.randint(0, 256, (sum(doc_lens),), generator=torch.Generator().manual_seed(1))
    shard = build_shard(doc_lens).to(dev)
    ids, labels = tokens.to(dev), next_token_labels(tokens, doc_lens).to(dev)

    def run(core):
        model = build_model(mcfg, 256, core, LocalLinearAttention(), seed=0).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, shard, labels)
        loss.backward()
        return loss.item(), [p.grad.float() for p in model.parameters()]

    ref_loss, ref = run(LocalCoreAttention())
    loss, got = run(cad(forced, block=64, **options))
    assert abs(loss - ref_loss) <= 1e-2 * abs(ref_loss), (loss, ref_loss)
    for a, b in zip(got, ref):
        err = (a - b).abs().max().item()
        assert err <= 3e-2 * max(1e-3, b.abs().max().item()), err
