"""Who sends which tokens where: the all-to-all layouts of a plan, and the all-to-all itself.

Per direction there is ONE `all_to_all_single` with variable splits (gloo on CPU, NCCL on
GPU). Rows of every buffer are D wide (one head of one token), so q (Hq heads) and k/v
(Hkv heads) share a buffer and a single gather builds it:

  dispatch  origin -> server: per destination [q rows | k rows | v rows]
  return    server -> origin: o rows (forward), or [dq | dk | dv] rows (backward, same
            layout as the dispatch, reversed)
  dO        origin -> server: the q rows' layout

A key/value token goes to a server once per step, whatever number of that server's tasks
need it, in either ping-pong half: the server replicates it into each kernel segment
locally, a later half reads the keys an earlier half received (its layout indexes the
concatenation [earlier received rows; own received rows]), and the gradients of all copies
are summed on the server before the return (the later half's share of an earlier half's
keys is added into that half's return), and over servers at the origin.
Every rank computes every layout from the same global plan; only its own slices are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from parallel import comm
from parallel.cad.planner import segment_order
from parallel.cad.row_sums import no_repeats
from parallel.cad.tasks import CostModel, PieceTable, TaskTable, expand_ranges


@dataclass
class Transfers:
    """Token ranges moving between ranks, in the canonical order both ends agree on."""
    q_src: np.ndarray
    q_dst: np.ndarray
    q_piece: np.ndarray
    q_doc: np.ndarray
    q_start: np.ndarray
    q_end: np.ndarray
    kv_src: np.ndarray
    kv_dst: np.ndarray
    kv_piece: np.ndarray
    kv_doc: np.ndarray
    kv_start: np.ndarray
    kv_end: np.ndarray
    # the key prefix each server holds per document after this transfer (with earlier halves')
    held_srv: np.ndarray = None
    held_doc: np.ndarray = None
    held_end: np.ndarray = None

    def remote_bytes(self, cm: CostModel, resend: bool = False) -> int:
        """Bytes crossing between ranks in one layer's forward and backward."""
        q = int(((self.q_end - self.q_start)[self.q_src != self.q_dst]).sum())
        kv = int(((self.kv_end - self.kv_start)[self.kv_src != self.kv_dst]).sum())
        total = q * cm.bytes_per_q_token + kv * cm.bytes_per_kv_token
        if resend:
            total += q * cm.resend_bytes_per_q_token + kv * cm.resend_bytes_per_kv_token
        return total


def _held_begin(held: Transfers | None, srv: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """How much of each (server, document)'s key prefix an earlier half already sent."""
    if held is None or held.held_srv is None or held.held_srv.size == 0 or srv.size == 0:
        return np.zeros(srv.size, dtype=np.int64)
    key = held.held_srv * (1 << 40) + held.held_doc
    want = srv * (1 << 40) + doc
    order = np.argsort(key)
    at = np.clip(np.searchsorted(key[order], want), 0, key.size - 1)
    hit = key[order][at] == want
    return np.where(hit, held.held_end[order][at], 0)


def transfers(parts: TaskTable, server: np.ndarray, pieces: PieceTable,
              held: Transfers | None = None) -> Transfers:
    """q ranges: each part's queries from their owner to its server. kv ranges: for every
    (server, document) the prefix up to the furthest query there, from whichever ranks own it,
    less what an earlier ping-pong half (`held`) already sent to that server."""
    o = np.lexsort((parts.q_start, parts.doc, parts.owner, server))
    q = (parts.owner[o], server[o], parts.piece[o], parts.doc[o], parts.q_start[o], parts.q_end[o])
    if len(parts):
        o2 = np.lexsort((parts.doc, server))
        sd_srv, sd_doc, sd_end = server[o2], parts.doc[o2], parts.q_end[o2]
        new = np.r_[True, (sd_srv[1:] != sd_srv[:-1]) | (sd_doc[1:] != sd_doc[:-1])]
        first = np.nonzero(new)[0]
        need_srv, need_doc = sd_srv[first], sd_doc[first]
        need_end = np.maximum.reduceat(sd_end, first)
    else:
        need_srv = need_doc = need_end = np.zeros(0, dtype=np.int64)
    need_begin = _held_begin(held, need_srv, need_doc)
    po = np.lexsort((pieces.start, pieces.doc))
    pdoc = pieces.doc[po]
    lo = np.searchsorted(pdoc, need_doc, side="left")
    hi = np.searchsorted(pdoc, need_doc, side="right")
    pair = np.repeat(np.arange(need_doc.size), hi - lo)
    pidx = po[expand_ranges(lo, hi - lo)]
    ks = np.maximum(pieces.start[pidx], need_begin[pair])
    ke = np.minimum(pieces.start[pidx] + pieces.length[pidx], need_end[pair])
    keep = ke > ks
    pair, pidx, ks, ke = pair[keep], pidx[keep], ks[keep], ke[keep]
    src, dst, doc = pieces.rank[pidx], need_srv[pair], need_doc[pair]
    o3 = np.lexsort((ks, doc, src, dst))
    # what each server holds from now on: this half's prefixes and any longer earlier one
    h_srv, h_doc, h_end = need_srv, need_doc, np.maximum(need_end, need_begin)
    if held is not None and held.held_srv is not None and held.held_srv.size:
        h_srv = np.r_[held.held_srv, h_srv]
        h_doc = np.r_[held.held_doc, h_doc]
        h_end = np.r_[held.held_end, h_end]
        o4 = np.lexsort((-h_end, h_doc, h_srv))
        h_srv, h_doc, h_end = h_srv[o4], h_doc[o4], h_end[o4]
        first = np.r_[True, (h_srv[1:] != h_srv[:-1]) | (h_doc[1:] != h_doc[:-1])]
        h_srv, h_doc, h_end = h_srv[first], h_doc[first], h_end[first]
    return Transfers(*q, src[o3], dst[o3], pidx[o3], doc[o3], ks[o3], ke[o3], h_srv, h_doc, h_end)


def _tokens(pieces: PieceTable, piece, start, end) -> np.ndarray:
    """Local token indices (in the owner's local order) of document ranges inside pieces."""
    return expand_ranges(pieces.local[piece] + (start - pieces.start[piece]), end - start)


def _heads(base: np.ndarray, heads: int) -> np.ndarray:
    """Row indices of every head of tokens whose first head row is `base`."""
    return (base[:, None] + np.arange(heads)[None, :]).reshape(-1)


@dataclass
class Layout:
    """This rank's side of one plan (or one ping-pong half), for given head counts.

    Torch index tensors, built once per micro-batch and reused by every layer."""
    send_rows: torch.Tensor      # rows of the [q; k; v] pool, in send order
    send_splits: list[int]       # rows per destination
    recv_splits: list[int]       # rows per source
    q_tok: torch.Tensor          # local tokens whose queries leave, in send order
    q_send_splits: list[int]     # q rows per destination (o return and dO dispatch)
    q_recv_splits: list[int]     # q rows per source
    srv_q_rows: torch.Tensor     # recv rows of the server's queries, in kernel order
    srv_k_rows: torch.Tensor     # recv rows of keys, replicated per kernel segment
    srv_v_rows: torch.Tensor
    srv_q_slots: torch.Tensor    # recv q slot (token) of every kernel query
    srv_q_pos: torch.Tensor      # kernel position of every recv q slot (inverse of the above)
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    num_segments: int
    # > 0: the server indexes [earlier halves' received rows; this half's] (keys sent once per
    # step) and this many leading rows are the earlier halves'
    prior_rows: int = 0
    prior_rows_total: int = 0    # rows all earlier halves received (whether used or not)
    # every key range this server holds after this half, in the coordinates of all halves'
    # received rows concatenated: (doc, start, length, k row base, v row base)
    key_ranges: tuple = ()
    recv_rows: int = 0
    # no pool row sent twice (each key to one server): the backward copies instead of adding
    send_rows_unique: bool = False
    # no key row replicated into two kernel segments: the server's dk/dv copy instead of adding
    srv_kv_rows_unique: bool = False

    @property
    def num_server_queries(self) -> int:
        return int(self.srv_q_slots.numel())

    def to(self, device) -> "Layout":
        """The same layout with its index tensors on `device` (plans are built on the CPU,
        possibly ahead of time in another thread, and moved once when first used)."""
        return Layout(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                         for f in fields(self)})


def build_layout(tr: Transfers, pieces: PieceTable, me: int, num_ranks: int,
                 local_tokens: int, hq: int, hkv: int, device, prior: Layout | None = None) -> Layout:
    """Index tensors for rank `me`: what it sends as origin, what it runs as server. `prior`:
    the layout of the previous ping-pong half, whose received keys this half may read."""
    T = local_tokens
    # ---- origin side: per destination [q | k | v] -------------------------------------
    qm = tr.q_src == me
    q_len = tr.q_end[qm] - tr.q_start[qm]
    q_tok = _tokens(pieces, tr.q_piece[qm], tr.q_start[qm], tr.q_end[qm])
    nq_dst = np.bincount(tr.q_dst[qm], q_len, minlength=num_ranks).astype(np.int64)
    km = tr.kv_src == me
    kv_len = tr.kv_end[km] - tr.kv_start[km]
    kv_tok = _tokens(pieces, tr.kv_piece[km], tr.kv_start[km], tr.kv_end[km])
    nkv_dst = np.bincount(tr.kv_dst[km], kv_len, minlength=num_ranks).astype(np.int64)
    blk = nq_dst * hq + 2 * nkv_dst * hkv
    blk_start = np.cumsum(blk) - blk
    q_dst_tok = np.repeat(np.arange(num_ranks), nq_dst)
    q_j = np.arange(q_tok.size) - np.repeat(np.cumsum(nq_dst) - nq_dst, nq_dst)
    kv_dst_tok = np.repeat(np.arange(num_ranks), nkv_dst)
    kv_j = np.arange(kv_tok.size) - np.repeat(np.cumsum(nkv_dst) - nkv_dst, nkv_dst)
    send_rows = np.empty(int(blk.sum()), dtype=np.int64)
    kbase = blk_start[kv_dst_tok] + nq_dst[kv_dst_tok] * hq + kv_j * hkv
    send_rows[_heads(blk_start[q_dst_tok] + q_j * hq, hq)] = _heads(q_tok * hq, hq)
    send_rows[_heads(kbase, hkv)] = _heads(T * hq + kv_tok * hkv, hkv)
    send_rows[_heads(kbase + nkv_dst[kv_dst_tok] * hkv, hkv)] = _heads(T * (hq + hkv) + kv_tok * hkv, hkv)

    # ---- server side -------------------------------------------------------------------
    rq = tr.q_dst == me
    r_src, r_doc = tr.q_src[rq], tr.q_doc[rq]
    r_start, r_end = tr.q_start[rq], tr.q_end[rq]
    nq_src = np.bincount(r_src, r_end - r_start, minlength=num_ranks).astype(np.int64)
    rk = tr.kv_dst == me
    k_src, k_doc = tr.kv_src[rk], tr.kv_doc[rk]
    k_start, k_end = tr.kv_start[rk], tr.kv_end[rk]
    nkv_src = np.bincount(k_src, k_end - k_start, minlength=num_ranks).astype(np.int64)
    rblk = nq_src * hq + 2 * nkv_src * hkv
    rblk_start = np.cumsum(rblk) - rblk
    # recv q slots (tokens in receive order) of each part, then kernel order (doc, position)
    part_len = r_end - r_start
    part_slot = np.cumsum(part_len) - part_len
    part_j = part_slot - (np.cumsum(nq_src) - nq_src)[r_src]  # index inside its source's q rows
    korder, new = segment_order(TaskTable(np.zeros_like(r_src), r_src, r_doc, r_start, r_end),
                                np.zeros_like(r_src))
    slots = expand_ranges(part_slot[korder], part_len[korder])
    earlier = prior.recv_rows + prior.prior_rows_total if prior is not None else 0
    q_base_of_slot = np.repeat(rblk_start[r_src] + part_j * hq, part_len) + \
        (np.arange(slots.size) - np.repeat(part_slot, part_len)) * hq + earlier
    srv_q_rows = _heads(q_base_of_slot[slots], hq)
    # kernel segments: runs of parts of one document that meet end to start
    seg_id = np.cumsum(new) - 1
    seg_q = np.bincount(seg_id, part_len[korder]).astype(np.int64) if slots.size else np.zeros(0, np.int64)
    seg_last = np.r_[new[1:], True] if new.size else new
    seg_doc, seg_kv = r_doc[korder][seg_last], r_end[korder][seg_last]
    # keys per document in position order: every (src, doc) range, sorted by (doc, start)
    kslot_start = np.cumsum(k_end - k_start) - (k_end - k_start)
    k_j = kslot_start - (np.cumsum(nkv_src) - nkv_src)[k_src]
    r_kbase = rblk_start[k_src] + nq_src[k_src] * hq + k_j * hkv + earlier
    ranges = (k_doc, k_start, k_end - k_start, r_kbase, r_kbase + nkv_src[k_src] * hkv)
    if prior is not None and len(prior.key_ranges):
        ranges = tuple(np.r_[a, b] for a, b in zip(prior.key_ranges, ranges))
    a_doc, a_start, a_len, a_kbase, a_vbase = ranges
    ko = np.lexsort((a_start, a_doc))
    rlen = a_len[ko]
    tok_in_range = np.arange(int(rlen.sum())) - np.repeat(np.cumsum(rlen) - rlen, rlen)
    k_row_base = np.repeat(a_kbase[ko], rlen) + tok_in_range * hkv
    v_row_base = np.repeat(a_vbase[ko], rlen) + tok_in_range * hkv
    doc_keys = np.unique(a_doc)
    doc_first = np.searchsorted(a_doc[ko], doc_keys, side="left")
    doc_base = (np.cumsum(rlen) - rlen)[doc_first]  # where each document's key 0 sits
    seg_base = doc_base[np.searchsorted(doc_keys, seg_doc)] if seg_doc.size else seg_doc
    seg_tok = expand_ranges(seg_base, seg_kv)
    srv_k_rows = _heads(k_row_base[seg_tok], hkv)
    srv_v_rows = _heads(v_row_base[seg_tok], hkv)
    uses_prior = earlier > 0 and bool((srv_k_rows < earlier).any())
    if earlier and not uses_prior:  # nothing from earlier halves: index this half's rows alone
        srv_q_rows, srv_k_rows, srv_v_rows = srv_q_rows - earlier, srv_k_rows - earlier, srv_v_rows - earlier
    q_pos = np.empty(slots.size, dtype=np.int64)
    q_pos[slots] = np.arange(slots.size)
    cu_q = np.r_[0, np.cumsum(seg_q)].astype(np.int32)
    cu_k = np.r_[0, np.cumsum(seg_kv)].astype(np.int32)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Layout(
        send_rows=t(send_rows), send_splits=blk.tolist(), recv_splits=rblk.tolist(),
        q_tok=t(q_tok), q_send_splits=(nq_dst * hq).tolist(), q_recv_splits=(nq_src * hq).tolist(),
        srv_q_rows=t(srv_q_rows), srv_k_rows=t(srv_k_rows), srv_v_rows=t(srv_v_rows),
        srv_q_slots=t(slots), srv_q_pos=t(q_pos), cu_seqlens_q=t(cu_q), cu_seqlens_k=t(cu_k),
        max_seqlen_q=int(seg_q.max()) if seg_q.size else 0,
        max_seqlen_k=int(seg_kv.max()) if seg_kv.size else 0, num_segments=int(seg_q.size),
        prior_rows=earlier if uses_prior else 0, key_ranges=ranges, recv_rows=int(rblk.sum()),
        prior_rows_total=earlier, send_rows_unique=no_repeats(q_tok) and no_repeats(kv_tok),
        srv_kv_rows_unique=no_repeats(seg_tok))


class Exchange:
    """One all-to-all in flight (or done). `wait()` returns the received buffer.

    CAD's autograd functions build every exchange through the class their strategy was given
    (`CADAttention(..., exchange=...)`, this one by default), so a measuring tool can hand in
    another with the same interface (benchmarks/multigpu_overlap.py cuts the payloads) without
    the product carrying a switch for it.

    On GPU an async NCCL collective runs on the process group's own stream, so work issued
    on the compute stream after `start` overlaps it; `wait` makes the compute stream wait."""

    def __init__(self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int],
                 group, async_op: bool):
        self.recv = send.new_empty((sum(recv_splits),) + tuple(send.shape[1:]))
        self.work = None
        if group is None or dist.get_world_size(group) == 1:
            self.recv = send
            return
        self._send = send  # keep alive until the collective finishes
        self.work = comm.all_to_all_single(self.recv, send, recv_splits, send_splits, group,
                                           async_op=async_op)

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
            self._send = None
        return self.recv
