"""The Triton kernels under Triton's CPU interpreter, fp32, against the fp64 dense reference:
outputs, final states and every gradient (q, k, v, g, g_gamma, initial_state).

Run by test_triton_interpreter.py in a fresh process started with TRITON_INTERPRET=1 (triton's
own jit helpers must be built in interpreter mode); skipped elsewhere. Small chunks (16 tokens) and segments (2 chunks) reach every path at small sizes: sequences
shorter than, equal to and just past a chunk and a segment, ragged tails, 1-token and empty
documents, V split into several blocks, head dims that are not powers of two.
"""
import os

import pytest
import torch

from distca_kernels.lightning_attn import chunk_lightning_attn, lightning_attn_reference, uses_triton
from distca_kernels.lightning_attn.chunked import chunk_lightning_attn_triton

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="run by test_triton_interpreter.py (needs TRITON_INTERPRET=1 at start)")

TOL = 2e-5  # fp32 arithmetic against fp64; measured errors are ~1e-7 (dg_gamma ~1e-6)


def _case(b, t, h, kd, vd, decay, n_states, seed, g_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, kd, generator=gen)
    k = torch.randn(b, t, h, kd, generator=gen)
    v = torch.randn(b, t, h, vd, generator=gen)
    g_gamma = -torch.rand(h, generator=gen) * g_scale if decay == "gamma" else None
    g = -torch.rand(b, t, h, generator=gen) * g_scale if decay == "g" else None
    s0 = torch.randn(n_states, h, kd, vd, generator=gen) if n_states else None
    return [q, k, v, g_gamma, g, s0]


def _forward_backward(fn, tensors, cu, seed, dtype):
    leaves = [None if x is None else x.detach().to(dtype, copy=True).requires_grad_()
              for x in tensors]
    q, k, v, g_gamma, g, s0 = leaves
    o, final = fn(q, k, v, g_gamma, g, None, s0, True, cu)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen)
    dfinal = torch.randn(final.shape, generator=gen)
    ((o * do.to(o.dtype)).sum() + (final * dfinal.to(final.dtype)).sum()).backward()
    return o.detach(), final.detach(), [None if x is None else x.grad for x in leaves]


def _check(tensors, cu=None, seed=0, **knobs):
    knobs = {"chunk_size": 16, "chunks_per_segment": 2, **knobs}

    def triton_fn(*args):
        return chunk_lightning_attn_triton(*args, **knobs)

    o, final, grads = _forward_backward(triton_fn, tensors, cu, seed, torch.float32)
    o_r, f_r, grads_r = _forward_backward(lightning_attn_reference, tensors, cu, seed,
                                          torch.float64)
    errors = {"o": (o, o_r), "final": (final, f_r)}
    for name, x, a, b in zip(["dq", "dk", "dv", "dg_gamma", "dg", "dinitial_state"], tensors,
                             grads, grads_r):
        if x is not None:
            assert a is not None and b is not None, f"{name} missing"
            errors[name] = (a, b)
    for name, (a, b) in errors.items():
        assert a.dtype != torch.float64 and torch.isfinite(a).all(), name
        rel = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert rel < TOL, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
@pytest.mark.parametrize("t", [1, 16, 17, 32, 47])
def test_single_sequence_lengths_around_chunk_and_segment(decay, t):
    _check(_case(1, t, 2, 16, 16, decay, n_states=1, seed=t), seed=t)


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
def test_batch_rows_are_separate_sequences(decay):
    _check(_case(2, 35, 2, 16, 16, decay, n_states=2, seed=7), seed=7)


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
def test_varlen_documents_reset_state(decay):
    # documents of 1, 0, 16, 33, 1 and 7 tokens: boundaries inside chunks, empty and 1-token
    cu = torch.tensor([0, 1, 1, 17, 50, 51, 58])
    _check(_case(1, 58, 2, 16, 16, decay, n_states=6, seed=8), cu=cu, seed=8)


def test_odd_head_dims_and_several_state_slices():
    # K=20 pads to 32, V=40 to 64; slices of 16 -> K in two slices, V in three, both ragged
    _check(_case(1, 37, 2, 20, 40, "g", n_states=1, seed=9), seed=9, block=16)


def test_without_initial_state():
    _check(_case(1, 37, 2, 16, 16, "gamma", n_states=0, seed=10), seed=10)


def test_strong_decay_stays_finite():
    # log-decays of -40 per token: exp of positive exponents would overflow; ours never forms
    # one, so everything stays finite and matches
    _check(_case(1, 40, 2, 16, 16, "g", n_states=1, seed=11, g_scale=40.0), seed=11)


def test_public_function_runs_triton_with_default_chunk():
    tensors = _case(1, 70, 2, 16, 16, "g", n_states=1, seed=12)
    assert uses_triton(tensors[0]) and not uses_triton(tensors[0].double())

    def public(*args):
        return chunk_lightning_attn(*args)

    o, final, _ = _forward_backward(public, tensors, None, 12, torch.float32)
    o_r, f_r, _ = _forward_backward(lightning_attn_reference, tensors, None, 12, torch.float64)
    assert ((o.double() - o_r).norm() / o_r.norm()).item() < TOL
    assert ((final.double() - f_r).norm() / f_r.norm()).item() < TOL


@pytest.mark.parametrize("decay", ["none", "gamma", "g"])
def test_forward_backward_pair_runs_triton_and_matches(decay):
    """chunk_lightning_attn_forward / _backward (what LASP-2 calls inside its own Function):
    the Triton kernels, no autograd graph, gradients of the fp64 reference."""
    from distca_kernels.lightning_attn import chunk_lightning_attn_backward, chunk_lightning_attn_forward
    q, k, v, g_gamma, g, _ = _case(1, 58, 2, 16, 16, decay, n_states=0, seed=13)
    cu = torch.tensor([0, 1, 1, 17, 50, 51, 58])
    o, res = chunk_lightning_attn_forward(q, k, v, g_gamma, g, scale=0.5, cu_seqlens=cu)
    assert res.triton_state is not None and o.grad_fn is None
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(13))
    got = chunk_lightning_attn_backward(do, q, k, v, res.tensors, res, g_gamma, g, cu)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    decays = [None if x is None else x.double().requires_grad_() for x in (g_gamma, g)]
    want, _ = lightning_attn_reference(*leaves, *decays, 0.5, None, False, cu)
    (want * do.double()).sum().backward()
    pairs = [("o", o, want)] + list(zip(("dq", "dk", "dv", "dg_gamma", "dg"), got,
                                        [x.grad for x in leaves]
                                        + [None if x is None else x.grad for x in decays]))
    for name, a, b in pairs:
        assert (a is None) == (b is None), name
        if b is not None:
            rel = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
            assert a.dtype == torch.float32 and rel < TOL, f"{name}: relative error {rel:.2e}"
