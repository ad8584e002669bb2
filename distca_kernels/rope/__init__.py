"""Fused qkv split + RoPE: one pass from the qkv projection to new q, k, v tensors."""
from distca_kernels.rope.interface import qkv_rope, uses_triton
from distca_kernels.rope.reference import qkv_rope_backward_reference, qkv_rope_reference

__all__ = ["qkv_rope", "qkv_rope_backward_reference", "qkv_rope_reference", "uses_triton"]
