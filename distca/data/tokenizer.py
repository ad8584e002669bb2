"""Tokenizers that need no download.

Every tokenizer here has the same small surface the trainer relies on: `encode(str)`,
`decode(ids)`, `vocab_size`, `eos_id`, plus `encode_bytes(bytes) -> np.ndarray` so that
sources reading files as bytes skip a decode/encode round trip.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; EOS = 256 ends every document; 257 is reserved (never
    produced: packed samples need no padding; kept so the vocabulary, and so checkpoints of
    byte-level runs, stay as they were)."""

    eos_id = 256
    vocab_size = 258
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        # Special ids carry no text; invalid UTF-8 (a document cut mid-character) shows as U+FFFD.
        return bytes(i for i in (int(t) for t in ids) if i < 256).decode("utf-8", errors="replace")


class TokenIdVocab:
    """Vocabulary of data that is already token ids (pre-tokenized files, synthetic data).

    We do not own the tokenizer that made the ids, so text cannot be encoded; decode shows
    the ids themselves, which is what logs and debugging need.
    """

    name = "ids"

    def __init__(self, vocab_size: int, eos_id: int) -> None:
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} outside vocabulary of size {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        raise ValueError(
            "this dataset is already token ids (data.source=tokens or synthetic); there is no "
            "text tokenizer to encode with. Fix: tokenize text with the tokenizer that made the files")

    def encode_bytes(self, data: bytes) -> np.ndarray:
        raise ValueError("token-id datasets cannot encode bytes; see TokenIdVocab.encode")

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join("<eos>" if int(t) == self.eos_id else str(int(t)) for t in ids)
