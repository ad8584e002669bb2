"""Grouped-query softmax attention. The weight-free core (softmax(QK^T)V) is delegated to a
strategy (local, ring, allgather, ulysses, usp, cad), which is what makes it distributable."""
from __future__ import annotations

import torch
import torch.nn as nn

from distca.model.layers import RMSNorm
from distca_kernels.rope import qkv_rope


class SoftmaxAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, core_attention,
                 qkv_bias: bool = False, out_bias: bool = False, qk_norm: bool = False, eps: float = 1e-6):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=qkv_bias)
        self.out = nn.Linear(heads * head_dim, dim, bias=out_bias)
        if qk_norm:  # Qwen3: each head of q and k normalised (one weight shared by the heads)
            self.q_norm, self.k_norm = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
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
        qkv = self.qkv(x)
        if hasattr(self, "q_norm"):
            qkv = self._norm_qk(qkv)
        # one kernel splits [q | k | v], rotates q and k and copies v, so the projection's
        # buffer is freed here instead of living on through a view of v
        return qkv_rope(qkv, cos, sin, self.heads, self.kv_heads, self.head_dim)

    def _norm_qk(self, qkv: torch.Tensor) -> torch.Tensor:
        """[q | k | v] with each head of q and k RMS-normalised (before RoPE, as Qwen3)."""
        t, d = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=1)
        q = self.q_norm(q.reshape(t, self.heads, d)).reshape(t, -1)
        k = self.k_norm(k.reshape(t, self.kv_heads, d)).reshape(t, -1)
        return torch.cat([q.to(v.dtype), k.to(v.dtype), v], dim=1)

    def output(self, o: torch.Tensor) -> torch.Tensor:
        return self.out(o.reshape(o.shape[0], self.heads * self.head_dim))
