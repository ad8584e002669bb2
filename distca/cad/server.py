"""The attention server: one varlen kernel call over every task a rank received.

Tasks arrive as rows of the dispatch buffer. The server gathers them into kernel order
(segments of one document, queries [q_start, q_end) with keys [0, q_end)), runs ONE
`flash_attn_varlen_func` call whose causal mask is aligned bottom-right (a segment of m
queries and n >= m keys lets query i see keys 0..n-m+i, exactly a query shard with its
prefix), and keeps the kernel's graph for the backward (stateful server: o and the
log-sum-exp stay here; only dO travels in, dq/dk/dv travel back).
"""
from __future__ import annotations

import torch

from kernels.flash_attn import flash_attn_varlen_func
from distca.cad.dispatch import Layout


class ServerWork:
    def __init__(self, layout: Layout, hq: int, hkv: int, head_dim: int, softmax_scale: float):
        self.L, self.hq, self.hkv, self.d, self.scale = layout, hq, hkv, head_dim, softmax_scale
        self.inputs = None
        self.out = None

    def forward(self, recv: torch.Tensor, need_grad: bool) -> torch.Tensor:
        """recv [rows, D] -> o rows [queries * hq, D] in the order the queries arrived."""
        L, d = self.L, self.d
        q = recv.index_select(0, L.srv_q_rows).view(-1, self.hq, d)
        k = recv.index_select(0, L.srv_k_rows).view(-1, self.hkv, d)
        v = recv.index_select(0, L.srv_v_rows).view(-1, self.hkv, d)
        if q.shape[0] == 0:  # nothing to serve in this half
            return recv.new_zeros((0, d))
        if need_grad:
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        with torch.set_grad_enabled(need_grad):
            o = flash_attn_varlen_func(q, k, v, L.cu_seqlens_q, L.cu_seqlens_k, L.max_seqlen_q,
                                       L.max_seqlen_k, softmax_scale=self.scale, causal=True)
        if need_grad:
            self.inputs, self.out = (q, k, v), o
        return o.detach().index_select(0, L.srv_q_pos).reshape(-1, d)

    def backward(self, d_out_recv: torch.Tensor, recv_rows: int) -> torch.Tensor:
        """dO rows (arrival order) -> gradient of the received buffer [recv_rows, D]; copies of
        one key sent to several segments have their gradients summed here by index_add."""
        L, d = self.L, self.d
        d_recv = d_out_recv.new_zeros((recv_rows, d))
        if self.out is None:
            return d_recv
        d_o = d_out_recv.view(-1, self.hq, d).index_select(0, L.srv_q_slots)
        # grad of the scalar <o, dO> w.r.t. o is exactly dO; a scalar root spares every
        # process autograd's import of its symbolic-shape checker for explicit grad tensors
        with torch.enable_grad():  # autograd runs backward functions with grad mode off
            root = (self.out * d_o).sum()
        dq, dk, dv = torch.autograd.grad(root, self.inputs)
        self.inputs = self.out = None  # free the graph as soon as it is used
        d_recv.index_add_(0, L.srv_q_rows, dq.reshape(-1, d))
        d_recv.index_add_(0, L.srv_k_rows, dk.reshape(-1, d))
        d_recv.index_add_(0, L.srv_v_rows, dv.reshape(-1, d))
        return d_recv
