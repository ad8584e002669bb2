"""Fused SwiGLU activation silu(gate) * up on the half-split gate_up layout."""
from distca_kernels.swiglu.interface import swiglu, uses_triton
from distca_kernels.swiglu.reference import swiglu_backward_reference, swiglu_reference

__all__ = ["swiglu", "swiglu_backward_reference", "swiglu_reference", "uses_triton"]
