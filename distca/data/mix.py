"""`data.mix`: which source each sample comes from.

Sample n (counted over the whole run, not per rank) comes from the source furthest behind
its weight: the s maximising w_s (n + 1) - count_s, ties to the first source. Every prefix of
the stream then holds each source within one sample of its share (Megatron's blending rule),
so proportions hold in every global batch, not only on average; the order needs no random
draw, and the state is the samples drawn per source, which resumes exactly at any layout.
What varies with the seed is each source's own document order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class MixSchedule:
    def __init__(self, weights: Sequence[float]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.size == 0 or not np.all(w > 0):
            raise ValueError("data.mix: every weight must be positive")
        self.weights = w / w.sum()
        self.counts = np.zeros(w.size, dtype=np.int64)

    def next_sources(self, n: int) -> np.ndarray:
        """The source of each of the next n samples."""
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            total = int(self.counts.sum())
            s = int(np.argmax(self.weights * (total + 1) - self.counts))
            out[i] = s
            self.counts[s] += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.shape != self.counts.shape:
            raise ValueError(f"data.mix: the checkpoint mixes {counts.size} sources but this run has "
                             f"{self.counts.size}. Fix: resume with the same data.mix")
        self.counts = counts
