"""Shared helpers (no tests) for the flash-attention tests: random packed segments and an fp64 oracle."""
from __future__ import annotations

import pytest
import torch

from distca_kernels.flash_attn import attention_varlen_reference


def cu_from_lengths(lengths, device="cpu") -> torch.Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    return torch.tensor(cu, dtype=torch.int32, device=device)


def random_lengths(gen: torch.Generator, count: int, max_len: int, min_len: int = 0) -> list[int]:
    return torch.randint(min_len, max_len + 1, (count,), generator=gen).tolist()


def make_inputs(lq, lk, hq, hkv, d, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    tq, tk = sum(lq), sum(lk)
    q = torch.randn(tq, hq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(tk, hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(tk, hkv, d, generator=gen, dtype=torch.float64)
    do = torch.randn(tq, hq, d, generator=gen, dtype=torch.float64)
    dlse = torch.randn(hq, tq, generator=gen, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(q=cast(q), k=cast(k), v=cast(v), do=cast(do), dlse=dlse.to(device=device, dtype=torch.float32),
                cu_q=cu_from_lengths(lq, device), cu_k=cu_from_lengths(lk, device),
                max_q=max(lq, default=0), max_k=max(lk, default=0))


def loss_of(o, lse, do, dlse):
    """A scalar that depends on o and on lse, so backward exercises d(lse) too.

    lse is -inf for queries that see no key; those entries are left out of the loss.
    """
    finite = torch.isfinite(lse)
    return (o.to(do.dtype) * do).sum() + (torch.where(finite, lse, torch.zeros_like(lse)) * dlse.to(lse.dtype)).sum()


def run_with_grads(fn, inp, causal, scale=None):
    """Call fn(q, k, v, ...) -> (o, lse) on leaf copies of the inputs; return o, lse, dq, dk, dv."""
    q, k, v = (inp[n].detach().clone().requires_grad_() for n in ("q", "k", "v"))
    o, lse = fn(q, k, v, inp["cu_q"], inp["cu_k"], inp["max_q"], inp["max_k"], scale, causal)
    loss_of(o, lse, inp["do"], inp["dlse"]).backward()
    return o.detach(), lse.detach(), q.grad, k.grad, v.grad


def fp64_oracle(inp, causal, scale=None):
    """The torch reference in fp64 on the inputs' own device (the GPU's fp64 is fast enough)."""
    x64 = {n: inp[n].detach().to(torch.float64) for n in ("q", "k", "v", "do", "dlse")}
    x64.update(cu_q=inp["cu_q"], cu_k=inp["cu_k"], max_q=inp["max_q"], max_k=inp["max_k"])

    def ref(q, k, v, cu_q, cu_k, mq, mk, s, c):
        return attention_varlen_reference(q, k, v, cu_q, cu_k, s, c)

    return run_with_grads(ref, x64, causal, scale)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    assert torch.isfinite(x).all(), "non-finite values in the result"
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def compare_to_oracle(got, want, tol: float, lse_tol: float, grad_tol: float | None = None) -> dict:
    """got/want: (o, lse, dq, dk, dv). tol bounds o's relative error, grad_tol (default tol) the grads'.

    Returns the measured errors (printed by the GPU tests, for the record)."""
    grad_tol = tol if grad_tol is None else grad_tol
    names = ("o", "lse", "dq", "dk", "dv")
    lse = got[1].cpu()
    want_lse = want[1].cpu()
    empty = torch.isinf(want_lse)
    assert torch.equal(torch.isinf(lse), empty), "lse must be -inf exactly where a query sees no key"
    assert torch.all(lse[empty] < 0)
    lse_err = (lse.double()[~empty] - want_lse[~empty]).abs().max().item() if (~empty).any() else 0.0
    assert lse_err < lse_tol, f"lse max abs error {lse_err:.3g} >= {lse_tol}"
    errors = {"lse_abs": lse_err}
    for name, g, w in zip(names, got, want):
        if name == "lse":
            continue
        if w.numel() == 0 or w.norm() == 0:
            assert g.abs().max().item() == 0 if g.numel() else True, f"{name} should be zero"
            continue
        bound = tol if name == "o" else grad_tol
        err = errors[name] = rel_err(g, w)
        assert err < bound, f"{name}: relative error {err:.3g} >= {bound}"
    return errors


class _ForwardBackwardPair(torch.autograd.Function):
    """`flash_attn_varlen_forward` / `_backward` wrapped as one autograd op, the way the
    distributed strategies use them, so tests can compare it with `flash_attn_varlen_func`."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, mq, mk, scale, causal):
        from distca_kernels.flash_attn import flash_attn_varlen_forward
        o, lse = flash_attn_varlen_forward(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=scale, causal=causal)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (mq, mk, scale, causal)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        from distca_kernels.flash_attn import flash_attn_varlen_backward
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        mq, mk, scale, causal = ctx.args
        dq, dk, dv = flash_attn_varlen_backward(do, q, k, v, o, lse, cu_q, cu_k, mq, mk, softmax_scale=scale,
                                                causal=causal, dlse=dlse)
        return dq, dk, dv, None, None, None, None, None, None


def forward_backward_pair(q, k, v, cu_q, cu_k, mq, mk, scale, causal):
    return _ForwardBackwardPair.apply(q, k, v, cu_q, cu_k, mq, mk, scale, causal)


@pytest.mark.parametrize("env", [None, "0", "1"])
def test_loading_kernels_leaves_the_process_mode_unchanged(monkeypatch, env):
    """Building a kernel file in either mode leaves TRITON_INTERPRET and triton's knob as they
    were, and builds the mode asked for whatever the environment says."""
    import os

    import triton

    from distca_kernels import triton_loader
    if env is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", env)
    knob = triton.knobs.runtime.interpret
    monkeypatch.setattr(triton_loader, "_cache", {})  # build afresh
    for interpret, kind in ((True, "InterpretedFunction"), (False, "JITFunction")):
        mod = triton_loader.load_kernels("distca_kernels.flash_attn.triton_forward", interpret)
        assert type(mod.attention_forward_kernel).__name__ == kind
        assert os.environ.get("TRITON_INTERPRET") == env
        assert triton.knobs.runtime.interpret == knob
