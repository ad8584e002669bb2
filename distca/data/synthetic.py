"""Synthetic documents: a tiny learnable language, with lengths from a length distribution.

For throughput runs, where what matters is how lengths pack, and for checking that training
works: the text has structure a model can learn, so the loss falls (uniform random ids have
nothing to learn: the loss can only hover at ln(vocab), which reads as a broken trainer).

The language depends on the vocabulary size only (never on the seed, so held-out documents
speak it too): each content token is either fresh, drawn from a Zipf distribution over the
content ids (rank r has weight r^-1.1, ranks scattered over the ids), or, with probability
`FOLLOW`, the successor of the token before it (id + 1, wrapping). A model first learns the
unigram frequencies, then the successor rule; the best achievable loss is about
ln 2 + H(Zipf) / 2, far below ln(vocab) (2.9 vs 6.2 nats at vocab 512, 4.1 vs 11.8 at 128256).

Lengths are drawn once at construction (a few thousand numbers), from the same generator
and seed as always, so a seed gives the same document-length mix as before the language
existed; each document's ids are generated on demand from its own seed, so any document can
be produced in any order, on any rank, identically. The id `vocab_size - 1` is EOS and ends
every document. `stream` picks an independent set of documents (same language, same length
distribution): stream 0 is training data, stream 1 the held-out evaluation data.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Union

import numpy as np

from .distributions import LengthDistribution, sample_doc_lengths

ZIPF_EXPONENT = 1.1
FOLLOW = 0.5           # probability that a token is its predecessor's successor
_SCATTER = 0x9E3779B1  # a prime: rank r -> id (r * _SCATTER) mod n is a bijection for any n below it


@lru_cache(maxsize=4)
def _zipf(content: int) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative probabilities over ranks, the id of each rank) for `content` content ids."""
    weights = np.arange(1, content + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    ranks = np.arange(content, dtype=np.int64)
    ids = (ranks * (_SCATTER % content)) % content  # frequent ids spread over the vocabulary
    return cdf, ids


class SyntheticDocuments:
    def __init__(self, dist: Union[str, LengthDistribution], total_tokens: int, vocab_size: int,
                 seed: int, max_len: Optional[int] = None, stream: int = 0) -> None:
        if vocab_size < 2:
            raise ValueError(f"data.synthetic_vocab: need at least 2 ids (one is EOS), got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_id = vocab_size - 1
        self.seed = seed
        # stream 0 keeps the original seeds exactly (same lengths as before, same checkpoints)
        self._key = [seed] if stream == 0 else [seed, 0xE7A1, stream]
        rng = np.random.default_rng([*self._key, 0x5EED])
        self.doc_lens = np.asarray(sample_doc_lengths(dist, total_tokens, rng, max_len=max_len),
                                   dtype=np.int64)

    def __len__(self) -> int:
        return len(self.doc_lens)

    def length(self, index: int) -> int:
        return int(self.doc_lens[index])

    def lengths(self, indices: np.ndarray) -> np.ndarray:
        return self.doc_lens[indices]

    def read(self, index: int, start: int, stop: int) -> np.ndarray:
        return self.tokens(index)[start:stop]

    def tokens(self, index: int) -> np.ndarray:
        n = int(self.doc_lens[index])
        ids = np.empty(n, dtype=np.int64)
        ids[-1] = self.eos_id
        content = self.eos_id  # ids 0 .. vocab_size - 2
        if n > 1 and content > 0:
            rng = np.random.default_rng([*self._key, 1, index])
            cdf, rank_ids = _zipf(content)
            fresh_ids = rank_ids[np.searchsorted(cdf, rng.random(n - 1), side="right").clip(max=content - 1)]
            fresh = rng.random(n - 1) >= FOLLOW
            fresh[0] = True
            pos = np.arange(n - 1)
            start = np.maximum.accumulate(np.where(fresh, pos, 0))  # where each successor run began
            ids[:-1] = (fresh_ids[start] + (pos - start)) % content
        return ids
