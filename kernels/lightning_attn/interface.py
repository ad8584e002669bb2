"""Public entry point: checks the inputs, then picks the Triton kernel or the torch reference.

Dispatch: CUDA tensors (fp16/bf16/fp32) run the Triton kernels; CPU tensors run them too
under TRITON_INTERPRET=1 (fp16/fp32: the interpreter's bf16 matmuls are wrong); everything
else, fp64 included, runs the differentiable dense torch reference.
"""
from __future__ import annotations

import os

import torch

from kernels.lightning_attn.reference import lightning_attn_reference
from kernels.lightning_attn.validation import validate_inputs

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def uses_triton(q: torch.Tensor) -> bool:
    """Whether `chunk_lightning_attn` would run the Triton kernels for this q."""
    if q.dtype not in _TRITON_DTYPES:
        return False
    if q.is_cuda:
        return True
    return (q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"
            and q.dtype != torch.bfloat16)


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
        from kernels.lightning_attn.chunked import chunk_lightning_attn_triton
        return chunk_lightning_attn_triton(q, k, v, g_gamma, g, scale, initial_state,
                                           output_final_state, cu_seqlens)
    return lightning_attn_reference(q, k, v, g_gamma, g, scale, initial_state,
                                    output_final_state, cu_seqlens)
