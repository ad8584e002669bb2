"""The shard: which tokens of a packed micro-batch this context-parallel rank owns.

A micro-batch is one flat token stream (samples concatenated; documents never cross a
sample boundary), described by its document lengths. The shard is built once at the data
boundary; it owns every permutation of the sequence dimension. Everything downstream
(RoPE positions, labels, attention strategies) reads it instead of re-deriving layout.

Local tokens are kept in *local order*: the order of `index`. They form `pieces`: maximal
runs of local tokens that are consecutive in one document. `cu_seqlens` describes the
pieces in local order; `piece_docs`/`piece_starts` say which document each piece is in
and at which offset of that document it begins (so a strategy knows the key prefix a
piece's queries need: document tokens 0 .. piece_start + len - 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LAYOUTS = ("contiguous", "zigzag", "head_tail")


@dataclass
class Shard:
    layout: str
    cp_rank: int
    cp_size: int
    doc_lens: list[int]          # documents of the whole (global) micro-batch stream, in order
    index: torch.Tensor          # [T_local] int64: global stream index of each local token
    position_ids: torch.Tensor   # [T_local] int64: position inside its document (RoPE)
    doc_ids: torch.Tensor        # [T_local] int64: document number (into doc_lens)
    cu_seqlens: torch.Tensor     # [P+1] int32: local pieces, in local order
    piece_docs: list[int]        # [P] document of each piece
    piece_starts: list[int]      # [P] offset inside its document of each piece's first token

    @property
    def num_tokens(self) -> int:
        return int(self.index.numel())

    @property
    def total_tokens(self) -> int:
        return int(sum(self.doc_lens))

    @property
    def max_piece_len(self) -> int:
        c = self.cu_seqlens
        return int((c[1:] - c[:-1]).max().item()) if c.numel() > 1 else 0

    def local(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Select this rank's tokens (local order) from a tensor over the global stream."""
        return x.index_select(dim, self.index.to(x.device))

    def to(self, device) -> "Shard":
        return Shard(self.layout, self.cp_rank, self.cp_size, self.doc_lens,
                     self.index.to(device), self.position_ids.to(device), self.doc_ids.to(device),
                     self.cu_seqlens.to(device), self.piece_docs, self.piece_starts)


def doc_tables(doc_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(doc id, position inside the document) for every token of the global stream."""
    lens = torch.tensor(doc_lens, dtype=torch.int64)
    doc_ids = torch.repeat_interleave(torch.arange(len(doc_lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(int(lens.sum())) - starts[doc_ids]
    return doc_ids, pos


def shard_from_index(doc_lens: list[int], index: torch.Tensor, layout: str,
                     cp_rank: int, cp_size: int) -> Shard:
    """Derive positions, documents and pieces from the global indices a rank owns."""
    doc_ids_all, pos_all = doc_tables(doc_lens)
    index = index.to(torch.int64)
    doc_ids, pos = doc_ids_all[index], pos_all[index]
    n = index.numel()
    if n:
        # a new piece starts where the next local token is not the next token of the same doc
        brk = torch.ones(n, dtype=torch.bool)
        brk[1:] = (index[1:] != index[:-1] + 1) | (doc_ids[1:] != doc_ids[:-1])
        starts = torch.nonzero(brk).flatten()
        cu = torch.cat([starts, torch.tensor([n])]).to(torch.int32)
        piece_docs = doc_ids[starts].tolist()
        piece_starts = pos[starts].tolist()
    else:
        cu = torch.zeros(1, dtype=torch.int32)
        piece_docs, piece_starts = [], []
    return Shard(layout, cp_rank, cp_size, list(doc_lens), index, pos, doc_ids, cu,
                 piece_docs, piece_starts)


def build_shard(doc_lens: list[int], cp_rank: int = 0, cp_size: int = 1,
                layout: str = "contiguous") -> Shard:
    """The shard of rank `cp_rank` out of `cp_size` for a stream with these documents."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")
    total = int(sum(doc_lens))
    if layout == "contiguous":
        index = torch.tensor_split(torch.arange(total), cp_size)[cp_rank]
    else:
        raise ValueError(f"layout={layout!r} is not implemented yet; use layout='contiguous'")
    return shard_from_index(doc_lens, index, layout, cp_rank, cp_size)
