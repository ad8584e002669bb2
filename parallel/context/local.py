"""Single-rank strategies: the whole micro-batch is local, pieces are whole documents."""
from __future__ import annotations


from distca_kernels.flash_attn import flash_attn_varlen_func
from distca_kernels.lightning_attn import chunk_lightning_attn
from parallel.context.strategy import Strategy


class LocalCoreAttention(Strategy):

    def __call__(self, q, k, v, shard, softmax_scale: float):
        cu = shard.cu_seqlens.to(q.device)
        m = shard.memo("max_piece_len", lambda: shard.max_piece_len)  # a host read: once per micro-batch
        return flash_attn_varlen_func(q, k, v, cu, cu, m, m, softmax_scale=softmax_scale, causal=True)


class LocalLinearAttention(Strategy):

    def __call__(self, q, k, v, shard, g_gamma=None, g=None, scale=None):
        if shard.num_tokens == 0:  # a CAD pool rank runs every layer on no tokens
            return v * 0  # empty, and still on the graph so its backward runs
        cu = shard.cu_seqlens.to(q.device)
        o, _ = chunk_lightning_attn(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                    g_gamma=g_gamma, g=None if g is None else g.unsqueeze(0),
                                    scale=scale, cu_seqlens=cu)
        return o.squeeze(0)
