"""LM head fused with next-token cross-entropy (Liger style): no [T, V] logits, no recompute."""
from distca_kernels.linear_ce.interface import linear_cross_entropy_sum, uses_triton
from distca_kernels.linear_ce.reference import (
    IGNORE_INDEX,
    ce_rows_torch,
    linear_cross_entropy_reference,
)

__all__ = [
    "IGNORE_INDEX",
    "ce_rows_torch",
    "linear_cross_entropy_reference",
    "linear_cross_entropy_sum",
    "uses_triton",
]
