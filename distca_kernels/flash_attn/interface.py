"""Public entry points: flash-attn's varlen calling convention, dispatched by device.

The path follows distca_kernels/triton_loader.py's convention (shared with every op):
- CUDA tensors (fp16, bf16, fp32) run the Triton kernels (triton_attention.py); on Hopper
  (sm_90), 16-bit inputs that TMA can address run their Gluon versions (gluon_*.py).
- CPU fp32/fp16 tensors with TRITON_INTERPRET=1 run the same Triton kernels in Triton's
  interpreter: that is how the kernels are tested without a GPU.
- Everything else (CPU without the interpreter, fp64 anywhere, CPU bf16 whose interpreted
  dots are wrong) takes the torch reference, which other components rely on for exact fp64
  tests of distributed attention.
"""
from __future__ import annotations

import torch

from distca_kernels.flash_attn.block_config import SUPPORTED_HEAD_DIMS
from distca_kernels.flash_attn.reference import (attention_varlen_reference,
                                          attention_varlen_reference_backward,
                                          merge_partials_reference)
from distca_kernels.flash_attn.validation import check_attention_inputs, check_partials
from distca_kernels.triton_loader import triton_mode


def _use_triton(q: torch.Tensor) -> tuple[bool, bool]:
    """(run the Triton kernels, in the interpreter)."""
    return triton_mode(q, (torch.float16, torch.bfloat16, torch.float32))


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale=None, causal=True, return_lse=False, deterministic=None):
    """Attention over packed variable-length segments.

    q [total_q, Hq, D]; k, v [total_k, Hkv, D] with Hq % Hkv == 0 (GQA/MQA); cu_seqlens_q/k
    int32 prefix sums with one (q, kv) segment pair per entry (empty segments allowed);
    max_seqlen_q/k bound the segment lengths. Causal masks are aligned bottom-right: a segment
    with m queries and n keys lets query i see keys 0..n-m+i (a query shard with its key
    prefix is one call). Returns o [total_q, Hq, D] and, with return_lse, lse [Hq, total_q]
    (fp32; fp64 for fp64 input); gradients flow through both. Queries that see no key get
    o = 0 and lse = -inf.

    deterministic: whether the backward must give bitwise-identical gradients run to run.
    False allows the fused backward on Hopper (one kernel; dQ summed in fp32 in the order its
    programs finish, as in flash-attn and cuDNN), used where it measured faster; True keeps the
    two-kernel backward. None (the default) follows torch.are_deterministic_algorithms_enabled(),
    i.e. torch.use_deterministic_algorithms(True) makes it deterministic.

    The first call with a given cu_seqlens tensor reads its values to validate them (a host
    sync on the GPU); keep one device copy per step so later layers skip that.
    """
    check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    deterministic = _deterministic(deterministic)
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    use_triton, interpret = _use_triton(q)
    if use_triton and q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q head_dim {q.shape[-1]} is not supported by the Triton kernel; "
                         f"use one of {SUPPORTED_HEAD_DIMS}")
    if not use_triton:
        o, lse = attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal)
        return (o, lse) if return_lse else o

    from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    o, lse = TritonVarlenAttention.apply(q, k, v, cu_q, cu_k, scale, bool(causal), interpret, None,
                                         bool(deterministic))
    return (o, lse) if return_lse else o


def _deterministic(deterministic) -> bool:
    if deterministic is not None and not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be True, False or None (follow torch's setting), got {deterministic!r}")
    return torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic


def flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              softmax_scale=None, causal=True):
    """The forward of `flash_attn_varlen_func` without autograd: returns (o, lse).

    For callers that write their own autograd Function (distributed attention) and save
    q, k, v, o, lse themselves with `ctx.save_for_backward`, so activation checkpointing can
    free and recompute them like any other saved tensor; `flash_attn_varlen_backward` then
    gives the gradients. Building an autograd graph inside a Function's forward instead
    would hide its saved tensors from checkpointing (a nested backward on such a graph
    re-runs the whole checkpointed region). Shapes and rules as `flash_attn_varlen_func`.
    """
    check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    use_triton, interpret = _use_triton(q)
    if use_triton and q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q head_dim {q.shape[-1]} is not supported by the Triton kernel; "
                         f"use one of {SUPPORTED_HEAD_DIMS}")
    with torch.no_grad():
        if not use_triton:
            return attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal)
        from distca_kernels.flash_attn.block_config import select_configs
        from distca_kernels.flash_attn.triton_attention import attention_forward

        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
        cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
        configs = select_configs(q.shape[-1], q.dtype, interpret, group=q.shape[1] // k.shape[1])
        o, lse, _ = attention_forward(q, k, v, cu_q, cu_k, scale, bool(causal), configs, interpret)
        return o, lse


def flash_attn_varlen_backward(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                               max_seqlen_k, softmax_scale=None, causal=True, dlse=None,
                               deterministic=None):
    """Gradients (dq, dk, dv) of attention from the (o, lse) that `flash_attn_varlen_forward`
    returned for the same inputs. do [total_q, Hq, D] (None when only lse was used), dlse
    [Hq, total_q] or None; `deterministic` as in `flash_attn_varlen_func`. No autograd graph
    is built: the Triton kernels on the GPU (and under the interpreter), the written-out
    reference gradient elsewhere."""
    check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    if o.shape != q.shape or lse.shape != (q.shape[1], q.shape[0]):
        raise ValueError(f"o must be q's shape {tuple(q.shape)} and lse [Hq, total_q] = "
                         f"[{q.shape[1]}, {q.shape[0]}]; got o {tuple(o.shape)}, lse {tuple(lse.shape)}")
    if do is not None and do.shape != q.shape:
        raise ValueError(f"do must be q's shape {tuple(q.shape)}, got {tuple(do.shape)}")
    deterministic = _deterministic(deterministic)
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    use_triton, interpret = _use_triton(q)
    with torch.no_grad():
        if not use_triton:
            return attention_varlen_reference_backward(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k,
                                                       scale, causal, dlse)
        from distca_kernels.flash_attn.block_config import select_configs
        from distca_kernels.flash_attn.triton_attention import attention_backward

        q, k, v, o = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, o))
        do = None if do is None else do.to(q.dtype)
        dlse = None if dlse is None else dlse.float().contiguous()
        cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
        cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
        configs = select_configs(q.shape[-1], q.dtype, interpret, group=q.shape[1] // k.shape[1],
                                 deterministic=deterministic)
        return attention_backward(do, dlse, q, k, v, o, lse.float().contiguous(), cu_q, cu_k, scale,
                                  bool(causal), configs, interpret)


def merge_attention_partials(outs: list[torch.Tensor], lses: list[torch.Tensor]):
    """Merge partial attention results over disjoint key sets by their lse, in fp32.

    outs[i] [T, H, D], lses[i] [H, T]; returns (o in outs[0]'s dtype, lse fp32, fp64 for fp64).
    Partials with lse = -inf contribute nothing. Differentiable through both inputs.
    """
    check_partials(outs, lses)
    return merge_partials_reference(list(outs), list(lses))
