"""A plan that moves nothing runs in place: no exchange, no pooled buffer, no gathers.

When no query and no key crosses ranks in a plan (one process; or a step already balanced
within the tolerance with every document whole on its rank), every rank knows it from the
same global plan and the layer skips the all-to-alls altogether: each rank runs its own tasks
as one varlen kernel call straight on its q, k, v. Where the kernel's segments are the rank's
pieces in local order (the usual case: whole documents) there is not even a gather; otherwise
the rows are gathered into kernel order and the gradients scattered back.

`InPlaceAttention` is the whole call (the `none` / `halves` paths); the nano-batch phases use
`forward` / `backward` directly (parallel/cad/nanobatch.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distca_kernels.flash_attn import flash_attn_varlen_backward, flash_attn_varlen_forward
from distca_kernels.precision import accumulator_dtype
from parallel.cad.row_sums import add_rows_into_zeros, no_repeats
from parallel.cad.tasks import PieceTable, expand_ranges


@dataclass
class InPlace:
    """This rank's tasks as one kernel call over its own tokens."""
    tokens: int                      # local tokens (rows of q, k, v)
    q_tok: torch.Tensor | None       # local token of every kernel query; None: all, in order
    k_tok: torch.Tensor | None       # local token of every kernel key; None: all, in order
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    k_tok_unique: bool = False       # no key serves two segments: dk/dv copy instead of adding

    @property
    def num_server_queries(self) -> int:
        return self.tokens

    def to(self, device) -> "InPlace":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return InPlace(self.tokens, move(self.q_tok), move(self.k_tok), move(self.cu_seqlens_q),
                       move(self.cu_seqlens_k), self.max_seqlen_q, self.max_seqlen_k, self.k_tok_unique)


def moves_nothing(tr) -> bool:
    """No query and no key range of the plan (every rank's) crosses ranks."""
    return not bool((tr.q_src != tr.q_dst).any() or (tr.kv_src != tr.kv_dst).any())


def in_place_layout(tr, pieces: PieceTable, me: int, tokens: int) -> InPlace:
    """Rank `me`'s kernel call for a plan that moves nothing (`moves_nothing(tr)`): its query
    ranges in (document, position) order, merged where they meet, each with its document's
    key prefix, all indexed in local order."""
    qm = tr.q_dst == me
    doc, qs, qe, piece = tr.q_doc[qm], tr.q_start[qm], tr.q_end[qm], tr.q_piece[qm]
    o = np.lexsort((qs, doc))
    doc, qs, qe, piece = doc[o], qs[o], qe[o], piece[o]
    q_tok = expand_ranges(pieces.local[piece] + (qs - pieces.start[piece]), qe - qs)
    new = np.r_[True, (doc[1:] != doc[:-1]) | (qs[1:] != qe[:-1])] if doc.size else np.zeros(0, bool)
    first = np.nonzero(new)[0]
    seg_q = np.add.reduceat(qe - qs, first) if first.size else np.zeros(0, np.int64)
    seg_end = np.maximum.reduceat(qe, first) if first.size else np.zeros(0, np.int64)
    seg_doc = doc[first]
    # every document's keys on this rank in position order (the plan's key ranges, all local)
    km = tr.kv_dst == me
    kdoc, ks, ke, kpiece = tr.kv_doc[km], tr.kv_start[km], tr.kv_end[km], tr.kv_piece[km]
    o = np.lexsort((ks, kdoc))
    kdoc, ks, ke, kpiece = kdoc[o], ks[o], ke[o], kpiece[o]
    keys = expand_ranges(pieces.local[kpiece] + (ks - pieces.start[kpiece]), ke - ks)
    docs = np.unique(kdoc)
    base = (np.cumsum(ke - ks) - (ke - ks))[np.searchsorted(kdoc, docs)] if docs.size else docs
    seg_base = base[np.searchsorted(docs, seg_doc)] if seg_doc.size else seg_doc
    k_tok = keys[expand_ranges(seg_base, seg_end)] if seg_end.size else np.zeros(0, np.int64)
    ident = lambda a: a.size == tokens and bool((a == np.arange(tokens)).all())  # noqa: E731
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return InPlace(tokens, None if ident(q_tok) else t(q_tok), None if ident(k_tok) else t(k_tok),
                   t(np.r_[0, np.cumsum(seg_q)].astype(np.int32)),
                   t(np.r_[0, np.cumsum(seg_end)].astype(np.int32)),
                   int(seg_q.max()) if seg_q.size else 0, int(seg_end.max()) if seg_end.size else 0,
                   no_repeats(k_tok))


def forward(P: InPlace, q, k, v, scale: float):
    """(o [T, Hq, D] in local order, saved): the kernel on this rank's own tasks."""
    if P.tokens == 0:
        lse = q.new_zeros((q.shape[1], 0), dtype=accumulator_dtype(q.dtype))
        return q.new_zeros(q.shape), (q, k, v, q.new_zeros(q.shape), lse)
    qk = q if P.q_tok is None else q.index_select(0, P.q_tok)
    kk = k if P.k_tok is None else k.index_select(0, P.k_tok)
    vk = v if P.k_tok is None else v.index_select(0, P.k_tok)
    o, lse = flash_attn_varlen_forward(qk, kk, vk, P.cu_seqlens_q, P.cu_seqlens_k, P.max_seqlen_q,
                                       P.max_seqlen_k, softmax_scale=scale, causal=True)
    out = o if P.q_tok is None else o.new_empty(q.shape).index_copy_(0, P.q_tok, o)
    return out, (qk, kk, vk, o, lse)


def backward(P: InPlace, d_o, saved, scale: float):
    """dq, dk, dv in local order from the forward's `saved`."""
    qk, kk, vk, o, lse = saved
    if P.tokens == 0:
        return qk.new_zeros(qk.shape), kk.new_zeros(kk.shape), vk.new_zeros(vk.shape)
    d_o = d_o.contiguous() if P.q_tok is None else d_o.index_select(0, P.q_tok)
    dq, dk, dv = flash_attn_varlen_backward(d_o, qk, kk, vk, o, lse, P.cu_seqlens_q, P.cu_seqlens_k,
                                            P.max_seqlen_q, P.max_seqlen_k, softmax_scale=scale,
                                            causal=True)
    if P.q_tok is not None:
        dq = dq.new_empty((P.tokens,) + tuple(dq.shape[1:])).index_copy_(0, P.q_tok, dq)
    if P.k_tok is not None:  # a key may serve several segments: its gradients add up
        shape = (P.tokens,) + tuple(dk.shape[1:])
        dk = add_rows_into_zeros(dk.new_zeros(shape), P.k_tok, dk, P.k_tok_unique)
        dv = add_rows_into_zeros(dv.new_zeros(shape), P.k_tok, dv, P.k_tok_unique)
    return dq, dk, dv


class InPlaceAttention(torch.autograd.Function):
    """The whole core-attention call of a plan that moves nothing (what the backward needs
    goes through ctx.save_for_backward, so activation checkpointing frees and recomputes it)."""

    @staticmethod
    def forward(ctx, q, k, v, P: InPlace, scale: float):
        o, saved = forward(P, q, k, v, scale)
        ctx.save_for_backward(*saved)
        ctx.P, ctx.scale = P, scale
        return o

    @staticmethod
    def backward(ctx, d_o):
        dq, dk, dv = backward(ctx.P, d_o, ctx.saved_tensors, ctx.scale)
        return dq, dk, dv, None, None
