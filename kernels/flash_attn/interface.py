"""Public entry points. Until the Triton kernel lands these dispatch to the torch reference."""
from __future__ import annotations

import torch

from kernels.flash_attn.reference import attention_varlen_reference, merge_partials_reference


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale=None, causal=True, return_lse=False):
    o, lse = attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return (o, lse) if return_lse else o


def merge_attention_partials(outs: list[torch.Tensor], lses: list[torch.Tensor]):
    return merge_partials_reference(outs, lses)
