"""All-gather of shard metadata over the CAD group, so every rank can plan the same step.

Each rank contributes its DP rank, the document lengths of its DP replica's micro-batch
and its local pieces (document, start, length) in local order. Document ids are made
unique over the group by offsetting each DP replica's documents. Two collectives: one for
the payload sizes, one for the (padded) payloads.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from parallel import comm
from parallel.cad.tasks import PieceTable


def payload(shard, dp_rank: int) -> np.ndarray:
    """What this rank contributes: its DP rank, its micro-batch's documents, its pieces."""
    cu = shard.cu_seqlens.detach().cpu().numpy().astype(np.int64)
    return np.concatenate([
        np.array([dp_rank, len(shard.doc_lens), len(shard.piece_docs)], dtype=np.int64),
        np.asarray(shard.doc_lens, dtype=np.int64),
        np.asarray(shard.piece_docs, dtype=np.int64),
        np.asarray(shard.piece_starts, dtype=np.int64),
        np.diff(cu)])


def gather_pieces(shard, dp_rank: int, group, device) -> PieceTable:
    """The group-wide piece table (ranks are ranks of `group`)."""
    return gather_payloads(payload(shard, dp_rank), group, device)


def gather_payloads(mine: np.ndarray, group, device) -> PieceTable:
    """The piece table from every rank's `payload` (collective over `group`, through tensors on
    `device`; a CPU group and device read nothing off a GPU)."""
    if group is None or dist.get_world_size(group) == 1:
        payloads = [mine]
    else:
        n = dist.get_world_size(group)
        size = torch.tensor([mine.size], dtype=torch.int64, device=device)
        sizes = [torch.empty_like(size) for _ in range(n)]
        comm.all_gather(sizes, size, group)
        sizes = [int(s.item()) for s in sizes]
        buf = torch.zeros(max(sizes), dtype=torch.int64, device=device)
        buf[:mine.size] = torch.from_numpy(mine).to(device)
        bufs = [torch.empty_like(buf) for _ in range(n)]
        comm.all_gather(bufs, buf, group)
        payloads = [b[:s].cpu().numpy() for b, s in zip(bufs, sizes)]
    return decode(payloads)


def decode(payloads: list[np.ndarray]) -> PieceTable:
    """Piece table from every rank's payload; checks that each DP replica agrees on its
    documents and that its ranks' pieces cover every token exactly once."""
    dp_docs: dict[int, np.ndarray] = {}
    rows = []
    for r, p in enumerate(payloads):
        dp, nd, npc = (int(x) for x in p[:3])
        docs = p[3:3 + nd]
        pd, ps, pl = (p[3 + nd + i * npc: 3 + nd + (i + 1) * npc] for i in range(3))
        if dp in dp_docs and not np.array_equal(dp_docs[dp], docs):
            raise ValueError(f"CAD: ranks of data-parallel rank {dp} disagree on the micro-batch's "
                             "doc_lens; every context-parallel rank must shard the same micro-batch")
        dp_docs.setdefault(dp, docs)
        rows.append((r, dp, pd, ps, pl))
    order = sorted(dp_docs)
    offset = dict(zip(order, np.cumsum([0] + [dp_docs[d].size for d in order[:-1]])))
    rank, doc, start, length, local = [], [], [], [], []
    for r, dp, pd, ps, pl in rows:
        rank.append(np.full(pd.size, r, dtype=np.int64))
        doc.append(pd + offset[dp])
        start.append(ps)
        length.append(pl)
        local.append(np.cumsum(pl) - pl)
    cat = lambda xs: np.concatenate(xs).astype(np.int64)  # noqa: E731
    table = PieceTable(cat(rank), cat(doc), cat(start), cat(length), cat(local))
    doc_len = np.concatenate([dp_docs[d] for d in order]).astype(np.int64)
    _check_tiling(table, doc_len)
    return table


def _check_tiling(t: PieceTable, doc_len: np.ndarray) -> None:
    """Pieces must tile every document exactly: no token missing, none owned twice."""
    o = np.lexsort((t.start, t.doc))
    d, s, e = t.doc[o], t.start[o], (t.start + t.length)[o]
    first = np.r_[True, d[1:] != d[:-1]]
    last = np.r_[first[1:], True]
    ok = (np.unique(d).size == np.count_nonzero(doc_len)
          and (s[first] == 0).all() and (e[last] == doc_len[d[last]]).all()
          and (s[~first] == e[np.nonzero(~first)[0] - 1]).all())
    if not ok:
        raise ValueError("CAD: the shards of a data-parallel replica do not hold every token of "
                         "its micro-batch exactly once; build every rank's shard with "
                         "build_shard(doc_lens, cp_rank, cp_size) over the same doc_lens")
