"""Document-length distributions for synthetic data and benchmarks.

Load balance in long-context training is driven by how document lengths are spread, so
throughput runs draw lengths from distributions shaped like the ones DistCA evaluates on:

- "pretrain": shaped like the WLB-LLM pretraining trace DistCA uses (`dist_wlbllm.json`):
  about 98% of documents roughly uniform in [16, 6250] tokens, and a heavy tail of 2%
  spread log-uniformly from 8K to the longest length (default 128K). The trace's mean is
  ~4.0K tokens with ~22% of tokens in documents >= 8K; this model gives ~4.0K and ~22%.
- "longctx": shaped like DistCA's ProLong setting (ProLong's lengths, long documents
  up-sampled 2x and half of them stretched to the full context): a log-normal body
  (median 1.9K tokens, sigma 0.75), 3.2% of documents log-uniform from 8K to the context
  length and 3.2% exactly the context length (default 64K). Long documents carry over half
  of all tokens, so most samples are dominated by one or two long documents.

These are parametric models of those traces, not the traces themselves. A distribution is a
`LengthDistribution` (use `dataclasses.replace` to vary one) or one of the names above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np


@dataclass(frozen=True)
class LengthDistribution:
    """Mixture of three kinds of documents; lengths in tokens, all clipped to [min_len, max_len].

    body:  "uniform" over [body_a, body_b], or "lognormal" with median body_a and sigma body_b.
    tail:  a share `tail_fraction` of documents, log-uniform over [tail_low, max_len].
    full:  a share `full_fraction` of documents exactly `max_len` long.
    """

    body: str
    body_a: float
    body_b: float
    tail_fraction: float
    tail_low: int
    full_fraction: float
    max_len: int
    min_len: int = 2  # at least one content token and the EOS

    def __post_init__(self) -> None:
        if self.body not in ("uniform", "lognormal"):
            raise ValueError(f"body must be 'uniform' or 'lognormal', got {self.body!r}")
        if not (0 <= self.tail_fraction and 0 <= self.full_fraction
                and self.tail_fraction + self.full_fraction <= 1):
            raise ValueError("tail_fraction and full_fraction must be >= 0 and sum to at most 1")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` lengths (int64), drawn in a fixed order of rng calls so a seed fixes them."""
        kind = rng.random(count)
        if self.body == "uniform":
            body = rng.uniform(self.body_a, self.body_b, count)
        else:
            body = self.body_a * np.exp(self.body_b * rng.standard_normal(count))
        tail_low = min(self.tail_low, self.max_len)
        tail = np.exp(rng.uniform(np.log(tail_low), np.log(self.max_len), count))
        lengths = np.where(kind < self.full_fraction, float(self.max_len),
                           np.where(kind < self.full_fraction + self.tail_fraction, tail, body))
        return np.clip(np.rint(lengths), self.min_len, self.max_len).astype(np.int64)

    def mean(self) -> float:
        """Expected length before clipping (used to size sampling batches; tests use it too)."""
        if self.body == "uniform":
            body = (self.body_a + self.body_b) / 2
        else:
            body = self.body_a * np.exp(self.body_b ** 2 / 2)
        low, high = min(self.tail_low, self.max_len), self.max_len
        tail = (high - low) / np.log(high / low) if high > low else float(high)
        rest = 1 - self.tail_fraction - self.full_fraction
        return rest * body + self.tail_fraction * tail + self.full_fraction * self.max_len


PRETRAIN = LengthDistribution(body="uniform", body_a=16, body_b=6250, tail_fraction=0.02,
                              tail_low=8192, full_fraction=0.0, max_len=128 * 1024)
LONGCTX = LengthDistribution(body="lognormal", body_a=1900, body_b=0.75, tail_fraction=0.032,
                             tail_low=8192, full_fraction=0.032, max_len=64 * 1024)
DISTRIBUTIONS = {"pretrain": PRETRAIN, "longctx": LONGCTX}


def get_distribution(dist: Union[str, LengthDistribution], max_len: Optional[int] = None) -> LengthDistribution:
    """Resolve a name; `max_len` (e.g. the context length) replaces the longest length."""
    if isinstance(dist, str):
        if dist not in DISTRIBUTIONS:
            raise ValueError(f"data.synthetic_dist: unknown distribution {dist!r}. "
                             f"Fix: use one of {', '.join(DISTRIBUTIONS)}")
        dist = DISTRIBUTIONS[dist]
    if max_len is not None and max_len > 0:
        from dataclasses import replace
        dist = replace(dist, max_len=int(max_len), min_len=min(dist.min_len, int(max_len)))
    return dist


def sample_doc_lengths(dist: Union[str, LengthDistribution], total_tokens: int,
                       rng: np.random.Generator, *, max_len: Optional[int] = None,
                       multiple_of: int = 1) -> list[int]:
    """Document lengths drawn from `dist` whose sum is exactly `total_tokens`.

    Documents are drawn until the total is reached; the last one is cut to the remainder
    (so it alone may be shorter than `min_len` or not a multiple of `multiple_of`).
    `multiple_of` rounds every drawn length up, as DistCA's packer rounds to 16.
    `max_len` overrides the distribution's longest document (see `get_distribution`).
    """
    if total_tokens < 1:
        raise ValueError(f"total_tokens must be positive, got {total_tokens}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be positive, got {multiple_of}")
    dist = get_distribution(dist, max_len)
    batch = int(total_tokens / dist.mean() * 1.1) + 16
    pieces, total = [], 0
    while total < total_tokens:
        lengths = dist.sample(batch, rng)
        if multiple_of > 1:
            lengths = -(-lengths // multiple_of) * multiple_of
        pieces.append(lengths)
        total += int(lengths.sum())
    lengths = np.concatenate(pieces)
    cumulative = np.cumsum(lengths)
    last = int(np.searchsorted(cumulative, total_tokens))  # first index reaching the total
    out = lengths[:last + 1].copy()
    out[-1] -= int(cumulative[last]) - total_tokens
    return out.tolist()
