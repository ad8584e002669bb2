"""Public entry point: checks the inputs, then picks the Triton kernel or the torch reference.

Dispatch follows distca_kernels/triton_loader.py's convention (shared with every op): CUDA tensors
(fp16/bf16/fp32) run the Triton kernels; CPU fp16/fp32 tensors run them in Triton's
interpreter under TRITON_INTERPRET=1 (read at call time); everything else, fp64 included,
runs the differentiable dense torch reference.
"""
from __future__ import annotations

import torch

from distca_kernels.lightning_attn.reference import lightning_attn_reference
from distca_kernels.lightning_attn.validation import validate_inputs
from distca_kernels.triton_loader import triton_mode

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def uses_triton(q: torch.Tensor) -> bool:
    """Whether `chunk_lightning_attn` would run the Triton kernels for this q."""
    return triton_mode(q, _TRITON_DTYPES)[0]


def chunk_lightning_attn(q, k, v, g_gamma=None, g=None, scale=None, initial_state=None,
                         output_final_state=False, cu_seqlens=None):
    """Causal linear attention with decay, fla's calling convention.

    q, k [B, T, H, K]; v [B, T, H, V]; g_gamma [H] a constant log-decay per head (<= 0) or
    g [B, T, H] a per-token log-decay (<= 0), or neither. scale defaults to K**-0.5.
    initial_state [N, H, K, V] (fp32 advised); with cu_seqlens [N+1] (B must be 1) the state
    restarts at every document. Returns (o [B, T, H, V] in q's dtype, final state
    [N, H, K, V] fp32 (fp64 on the fp64 reference) or None unless output_final_state).

    o_t = scale * sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + scale * exp(G_t) q_t S0, with
    G the inclusive cumulative log-decay within the document. Differentiable w.r.t. q, k, v,
    g, g_gamma and initial_state.
    """
    validate_inputs(q, k, v, g_gamma, g, scale, initial_state, output_final_state, cu_seqlens)
    if uses_triton(q) and q.shape[1] > 0:
        from distca_kernels.lightning_attn.chunked import chunk_lightning_attn_triton
        return chunk_lightning_attn_triton(q, k, v, g_gamma, g, scale, initial_state,
                                           output_final_state, cu_seqlens)
    return lightning_attn_reference(q, k, v, g_gamma, g, scale, initial_state,
                                    output_final_state, cu_seqlens)


class LightningResiduals:
    """What `chunk_lightning_attn_backward` needs besides the inputs: `tensors`, which the
    caller saves with `ctx.save_for_backward` (so activation checkpointing can free and
    recompute them), and plain-Python layout state kept on the side (`ctx`-attribute safe)."""

    def __init__(self, tensors: tuple, triton_state=None, scale: float = 1.0):
        self.tensors = tensors
        self.triton_state = triton_state  # None: the torch reference ran
        self.scale = scale


def chunk_lightning_attn_forward(q, k, v, g_gamma=None, g=None, scale=None, cu_seqlens=None):
    """The forward of `chunk_lightning_attn` (no initial or final state) without autograd:
    returns (o [B, T, H, V], LightningResiduals).

    For callers that write their own autograd Function (LASP-2): they save q, k, v, the decay
    and `residuals.tensors` with `ctx.save_for_backward` and call
    `chunk_lightning_attn_backward`. Building an autograd graph inside a Function's forward
    instead would hide its saved tensors from activation checkpointing, whose nested backward
    then re-runs the whole checkpointed region."""
    validate_inputs(q, k, v, g_gamma, g, scale, None, False, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    with torch.no_grad():
        if uses_triton(q) and q.shape[1] > 0:
            from distca_kernels.lightning_attn.chunked import triton_forward
            o, _, saved, state = triton_forward(q, k, v, g_gamma, g, None, scale, cu_seqlens)
            return o, LightningResiduals(saved, state, scale)
        o, _ = lightning_attn_reference(q, k, v, g_gamma, g, scale, None, False, cu_seqlens)
        return o, LightningResiduals((), None, scale)


def chunk_lightning_attn_backward(do, q, k, v, saved_tensors, residuals: LightningResiduals,
                                  g_gamma=None, g=None, cu_seqlens=None, need_decay_grad=True):
    """Gradients (dq, dk, dv, dg_gamma, dg) from `chunk_lightning_attn_forward`'s residuals
    (`saved_tensors` are its `residuals.tensors` as saved). The same q, k, v, decay and
    cu_seqlens as the forward. Decay gradients are None unless need_decay_grad."""
    need_gamma = need_decay_grad and g_gamma is not None
    need_g = need_decay_grad and g is not None
    if residuals.triton_state is not None:
        from distca_kernels.lightning_attn.chunked import triton_backward
        dq, dk, dv, dgamma, dg, _ = triton_backward(do, None, q, k, v, g_gamma, g,
                                                    tuple(saved_tensors), residuals.triton_state,
                                                    need_gamma, need_g)
        return dq, dk, dv, dgamma, dg
    # the reference has no written-out backward: differentiate it here. Identity hooks keep
    # this local graph's saved tensors out of any enclosing saved-tensor hooks (checkpointing)
    inputs = [x.detach().requires_grad_(need) for x, need in
              ((q, True), (k, True), (v, True))]
    decay = [None if x is None else x.detach().requires_grad_(need)
             for x, need in ((g_gamma, need_gamma), (g, need_g))]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        o, _ = lightning_attn_reference(*inputs, decay[0], decay[1], residuals.scale, None, False,
                                        cu_seqlens)
    wanted = inputs + [x for x in decay if x is not None and x.requires_grad]
    grads = list(torch.autograd.grad(o, wanted, do.to(o.dtype), allow_unused=True))
    dq, dk, dv = (gx if gx is not None else torch.zeros_like(x) for gx, x in zip(grads[:3], inputs))
    rest = iter(grads[3:])
    dgamma = next(rest) if need_gamma else None
    dg = next(rest) if need_g else None
    return dq, dk, dv, dgamma, dg
