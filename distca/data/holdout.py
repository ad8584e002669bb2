"""The held-out split (`data.holdout`): documents training never sees, for evaluation.

File and stdlib sources keep the last ceil(holdout x N) documents of the corpus (in its
canonical order, after `data.max_documents`) out of training: a contiguous tail, so adding
files at the end of a corpus does not move documents between the two sides mid-corpus, and
the split needs no index. Synthetic data does not use this: its held-out documents are
another stream of the same language (distca/data/synthetic.py, `stream=1`).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .documents import Documents, document_length, document_lengths, read_range

SPLITS = ("train", "eval")


class DocumentRange:
    """Documents [start, stop) of another collection, re-indexed from 0."""

    def __init__(self, documents: Documents, start: int, stop: int) -> None:
        self.documents, self.start, self.count = documents, start, stop - start

    def __len__(self) -> int:
        return self.count

    def tokens(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.documents.tokens(self.start + index)

    def read(self, index: int, start: int, stop: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return read_range(self.documents, self.start + index, start, stop)

    def lengths(self, indices: np.ndarray) -> np.ndarray:
        return document_lengths(self.documents, np.asarray(indices, dtype=np.int64) + self.start)

    def length(self, index: int) -> Optional[int]:
        return document_length(self.documents, self.start + index)


def held_out_split(documents: Documents, holdout: float, split: str) -> Documents:
    """The training documents (all but the held-out tail) or the held-out ones."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = len(documents)
    held = math.ceil(holdout * n) if holdout > 0 else 0
    if split == "eval" and held == 0:
        raise ValueError("data.holdout: evaluation needs held-out documents but data.holdout=0. "
                         "Fix: set data.holdout=0.01 (1% of the documents leave training), or eval.every=0")
    if held >= n:
        raise ValueError(f"data.holdout={holdout} holds out {held} of {n} documents, leaving none to "
                         "train on. Fix: a smaller data.holdout, or more documents (data.max_documents)")
    return DocumentRange(documents, 0, n - held) if split == "train" else DocumentRange(documents, n - held, n)
