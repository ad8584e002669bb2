"""The torch references and the public function's CPU path (no Triton involved).

The dense masked form and the token-by-token recurrence are two independent writings of the
same function; their agreement (outputs, final states and every gradient, in fp64) checks
both. Also: the public function on CPU is that reference (fp64, differentiable), and bad input
is refused with a ValueError that names the argument.
"""
import os
import re

import pytest
import torch

from distca_kernels.lightning_attn import (chunk_lightning_attn, lightning_attn_recurrent_reference,
                                    lightning_attn_reference, uses_triton)

DECAYS = ["none", "gamma", "g"]


def _inputs(b, t, h, kd, vd, decay, n_states, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, kd, generator=gen, dtype=dtype)
    k = torch.randn(b, t, h, kd, generator=gen, dtype=dtype)
    v = torch.randn(b, t, h, vd, generator=gen, dtype=dtype)
    g_gamma = -torch.rand(h, generator=gen, dtype=dtype) if decay == "gamma" else None
    g = -torch.rand(b, t, h, generator=gen, dtype=dtype) * 0.5 if decay == "g" else None
    s0 = torch.randn(n_states, h, kd, vd, generator=gen, dtype=dtype) if n_states else None
    return q, k, v, g_gamma, g, s0


def _run_with_grads(fn, tensors, cu, seed):
    q, k, v, g_gamma, g, s0 = [None if x is None else x.clone().requires_grad_()
                               for x in tensors]
    o, final = fn(q, k, v, g_gamma, g, None, s0, True, cu)
    gen = torch.Generator().manual_seed(seed + 1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    loss.backward()
    grads = [None if x is None else x.grad for x in (q, k, v, g_gamma, g, s0)]
    return o.detach(), final.detach(), grads


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("layout", ["batch", "varlen"])
def test_recurrent_and_dense_references_agree(decay, layout):
    if layout == "batch":
        tensors = _inputs(2, 9, 2, 3, 4, decay, n_states=2, seed=1)
        cu = None
    else:  # documents of 1, 0 (empty), 5 and 3 tokens
        tensors = _inputs(1, 9, 2, 3, 4, decay, n_states=4, seed=2)
        cu = torch.tensor([0, 1, 1, 6, 9])
    o_d, f_d, g_d = _run_with_grads(lightning_attn_reference, tensors, cu, 3)
    o_r, f_r, g_r = _run_with_grads(lightning_attn_recurrent_reference, tensors, cu, 3)
    assert _rel(o_r, o_d) < 1e-12
    assert _rel(f_r, f_d) < 1e-12
    for name, a, b in zip(["q", "k", "v", "g_gamma", "g", "initial_state"], g_r, g_d):
        if b is not None:
            assert _rel(a, b) < 1e-12, name


def test_reference_state_resets_per_document():
    """A packed batch equals the documents run one by one, each from its own initial state."""
    q, k, v, _, g, s0 = _inputs(1, 7, 2, 3, 4, "g", n_states=2, seed=4)
    cu = torch.tensor([0, 3, 7])
    o, final = lightning_attn_reference(q, k, v, g=g, initial_state=s0,
                                        output_final_state=True, cu_seqlens=cu)
    for n, (lo, hi) in enumerate([(0, 3), (3, 7)]):
        o_n, f_n = lightning_attn_reference(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi],
                                            g=g[:, lo:hi], initial_state=s0[n:n + 1],
                                            output_final_state=True)
        assert torch.allclose(o[:, lo:hi], o_n, rtol=1e-12, atol=1e-12)
        assert torch.allclose(final[n:n + 1], f_n, rtol=1e-12, atol=1e-12)


def test_cpu_public_function_is_the_differentiable_fp64_reference():
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("under the interpreter the public function runs Triton for fp32")
    q, k, v, _, g, s0 = _inputs(1, 5, 2, 3, 2, "g", n_states=1, seed=5)
    assert not uses_triton(q) and not uses_triton(q.float())
    args = [x.clone().requires_grad_() for x in (q, k, v, g, s0)]

    def fn(q, k, v, g, s0):
        o, final = chunk_lightning_attn(q, k, v, g=g, initial_state=s0,
                                        output_final_state=True)
        return o, final

    assert torch.autograd.gradcheck(fn, args)
    o, final = fn(*args)
    o_ref, f_ref = lightning_attn_reference(q, k, v, g=g, initial_state=s0,
                                            output_final_state=True)
    assert o.dtype == torch.float64 and torch.equal(o, o_ref) and torch.equal(final, f_ref)
    assert chunk_lightning_attn(q, k, v)[1] is None


def _bad(**over):
    q, k, v, g_gamma, g, s0 = _inputs(1, 6, 2, 3, 4, "none", n_states=1, seed=6,
                                      dtype=torch.float32)
    kw = dict(q=q, k=k, v=v, g_gamma=None, g=None, scale=None, initial_state=None,
              output_final_state=False, cu_seqlens=None)
    kw.update(over)
    return kw


@pytest.mark.parametrize("over, name", [
    (dict(q=torch.zeros(6, 2, 3)), "q"),
    (dict(k=torch.zeros(1, 6, 2, 5)), "k"),
    (dict(v=torch.zeros(1, 5, 2, 4)), "v"),
    (dict(q=torch.zeros(1, 6, 2, 3, dtype=torch.int32)), "q"),
    (dict(g_gamma=torch.zeros(3)), "g_gamma"),
    (dict(g_gamma=torch.full((2,), 0.1)), "g_gamma"),
    (dict(g=torch.zeros(1, 6, 3)), "g"),
    (dict(g=torch.full((1, 6, 2), 0.5)), "g"),
    (dict(g=torch.zeros(1, 6, 2), g_gamma=torch.zeros(2)), "g_gamma and g"),
    (dict(scale=-1.0), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(output_final_state=1), "output_final_state"),
    (dict(initial_state=torch.zeros(2, 2, 3, 4)), "initial_state"),
    (dict(cu_seqlens=torch.tensor([0, 2, 5])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 4, 2, 6])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0.0, 6.0])), "cu_seqlens"),
    (dict(q=torch.zeros(2, 6, 2, 3), k=torch.zeros(2, 6, 2, 3), v=torch.zeros(2, 6, 2, 4),
          cu_seqlens=torch.tensor([0, 6])), "cu_seqlens"),
])
def test_bad_input_is_a_value_error_naming_the_argument(over, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\b"):
        chunk_lightning_attn(**_bad(**over))
