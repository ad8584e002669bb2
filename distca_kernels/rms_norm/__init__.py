"""Fused RMSNorm (forward and backward in one kernel each)."""
from distca_kernels.rms_norm.interface import rms_norm, uses_triton
from distca_kernels.rms_norm.reference import (
    rms_norm_backward_reference,
    rms_norm_forward_reference,
    rms_norm_reference,
)

__all__ = [
    "rms_norm",
    "rms_norm_backward_reference",
    "rms_norm_forward_reference",
    "rms_norm_reference",
    "uses_triton",
]
