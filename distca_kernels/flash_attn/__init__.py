"""Varlen causal flash attention (flash-attn's varlen calling convention) and lse merging."""
from distca_kernels.flash_attn.interface import (flash_attn_varlen_backward, flash_attn_varlen_forward,
                                          flash_attn_varlen_func, merge_attention_partials)
from distca_kernels.flash_attn.reference import attention_varlen_reference, merge_partials_reference

__all__ = [
    "flash_attn_varlen_func",
    "flash_attn_varlen_forward",
    "flash_attn_varlen_backward",
    "merge_attention_partials",
    "attention_varlen_reference",
    "merge_partials_reference",
]
