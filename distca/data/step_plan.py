"""A step's plan: which token ranges of which documents form each micro-batch, and which DP
rank runs which micro-batch; computed from document lengths alone, identically on every rank.

A step is `global_batch_size` samples of `seq_len` tokens. The mix (distca/data/mix.py) says
which source each sample comes from; each source's stream (distca/data/stream.py) hands out
its tokens as pieces. Then `data.packing` lays them out:

- sequential: sample k is the next seq_len tokens of its source's stream; micro-batch b is
  samples b*m .. b*m+m-1 (m = micro_batch_size) and DP rank r runs micro-batches
  r*M .. r*M+M-1 (M per rank): exactly the samples and shares of earlier releases.
- balanced: the same samples' pieces (the same documents, cut at the same places), laid
  into the B micro-batches so their attention cost is even, and the micro-batches spread
  over the DP ranks likewise (distca/data/balance.py). The step trains on the same pieces
  as sequential (up to about one extra cut per micro-batch where a piece must be split to
  fill one exactly), so the loss and the gradient are those of the sequential step; only
  which rank runs which piece changes.

Both take the same tokens from every stream, so the state after a step (each stream's
position and the mix's counts) does not depend on the packing nor on the layout: a run can
resume at another dp, cp, tp or pp, or with the other packing, exactly where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .balance import assign_bins, attention_work, balanced_bins, imbalance
from .mix import MixSchedule
from .stream import DocumentStream, Pieces

STATE_VERSION = 2


@dataclass
class StepPlan:
    bins: list[Pieces]              # the step's micro-batches (each micro_batch_size x seq_len tokens)
    ranks: list[list[int]]          # the micro-batches of each DP rank, in the order it runs them
    source_tokens: list[int]        # tokens of the step from each source
    state_after: dict = field(default_factory=dict)  # the planner's state once this step is drawn

    @property
    def n_labels(self) -> int:
        """Tokens that have a next token inside their piece: the global loss normaliser."""
        return sum(b.tokens - len(b) for b in self.bins)

    @property
    def doc_lens(self) -> list[list[int]]:
        return [b.length.tolist() for b in self.bins]

    def dp_imbalance(self) -> float:
        """max / mean over DP ranks of the attention work (sum of squared piece lengths)."""
        return imbalance([sum(attention_work(self.bins[b].length) for b in bins) for bins in self.ranks])


class StepPlanner:
    def __init__(self, sources: Sequence, names: Sequence[str], weights: Sequence[float], seq_len: int,
                 seed: int, global_batch_size: int, micro_batch_size: int, dp: int, packing: str = "sequential",
                 shuffle: bool = True) -> None:
        if global_batch_size % (micro_batch_size * dp):
            raise ValueError(f"train.global_batch_size={global_batch_size} must be a multiple of "
                             f"train.micro_batch_size x parallel.dp = {micro_batch_size} x {dp}")
        self.streams = [DocumentStream(docs, seed, shuffle, src=i, name=n)
                        for i, (docs, n) in enumerate(zip(sources, names))]
        self.names = list(names)
        self.mix = MixSchedule(weights) if len(self.streams) > 1 else None
        self.seq_len, self.gbs, self.mbs, self.dp = seq_len, global_batch_size, micro_batch_size, dp
        self.packing = str(packing)

    def _sample_sources(self) -> np.ndarray:
        if self.mix is None:
            return np.zeros(self.gbs, dtype=np.int64)
        return self.mix.next_sources(self.gbs)

    def next_plan(self) -> StepPlan:
        sources = self._sample_sources()
        n_bins, per_rank = self.gbs // self.mbs, self.gbs // (self.mbs * self.dp)
        samples = [self.streams[s].take(self.seq_len) for s in sources.tolist()]
        if self.packing == "balanced":
            pieces = Pieces.concat(samples)
            layout = balanced_bins(pieces.length, n_bins, self.mbs * self.seq_len)
            bins = []
            for placed in layout:
                at = np.asarray([p[0] for p in placed], dtype=np.int64)
                bins.append(Pieces(pieces.src[at], pieces.doc[at],
                                   pieces.start[at] + np.asarray([p[1] for p in placed], dtype=np.int64),
                                   np.asarray([p[2] for p in placed], dtype=np.int64)))
            ranks = assign_bins([attention_work(b.length) for b in bins], self.dp)
        else:
            bins = [Pieces.concat(samples[b * self.mbs:(b + 1) * self.mbs]) for b in range(n_bins)]
            ranks = [list(range(r * per_rank, (r + 1) * per_rank)) for r in range(self.dp)]
        per_source = np.zeros(len(self.streams), dtype=np.int64)
        for b in bins:
            np.add.at(per_source, b.src, b.length)
        return StepPlan(bins, ranks, per_source.tolist(), self.state_dict())

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "names": list(self.names),
                "streams": [s.state_dict() for s in self.streams],
                "mix": self.mix.state_dict() if self.mix is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)
        if state.get("version") == 1 and "epoch" in state:  # a checkpoint of the single-source packer
            state = {"version": STATE_VERSION, "names": self.names[:1], "streams": [state], "mix": None}
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data: loader state version {state.get('version')!r} is not {STATE_VERSION}; "
                             "the checkpoint was written by another distca version")
        if len(state["streams"]) != len(self.streams):
            raise ValueError(f"data: the checkpoint reads {len(state['streams'])} source(s) "
                             f"({', '.join(state.get('names', []))}) but this run has {len(self.streams)} "
                             f"({', '.join(self.names)}). Fix: resume with the same data.mix")
        for stream, s in zip(self.streams, state["streams"]):
            stream.load_state_dict(s)
        if self.mix is not None:
            self.mix.load_state_dict(state["mix"])

