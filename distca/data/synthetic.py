"""Synthetic documents: random token ids with lengths from a length distribution.

For throughput runs, where what matters is how lengths pack, not what the text says.
Lengths are drawn once at construction (a few thousand numbers); each document's ids are
generated on demand from its own seed, so any document can be produced in any order, on any
rank, identically. The id `vocab_size - 1` is EOS and ends every document; content ids are
uniform over the rest.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from .distributions import LengthDistribution, sample_doc_lengths


class SyntheticDocuments:
    def __init__(self, dist: Union[str, LengthDistribution], total_tokens: int, vocab_size: int,
                 seed: int, max_len: Optional[int] = None) -> None:
        if vocab_size < 2:
            raise ValueError(f"data.synthetic_vocab: need at least 2 ids (one is EOS), got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_id = vocab_size - 1
        self.seed = seed
        rng = np.random.default_rng([seed, 0x5EED])
        self.lengths = np.asarray(sample_doc_lengths(dist, total_tokens, rng, max_len=max_len),
                                  dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def length(self, index: int) -> int:
        return int(self.lengths[index])

    def tokens(self, index: int) -> np.ndarray:
        n = int(self.lengths[index])
        rng = np.random.default_rng([self.seed, 1, index])
        ids = np.empty(n, dtype=np.int64)
        ids[:-1] = rng.integers(0, self.eos_id, n - 1)
        ids[-1] = self.eos_id
        return ids
