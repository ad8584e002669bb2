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

Layouts (N = cp_size; no document is ever padded, any N works, odd included):
- contiguous: the stream cut into N nearly equal runs; rank r holds run r.
- zigzag: the stream cut into 2N nearly equal chunks; rank r holds chunks r and 2N-1-r
  (in that local order). Causal work is balanced when one long document dominates, and
  linear-attention layers (LASP-2) can share it. Documents cross chunk boundaries freely.
- head_tail: *every document* cut into 2N chunks; rank r holds chunk r (head) and chunk
  2N-1-r (tail) of each document, documents in stream order, head before tail. Balances
  causal work for any mix of document lengths. A document's leftover tokens (its length
  mod 2N) are dealt round-robin, continuing from one document to the next, so rank token
  counts never differ by more than one however many documents there are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

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
    # Per-shard memo for derived plans (peer shards, ring/all-gather plans): the trainer
    # reuses one shard for every layer of a micro-batch, so plans are built once. Not an
    # __init__ argument, so copies (Shard(...), dataclasses.replace, .to) start empty.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key, build):
        """A value derived from this shard (a strategy's plan for it), built on first use: the
        trainer hands one shard to every layer of a micro-batch, so it is built once."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

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

    @property
    def piece_lens(self) -> list[int]:
        c = self.cu_seqlens.tolist()
        return [c[i + 1] - c[i] for i in range(len(c) - 1)]

    def local(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Select this rank's tokens (local order) from a tensor over the global stream."""
        return x.index_select(dim, self.index.to(x.device))

    def permute(self, *tensors: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs, labels, positions... over the global stream -> this rank's, all the same way."""
        return tuple(self.local(t, dim) for t in tensors)

    def to_global(self, x_local: torch.Tensor, fill: float = 0, dim: int = 0) -> torch.Tensor:
        """Place local values at their global stream positions; tokens of other ranks get `fill`."""
        shape = list(x_local.shape)
        shape[dim] = self.total_tokens
        out = x_local.new_full(shape, fill)
        return out.index_copy(dim, self.index.to(x_local.device), x_local)

    def peers(self) -> list["Shard"]:
        """The shards of all cp_size ranks for this stream and layout (this one at cp_rank)."""
        if "peers" not in self._cache:
            if self.layout not in LAYOUTS:
                raise ValueError(f"shard layout={self.layout!r} has no rule to rebuild the other "
                                 f"ranks' shards; build shards with build_shard(layout in {LAYOUTS})")
            idx = layout_indices(tuple(self.doc_lens), self.cp_size, self.layout)
            if not torch.equal(idx[self.cp_rank], self.index.cpu()):
                raise ValueError(f"shard of rank {self.cp_rank} does not match layout "
                                 f"{self.layout!r}; build it with build_shard(...) so every rank agrees")
            dev = self.index.device
            self._cache["peers"] = [
                self if r == self.cp_rank else
                shard_from_index(self.doc_lens, idx[r], self.layout, r, self.cp_size).to(dev)
                for r in range(self.cp_size)]
        return self._cache["peers"]

    def inverse_index(self) -> torch.Tensor:
        """[T_total] int64: the row of every global token in the concatenation of all ranks'
        local tensors (rank 0's rows first). Undoes the layout: x_global = cat_local[inv]."""
        if "inverse" not in self._cache:
            self._cache["inverse"] = stream_permutation(self.doc_lens, self.cp_size, self.layout)[1].to(
                self.index.device)
        return self._cache["inverse"]

    def gather_global(self, x_local: torch.Tensor, group=None) -> torch.Tensor:
        """All-gather every rank's local tensor (dim 0 in local order) over the CP group and
        return it in global stream order on every rank. Not differentiable: for labels,
        metrics, checks and debugging, not for the model's forward pass."""
        from parallel import comm  # local import: shards are built without distributed

        if self.cp_size == 1:
            return x_local.index_select(0, self.inverse_index().to(x_local.device))
        sizes = [p.num_tokens for p in self.peers()]
        pad = max(sizes)
        buf = x_local.new_zeros((pad,) + tuple(x_local.shape[1:]))
        buf[:x_local.shape[0]] = x_local
        out = [torch.empty_like(buf) for _ in sizes]
        comm.all_gather(out, buf.contiguous(), group)
        cat = torch.cat([o[:n] for o, n in zip(out, sizes)])
        return cat.index_select(0, self.inverse_index().to(cat.device))

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
    index = index.to(torch.int64).cpu()
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


def _ranges(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    lens = lens.to(torch.int64)
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64)
    offsets = torch.cumsum(lens, 0) - lens  # where each range begins in the output
    return torch.arange(total) + torch.repeat_interleave(starts.to(torch.int64) - offsets, lens)


def _head_tail_indices(doc_lens: tuple[int, ...], n: int) -> list[torch.Tensor]:
    lens = torch.tensor(doc_lens, dtype=torch.int64)
    doc_starts = torch.cumsum(lens, 0) - lens
    base, rem = lens // (2 * n), lens % (2 * n)
    # leftover tokens of document d go to ranks offset_d, offset_d + 1, ... (mod n): the first
    # round to heads, a second round (rem > n) to tails; offsets continue across documents
    offset = (torch.cumsum(rem, 0) - rem) % n
    ranks = torch.arange(n)
    slot = (ranks.unsqueeze(0) - offset.unsqueeze(1)) % n  # [D, n]: rank's turn in document d
    head = base.unsqueeze(1) + (slot < rem.unsqueeze(1)).long()          # [D, n]
    tail = base.unsqueeze(1) + (slot + n < rem.unsqueeze(1)).long()      # [D, n]
    # chunk order inside a document: heads of ranks 0..n-1, then tails of ranks n-1..0
    sizes = torch.cat([head, tail.flip(1)], 1)                           # [D, 2n]
    chunk_starts = doc_starts.unsqueeze(1) + torch.cumsum(sizes, 1) - sizes
    out = []
    for r in range(n):
        st = torch.stack([chunk_starts[:, r], chunk_starts[:, 2 * n - 1 - r]], 1).flatten()
        ln = torch.stack([head[:, r], tail[:, r]], 1).flatten()
        out.append(_ranges(st, ln))
    return out


@lru_cache(maxsize=16)
def layout_indices(doc_lens: tuple[int, ...], cp_size: int, layout: str) -> list[torch.Tensor]:
    """Global token indices of every rank, in each rank's local order (do not modify them)."""
    total = int(sum(doc_lens))
    n = cp_size
    if layout == "contiguous":
        return list(torch.tensor_split(torch.arange(total), n))
    if layout == "zigzag":
        chunks = torch.tensor_split(torch.arange(total), 2 * n)
        return [torch.cat([chunks[r], chunks[2 * n - 1 - r]]) for r in range(n)]
    if layout == "head_tail":
        return _head_tail_indices(doc_lens, n)
    raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")


def stream_permutation(doc_lens: list[int], cp_size: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inv) for the whole stream: concatenating every rank's local tensors (rank 0
    first) gives x_global[perm], and x_global = concatenated[inv]."""
    perm = torch.cat(layout_indices(tuple(doc_lens), cp_size, layout))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return perm, inv


def _check(doc_lens, cp_rank: int, cp_size: int, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")
    if not isinstance(cp_size, int) or cp_size < 1:
        raise ValueError(f"cp_size={cp_size!r} must be an int >= 1 (parallel.cp)")
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} must be in [0, cp_size={cp_size})")
    if any(int(n) < 0 for n in doc_lens):
        raise ValueError(f"doc_lens must be >= 0, got {min(doc_lens)}; drop empty or broken documents")


def empty_shard(layout: str = "contiguous", cp_rank: int = 0, cp_size: int = 1) -> Shard:
    """A shard of no tokens: what a CAD pool rank, or an idle pipeline stage's dummy pass
    (every CP rank of the stage alike), runs the layers on."""
    return shard_from_index([], torch.zeros(0, dtype=torch.int64), layout, cp_rank, cp_size)


def build_shard(doc_lens: list[int], cp_rank: int = 0, cp_size: int = 1,
                layout: str = "contiguous") -> Shard:
    """The shard of rank `cp_rank` out of `cp_size` for a stream with these documents."""
    doc_lens = [int(n) for n in doc_lens]
    _check(doc_lens, cp_rank, cp_size, layout)
    index = layout_indices(tuple(doc_lens), cp_size, layout)[cp_rank].clone()  # cache stays intact
    return shard_from_index(doc_lens, index, layout, cp_rank, cp_size)
