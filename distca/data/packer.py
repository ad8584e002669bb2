"""Packs documents into samples of exactly `seq_len` tokens.

Documents are taken in a per-epoch shuffled order (a permutation drawn from `(seed, epoch)`),
placed back to back, and a document that does not fit is split: its first part ends this
sample and the rest starts the next one (a document longer than `seq_len` spans several
samples). Each piece is reported as its own document in `Sample.doc_lens`, because the model
restarts positions and attention at every document boundary inside a sample. No padding is
ever needed, and the stream never ends: after the last document, the next epoch begins.

The position in that stream is three integers (epoch, index into the epoch's order, tokens
already taken from the current document). `state_dict()` returns them, and a packer
restored with `load_state_dict()` yields exactly the samples the original would have yielded
next. Every rank can build the same packer and take its own share of the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from .documents import Documents, document_length

_STATE_VERSION = 1


@dataclass
class Sample:
    tokens: torch.Tensor  # int64 [seq_len]
    doc_lens: list[int]  # lengths of the document pieces in order; sum == seq_len


class Packer:
    def __init__(self, documents: Documents, seq_len: int, seed: int, shuffle: bool = True) -> None:
        if seq_len < 1:
            raise ValueError(f"data.seq_len: must be positive, got {seq_len}")
        if len(documents) == 0:
            raise ValueError("data: the corpus has no documents")
        self.documents = documents
        self.seq_len = seq_len
        self.seed = int(seed) & ((1 << 64) - 1)  # numpy seeds must be non-negative
        self.shuffle = shuffle
        self.num_documents = len(documents)
        self.epoch = 0
        self.position = 0  # index into this epoch's order
        self.offset = 0  # tokens of the current document already packed
        self.samples_yielded = 0
        self._order_epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None
        self._current: Optional[np.ndarray] = None  # tokens of the current document

    # -- order -----------------------------------------------------------------------------
    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.num_documents)
            else:
                self._order = np.arange(self.num_documents)
            self._order_epoch = self.epoch
        return self._order

    def _document_index(self) -> int:
        return int(self._epoch_order()[self.position])

    def _advance_document(self) -> None:
        self.position += 1
        self.offset = 0
        self._current = None
        if self.position == self.num_documents:
            self.epoch += 1
            self.position = 0

    # -- samples ---------------------------------------------------------------------------
    def next_sample(self) -> Sample:
        out = np.empty(self.seq_len, dtype=np.int64)
        doc_lens: list[int] = []
        filled = 0
        while filled < self.seq_len:
            if self._current is None:
                self._current = self.documents.tokens(self._document_index())
                if len(self._current) == 0:  # sources guarantee EOS; guard the loop anyway
                    raise ValueError(f"document {self._document_index()} is empty")
            take = min(len(self._current) - self.offset, self.seq_len - filled)
            out[filled:filled + take] = self._current[self.offset:self.offset + take]
            doc_lens.append(take)
            filled += take
            self.offset += take
            if self.offset == len(self._current):
                self._advance_document()
        self.samples_yielded += 1
        return Sample(tokens=torch.from_numpy(out), doc_lens=doc_lens)

    def __iter__(self) -> Iterator[Sample]:
        while True:
            yield self.next_sample()

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "num_documents": self.num_documents,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
            "offset": self.offset,
            "samples_yielded": self.samples_yielded,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data: packer state version {state.get('version')!r} is not "
                             f"{_STATE_VERSION}; the checkpoint was written by another distca version")
        for key in ("seed", "num_documents", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"data: the checkpoint's packer has {key}={state[key]!r} but this run has "
                    f"{getattr(self, key)!r}. Fix: resume with the same train.seed and data config "
                    f"(source, paths, max_documents) as the run that wrote the checkpoint")
        epoch, position, offset = int(state["epoch"]), int(state["position"]), int(state["offset"])
        if epoch < 0 or not 0 <= position < self.num_documents or offset < 0:
            raise ValueError(f"data: invalid packer position {epoch}/{position}/{offset}")
        self.epoch, self.position, self.offset = epoch, position, offset
        self.samples_yielded = int(state["samples_yielded"])
        self._current = None
        if offset:
            # Check against the document now at this position: a changed corpus would
            # otherwise silently resume mid-way through a different document.
            length = document_length(self.documents, self._document_index())
            if offset >= length:
                raise ValueError(f"data: packer offset {offset} is past the end of document "
                                 f"{self._document_index()} ({length} tokens); the corpus changed "
                                 f"since the checkpoint. Fix: resume with the same data")
