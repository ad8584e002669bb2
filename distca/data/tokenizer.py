"""Tokenizers that need no file: bytes, and the vocabulary of data that is already ids.

Every tokenizer has the surface the data path relies on: `vocab_size`, `eos_id`, `name`,
`decode(ids)` and `document(raw) -> np.ndarray`, the ids of one whole document (str or
bytes) as training sees it: with the tokenizer's BOS where it wants one, and the EOS that
ends every document. `documents(raws)` does a batch (the `tokenizers` library encodes a
batch in parallel). `distca/data/hf_tokenizer.py` wraps a `tokenizer.json`.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; EOS = 256 ends every document; 257 is reserved (never
    produced: packed samples need no padding; kept so the vocabulary, and so checkpoints of
    byte-level runs, stay as they were)."""

    eos_id = 256
    bos_id = None
    vocab_size = 258
    name = "byte"
    path = ""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def document(self, raw: Union[str, bytes]) -> np.ndarray:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        out = np.empty(len(data) + 1, dtype=np.int64)
        out[:-1] = np.frombuffer(data, dtype=np.uint8)
        out[-1] = self.eos_id
        return out

    def documents(self, raws: Sequence[Union[str, bytes]]) -> list[np.ndarray]:
        return [self.document(r) for r in raws]

    def decode(self, ids: Iterable[int]) -> str:
        # Special ids carry no text; invalid UTF-8 (a document cut mid-character) shows as U+FFFD.
        return bytes(i for i in (int(t) for t in ids) if i < 256).decode("utf-8", errors="replace")


class TokenIdVocab:
    """Vocabulary of data that is already token ids (indexed datasets, synthetic data) when no
    tokenizer file is given: we cannot encode text, and decode shows the ids themselves, which
    is what logs and debugging need. `eos_id` may be unknown (None): documents are delimited
    by the dataset's index, not by an id."""

    name = "ids"
    bos_id = None
    path = ""

    def __init__(self, vocab_size: int, eos_id: Optional[int] = None) -> None:
        if eos_id is not None and not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} outside vocabulary of size {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        raise ValueError(
            "this dataset is already token ids (data.source=tokens or synthetic); there is no "
            "text tokenizer to encode with. Fix: set data.tokenizer_path to the tokenizer that made the ids")

    def document(self, raw) -> np.ndarray:
        return np.asarray(self.encode(raw))

    def documents(self, raws) -> list[np.ndarray]:
        return [self.document(r) for r in raws]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join("<eos>" if int(t) == self.eos_id else str(int(t)) for t in ids)
