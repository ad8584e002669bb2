"""One source's document stream: documents in a per-epoch shuffled order, back to back,
taken by token count from metadata alone.

`take(n)` returns the next n tokens of the stream as *pieces* (document, start, length),
reading only document lengths, never tokens: every rank runs it and agrees on the step,
and each rank then reads the tokens of its own pieces only. A document that does not fit is
split: its first part ends this take, the rest starts the next. The stream never ends: after
the last document of an epoch the next epoch begins, in a new order drawn from (seed, epoch).

The position is three integers (epoch, index into the epoch's order, tokens already taken
from the current document): `state_dict()` / `load_state_dict()` resume it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .documents import Documents, document_length, document_lengths

STATE_VERSION = 1


@dataclass
class Pieces:
    """Token ranges of documents: piece i is tokens [start[i], start[i] + length[i]) of
    document doc[i] of source src[i]. Documents restart attention and positions at each piece."""
    src: np.ndarray     # int64
    doc: np.ndarray     # int64
    start: np.ndarray   # int64
    length: np.ndarray  # int64

    @staticmethod
    def empty() -> "Pieces":
        z = np.zeros(0, np.int64)
        return Pieces(z, z, z, z)

    @staticmethod
    def concat(parts: list["Pieces"]) -> "Pieces":
        if not parts:
            return Pieces.empty()
        return Pieces(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("src", "doc", "start", "length")))

    def __len__(self) -> int:
        return int(self.length.size)

    def select(self, which) -> "Pieces":
        return Pieces(self.src[which], self.doc[which], self.start[which], self.length[which])

    @property
    def tokens(self) -> int:
        return int(self.length.sum())


class DocumentStream:
    def __init__(self, documents: Documents, seed: int, shuffle: bool = True, src: int = 0,
                 name: str = "data") -> None:
        if len(documents) == 0:
            raise ValueError(f"data: the source {name!r} has no documents. Fix: point its paths at "
                             "non-empty files")
        self.documents = documents
        self.seed = int(seed) & ((1 << 64) - 1)  # numpy seeds must be non-negative
        self.shuffle = shuffle
        self.src = src
        self.name = name
        self.num_documents = len(documents)
        self.epoch = 0
        self.position = 0  # index into this epoch's order
        self.offset = 0    # tokens of the current document already taken
        self._order_epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None
        self._mean = 1024.0  # running mean document length: how many lengths to look up at once
        self._seen = [0, 0]  # documents, tokens whose lengths were looked up
        self._epoch_tokens, self._whole_epoch = 0, True  # an epoch of empty documents is an error

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                # source 0 keeps the single-source order of earlier releases; other sources of a
                # mix draw their own
                key = [self.seed, self.epoch] + ([0x5EC, self.src] if self.src else [])
                self._order = np.random.default_rng(key).permutation(self.num_documents)
            else:
                self._order = np.arange(self.num_documents)
            self._order_epoch = self.epoch
        return self._order

    def current_document(self) -> int:
        return int(self._epoch_order()[self.position])

    def _lengths(self, indices: np.ndarray) -> np.ndarray:
        lens = document_lengths(self.documents, indices)
        self._seen[0] += lens.size
        self._seen[1] += int(lens.sum())
        self._mean = max(1.0, self._seen[1] / self._seen[0])
        return lens

    def _next_epoch(self) -> None:
        if self._epoch_tokens == 0 and self._whole_epoch:
            raise ValueError(f"data: the source {self.name!r} holds no tokens (every document is empty). "
                             "Fix: point its paths at non-empty data")
        self.epoch += 1
        self.position = 0
        self._epoch_tokens, self._whole_epoch = 0, True

    def take(self, n: int) -> Pieces:
        """The next `n` tokens of the stream, as pieces of documents (lengths > 0)."""
        docs, starts, lens = [], [], []
        need = int(n)
        while need > 0:
            order = self._epoch_order()
            # documents to look up: enough on average (a few % more), never past the epoch; a
            # source that must tokenize to know lengths looks up little beyond what it needs
            k = min(self.num_documents - self.position, max(1, math.ceil((need + self.offset) / self._mean * 1.05)))
            idx = order[self.position:self.position + k].astype(np.int64)
            full = self._lengths(idx)
            avail = full.copy()
            avail[0] -= self.offset
            first = np.zeros(k, np.int64)
            first[0] = self.offset
            cum = np.cumsum(avail)
            if cum[-1] < need:  # every looked-up document fits whole
                docs.append(idx)
                starts.append(first)
                lens.append(avail)
                need -= int(cum[-1])
                self._epoch_tokens += int(cum[-1])
                self.position += k
                self.offset = 0
                if self.position == self.num_documents:
                    self._next_epoch()
                continue
            j = int(np.searchsorted(cum, need))  # the first document that reaches `need`
            cut = avail[:j + 1].copy()
            cut[j] = need - (int(cum[j - 1]) if j else 0)
            docs.append(idx[:j + 1])
            starts.append(first[:j + 1])
            lens.append(cut)
            self._epoch_tokens += need
            taken = int(cut[j]) + int(first[j])
            if taken == int(full[j]):
                self.position += j + 1
                self.offset = 0
                if self.position == self.num_documents:
                    self._next_epoch()
            else:
                self.position += j
                self.offset = taken
            need = 0
        out = Pieces(np.full(sum(len(d) for d in docs), self.src, np.int64), np.concatenate(docs),
                     np.concatenate(starts), np.concatenate(lens).astype(np.int64))
        return out.select(out.length > 0)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "seed": self.seed, "num_documents": self.num_documents,
                "shuffle": self.shuffle, "epoch": self.epoch, "position": self.position, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data: packer state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}; the checkpoint was written by another distca version")
        for key in ("seed", "num_documents", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"data: the checkpoint's data stream {self.name!r} has {key}={state[key]!r} but this run "
                    f"has {getattr(self, key)!r}. Fix: resume with the same train.seed and data config "
                    f"(source, paths, max_documents) as the run that wrote the checkpoint")
        epoch, position, offset = int(state["epoch"]), int(state["position"]), int(state["offset"])
        if epoch < 0 or not 0 <= position < self.num_documents or offset < 0:
            raise ValueError(f"data: invalid packer position {epoch}/{position}/{offset}")
        self.epoch, self.position, self.offset = epoch, position, offset
        self._epoch_tokens, self._whole_epoch = 0, position == 0 and offset == 0
        if offset:
            # Check against the document now at this position: a changed corpus would
            # otherwise silently resume mid-way through a different document.
            length = document_length(self.documents, self.current_document())
            if offset >= length:
                raise ValueError(f"data: packer offset {offset} is past the end of document "
                                 f"{self.current_document()} ({length} tokens); the corpus changed "
                                 f"since the checkpoint. Fix: resume with the same data")
