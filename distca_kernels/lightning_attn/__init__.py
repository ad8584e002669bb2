"""Chunked linear attention with decay (Lightning Attention-2 style), fla's calling convention."""
from distca_kernels.lightning_attn.interface import (LightningResiduals, chunk_lightning_attn,
                                             chunk_lightning_attn_backward,
                                             chunk_lightning_attn_forward, uses_triton)
from distca_kernels.lightning_attn.reference import (lightning_attn_recurrent_reference,
                                              lightning_attn_reference)

__all__ = ["chunk_lightning_attn", "chunk_lightning_attn_forward", "chunk_lightning_attn_backward",
           "LightningResiduals", "lightning_attn_recurrent_reference",
           "lightning_attn_reference", "uses_triton"]
