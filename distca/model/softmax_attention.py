"""Grouped-query softmax attention. The weight-free core (softmax(QK^T)V) is delegated to a
strategy (local, ring, allgather, ulysses, usp, cad), which is what makes it distributable."""
from __future__ import annotations

import torch
import torch.nn as nn

from distca_kernels.rope import qkv_rope


class SoftmaxAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, core_attention):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.core_attention = core_attention

    def forward(self, x: torch.Tensor, shard, rope) -> torch.Tensor:
        q, k, v = self.project(x, rope)
        return self.output(self.core_attention(q, k, v, shard, self.scale))

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    def project(self, x: torch.Tensor, rope):
        """x [T, dim] -> q [T, Hq, D], k, v [T, Hkv, D], rotated."""
        cos, sin = rope
        # one kernel splits [q | k | v], rotates q and k and copies v, so the projection's
        # buffer is freed here instead of living on through a view of v
        return qkv_rope(self.qkv(x), cos, sin, self.heads, self.kv_heads, self.head_dim)

    def output(self, o: torch.Tensor) -> torch.Tensor:
        return self.out(o.reshape(o.shape[0], self.heads * self.head_dim))
