"""Linear attention in the Lightning Attention / TransNormerLLM family.

q/k/v projections with a SiLU feature map on q and k, a per-head decay (constant, ALiBi-like
slopes as in TransNormerLLM) or a data-dependent per-token decay, a per-head output norm and a
sigmoid output gate. The causal recurrence itself is delegated to a strategy (local kernel, or
LASP-2 across context-parallel ranks), and resets at every document start.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DECAY_MODES = ("head", "token", "none")


def head_decay_slopes(heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Log-decays (< 0) per head: geometric slopes, weaker decay in deeper layers (TransNormerLLM)."""
    # made on the CPU even while the model is built on the meta device: an architectural
    # constant, not a weight to load or initialise
    base = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)], device="cpu")
    depth = 1 - layer_idx / max(num_layers - 1, 1) + 1e-5
    return -base * depth


class LinearAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, linear_attention, decay: str,
                 layer_idx: int, num_layers: int):
        super().__init__()
        if decay not in DECAY_MODES:
            raise ValueError(f"model.linear_decay={decay!r} is unknown; choose one of {DECAY_MODES}")
        self.heads, self.head_dim, self.decay = heads, head_dim, decay
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.gate = nn.Linear(dim, heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(head_dim))
        if decay == "token":
            self.decay_proj = nn.Linear(dim, heads, bias=True)
        # constant decays are buffers: part of the architecture, not learned
        self.register_buffer("g_gamma", head_decay_slopes(heads, layer_idx, num_layers), persistent=False)
        self.linear_attention = linear_attention

    def forward(self, x: torch.Tensor, shard, rope=None) -> torch.Tensor:
        t = x.shape[0]
        acc = torch.promote_types(x.dtype, torch.float32)  # norms and decays: fp32 at least
        q, k, v = self.qkv(x).view(t, 3, self.heads, self.head_dim).unbind(1)
        q, k = F.silu(q), F.silu(k)
        g_gamma = g = None
        if self.decay == "head":
            g_gamma = self.g_gamma
        elif self.decay == "token":
            # log-sigmoid gives log-decays <= 0; dividing keeps early training close to no decay
            g = F.logsigmoid(self.decay_proj(x).to(acc)) / 16.0
        o = self.linear_attention(q, k, v, shard, g_gamma=g_gamma, g=g, scale=self.head_dim ** -0.5)
        of = o.to(acc)
        of = of * torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight.to(acc)
        o = of.to(x.dtype).reshape(t, self.heads * self.head_dim)
        return self.out(o * torch.sigmoid(self.gate(x)))
