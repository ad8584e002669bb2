"""One source's samples of exactly `seq_len` tokens, one at a time: the document stream
(distca/data/stream.py) cut every seq_len tokens, tokens read at once. What a step of the
sequential packing holds, sample by sample; the trainer plans whole steps instead
(distca/data/step_plan.py) so each rank reads only its own samples. Each piece of a document
is reported as its own document in `Sample.doc_lens`, because the model restarts positions
and attention at every document boundary inside a sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .documents import Documents, read_range
from .stream import DocumentStream


@dataclass
class Sample:
    tokens: torch.Tensor  # int64 [seq_len]
    doc_lens: list[int]  # lengths of the document pieces in order; sum == seq_len


class Packer:
    def __init__(self, documents: Documents, seq_len: int, seed: int, shuffle: bool = True) -> None:
        if seq_len < 1:
            raise ValueError(f"data.seq_len: must be positive, got {seq_len}")
        self.stream = DocumentStream(documents, seed, shuffle)
        self.documents, self.seq_len = documents, seq_len
        self.samples_yielded = 0

    @property
    def num_documents(self) -> int:
        return self.stream.num_documents

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @property
    def position(self) -> int:
        return self.stream.position

    @property
    def offset(self) -> int:
        return self.stream.offset

    def next_sample(self) -> Sample:
        pieces = self.stream.take(self.seq_len)
        out = np.concatenate([read_range(self.documents, d, a, a + n) for d, a, n in
                              zip(pieces.doc.tolist(), pieces.start.tolist(), pieces.length.tolist())])
        self.samples_yielded += 1
        return Sample(tokens=torch.from_numpy(out.astype(np.int64)), doc_lens=pieces.length.tolist())

    def __iter__(self) -> Iterator[Sample]:
        while True:
            yield self.next_sample()

    def state_dict(self) -> dict[str, Any]:
        return {**self.stream.state_dict(), "samples_yielded": self.samples_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self.samples_yielded = int(state.get("samples_yielded", 0))
