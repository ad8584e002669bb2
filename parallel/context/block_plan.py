"""Which queries of one token set attend to which keys of another: one varlen call per block.

Token sets are `Shard`s (a rank's tokens, or a Ulysses group's union of them), made of
*pieces*: runs of tokens consecutive in one document. Two pieces of the same document in
different sets never overlap (every token has one owner), so a key piece is either wholly
before a query piece (every query sees all of it), identical to it (the set attends to
itself: causal), or wholly after it (invisible). A query piece's segment of keys is the
concatenation of the wholly-visible key pieces followed, when the key set is the query set,
by the piece itself; flash attention's bottom-right causal alignment then lets query i
see all the earlier pieces plus its own piece up to i. Queries with no visible key in a
block are left out of the call, and a block no query can see is skipped entirely.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import torch

from parallel.context.shard import Shard, _ranges


@dataclass
class BlockPlan:
    q_rows: torch.Tensor | None  # rows of the query tensor in call order; None = all, in order
    k_rows: torch.Tensor | None  # rows of the key block in call order; None = all, in order
    cu_q: torch.Tensor           # [S+1] int32 query segments
    cu_k: torch.Tensor           # [S+1] int32 key segments
    max_q: int
    max_k: int
    causal: bool

    def to(self, device) -> "BlockPlan":
        mv = lambda t: None if t is None else t.to(device)
        return BlockPlan(mv(self.q_rows), mv(self.k_rows), self.cu_q.to(device),
                         self.cu_k.to(device), self.max_q, self.max_k, self.causal)


def _pieces_by_doc(s: Shard) -> dict[int, tuple[list[int], list[int], list[int], list[int]]]:
    """doc -> (starts, ends, first rows, lengths) of the set's pieces, sorted by start."""
    cu = s.cu_seqlens.tolist()
    by_doc: dict[int, list[tuple[int, int, int]]] = {}
    for i, (d, st) in enumerate(zip(s.piece_docs, s.piece_starts)):
        by_doc.setdefault(d, []).append((st, cu[i], cu[i + 1] - cu[i]))
    out = {}
    for d, ps in by_doc.items():
        ps.sort()
        out[d] = ([p[0] for p in ps], [p[0] + p[2] for p in ps], [p[1] for p in ps], [p[2] for p in ps])
    return out


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(torch.int32)


def plan_block(qset: Shard, kset: Shard, same: bool) -> BlockPlan | None:
    """The varlen call for queries of `qset` against keys of `kset` (None: nothing to do).

    `same` says kset is qset itself (the block on the diagonal, causal)."""
    kdocs = _pieces_by_doc(kset)
    cu = qset.cu_seqlens.tolist()
    q_starts, q_lens, k_starts, k_lens, seg_k = [], [], [], [], []
    for i, (d, s) in enumerate(zip(qset.piece_docs, qset.piece_starts)):
        row, m = cu[i], cu[i + 1] - cu[i]
        starts, ends, rows, lens = kdocs.get(d, ((), (), (), ()))
        j = bisect_right(ends, s)  # pieces ending at or before s are wholly visible
        if same:
            if j >= len(starts) or starts[j] != s or rows[j] != row:
                raise AssertionError("a token set's own piece is missing from its key pieces")
        elif j < len(starts) and starts[j] < s + m:
            raise AssertionError(f"token sets overlap in document {d}: a token has two owners")
        n_keys = sum(lens[:j]) + (m if same else 0)
        if n_keys == 0:
            continue
        q_starts.append(row)
        q_lens.append(m)
        k_starts.extend(rows[:j])
        k_lens.extend(lens[:j])
        if same:
            k_starts.append(row)
            k_lens.append(m)
        seg_k.append(n_keys)
    if not q_lens:
        return None
    q_all = sum(q_lens) == qset.num_tokens  # every query row in order: no gather needed
    k_rows = _ranges(torch.tensor(k_starts), torch.tensor(k_lens))
    k_all = k_rows.numel() == kset.num_tokens and torch.equal(k_rows, torch.arange(k_rows.numel()))
    return BlockPlan(
        q_rows=None if q_all else _ranges(torch.tensor(q_starts), torch.tensor(q_lens)),
        k_rows=None if k_all else k_rows,
        cu_q=_cu(q_lens), cu_k=_cu(seg_k), max_q=max(q_lens), max_k=max(seg_k), causal=same)
