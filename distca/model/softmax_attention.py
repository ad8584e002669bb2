"""Grouped-query softmax attention. The weight-free core (softmax(QK^T)V) is delegated to a
strategy (local, ring, allgather, ulysses, usp, cad), which is what makes it distributable."""
from __future__ import annotations

import torch
import torch.nn as nn

from kernels.rope import qkv_rope


class SoftmaxAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, core_attention):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.core_attention = core_attention

    def forward(self, x: torch.Tensor, shard, rope) -> torch.Tensor:
        t = x.shape[0]
        cos, sin = rope
        # one kernel splits [q | k | v], rotates q and k and copies v, so the projection's
        # buffer is freed here instead of living on through a view of v
        q, k, v = qkv_rope(self.qkv(x), cos, sin, self.heads, self.kv_heads, self.head_dim)
        o = self.core_attention(q, k, v, shard, self.head_dim ** -0.5)
        return self.out(o.reshape(t, self.heads * self.head_dim))
