"""The attention server: one varlen kernel call over every task a rank received.

Tasks arrive as rows of the dispatch buffer. The server gathers them into kernel order
(segments of one document, queries [q_start, q_end) with keys [0, q_end)), runs ONE
varlen flash-attention call whose causal mask is aligned bottom-right (a segment of m
queries and n >= m keys lets query i see keys 0..n-m+i, exactly a query shard with its
prefix). Stateful server: the received rows, o and the log-sum-exp stay here between
forward and backward; only dO travels in, dq/dk/dv travel back.

No autograd graph is built: `serve_forward` returns the tensors the backward needs and the
caller (`CADFunction`) saves them with `ctx.save_for_backward`. That is what makes CAD work
under activation checkpointing: checkpointing frees saved tensors after the forward and
recomputes them, once, when the backward reaches the block; a graph kept on the side would
instead be differentiated by a nested backward, which re-runs the whole checkpointed block
on the ranks that served something and desynchronises the group's collectives.
"""
from __future__ import annotations

import torch

from distca_kernels.flash_attn import flash_attn_varlen_backward, flash_attn_varlen_forward
from distca_kernels.precision import accumulator_dtype
from parallel.cad.dispatch import Layout
from parallel.cad.row_sums import add_rows_into_zeros


def _server_qkv(L: Layout, recv: torch.Tensor, hq: int, hkv: int, d: int):
    q = recv.index_select(0, L.srv_q_rows).view(-1, hq, d)
    k = recv.index_select(0, L.srv_k_rows).view(-1, hkv, d)
    v = recv.index_select(0, L.srv_v_rows).view(-1, hkv, d)
    return q, k, v


def serve_forward(L: Layout, recv: torch.Tensor, hq: int, hkv: int, d: int, scale: float):
    """recv [rows, D] -> (o rows [queries * hq, D] in the order the queries arrived,
    (o, lse) in kernel order for the backward)."""
    q, k, v = _server_qkv(L, recv, hq, hkv, d)
    if q.shape[0] == 0:  # nothing to serve in this half
        empty = recv.new_zeros((0, hq, d))
        lse = recv.new_zeros((hq, 0), dtype=accumulator_dtype(recv.dtype))  # the kernel's LSE dtype
        return recv.new_zeros((0, d)), (empty, lse)
    o, lse = flash_attn_varlen_forward(q, k, v, L.cu_seqlens_q, L.cu_seqlens_k, L.max_seqlen_q,
                                       L.max_seqlen_k, softmax_scale=scale, causal=True)
    return o.index_select(0, L.srv_q_pos).reshape(-1, d), (o, lse)


def serve_backward(L: Layout, recv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                   d_out_recv: torch.Tensor, hq: int, hkv: int, d: int, scale: float):
    """dO rows (arrival order) -> gradient of the received buffer [rows, D]; copies of one key
    sent to several segments have their gradients summed here (`row_sums.py`)."""
    d_recv = d_out_recv.new_zeros((recv.shape[0], d))
    if o.shape[0] == 0:
        return d_recv
    q, k, v = _server_qkv(L, recv, hq, hkv, d)
    d_o = d_out_recv.view(-1, hq, d).index_select(0, L.srv_q_slots)
    dq, dk, dv = flash_attn_varlen_backward(d_o, q, k, v, o, lse, L.cu_seqlens_q, L.cu_seqlens_k,
                                            L.max_seqlen_q, L.max_seqlen_k, softmax_scale=scale,
                                            causal=True)
    # q, k and v rows are disjoint parts of the buffer; a query row appears once
    add_rows_into_zeros(d_recv, L.srv_q_rows, dq.reshape(-1, d).to(d_recv.dtype), unique=True)
    add_rows_into_zeros(d_recv, L.srv_k_rows, dk.reshape(-1, d).to(d_recv.dtype), L.srv_kv_rows_unique)
    add_rows_into_zeros(d_recv, L.srv_v_rows, dv.reshape(-1, d).to(d_recv.dtype), L.srv_kv_rows_unique)
    return d_recv
