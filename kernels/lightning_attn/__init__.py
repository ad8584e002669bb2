"""Chunked linear attention with decay (Lightning Attention-2 style), fla's calling convention."""
from kernels.lightning_attn.interface import chunk_lightning_attn, uses_triton
from kernels.lightning_attn.reference import (lightning_attn_recurrent_reference,
                                              lightning_attn_reference)

__all__ = ["chunk_lightning_attn", "lightning_attn_recurrent_reference",
           "lightning_attn_reference", "uses_triton"]
