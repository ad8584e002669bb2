"""What the data path reads: an indexable collection of tokenized documents.

A `Documents` object has `len()` and `tokens(i)`: a 1-D int64 numpy array, never empty,
ending with the end-of-document id where the source has one. Two more methods make the
loader scale, and every source here has them:

- `lengths(indices)`: the token counts of those documents, the *metadata* every rank uses
  to agree on a step's plan. Indexed datasets and synthetic data read it from their index;
  byte-level text from file sizes; other text must be tokenized to know it (memoised, and the
  tokens kept a while, so a rank does not tokenize its own documents twice).
- `read(i, start, stop)`: tokens [start, stop) of document i, the *data* a rank reads only
  for its own share of the step.

`TextDocuments` turns a `TextCorpus` (raw text by index) into documents with a tokenizer
(distca/data/tokenizer.py: `document()` adds BOS/EOS).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Protocol, Union, runtime_checkable

import numpy as np


@runtime_checkable
class Documents(Protocol):
    def __len__(self) -> int: ...

    def tokens(self, index: int) -> np.ndarray: ...


class TextCorpus(Protocol):
    def __len__(self) -> int: ...

    def raw(self, index: int) -> Union[bytes, str]: ...


class TextDocuments:
    """Tokenizes documents of a text corpus on demand."""

    cache_tokens = 1 << 24  # tokens kept from tokenizing (for lengths, or a document read twice)

    def __init__(self, corpus: TextCorpus, tokenizer) -> None:
        self.corpus = corpus
        self.tokenizer = tokenizer
        self._lengths = np.full(len(corpus), -1, dtype=np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        # Byte-level tokens of a bytes document: one id per byte, plus EOS, known from its size
        byte_len = getattr(corpus, "byte_length", None)
        if byte_len is not None and getattr(tokenizer, "name", "") == "byte":
            self._lengths[:] = [byte_len(i) + 1 for i in range(len(corpus))]

    def __len__(self) -> int:
        return len(self.corpus)

    def _keep(self, index: int, ids: np.ndarray) -> None:
        self._cache[index] = ids
        self._cached += ids.size
        while self._cached > self.cache_tokens and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.size

    def _tokenize(self, indices: list[int]) -> None:
        ids = self.tokenizer.documents([self.corpus.raw(i) for i in indices])
        for i, doc in zip(indices, ids):
            self._lengths[i] = doc.size
            self._keep(i, doc.astype(np.int32 if self.tokenizer.vocab_size < 2 ** 31 else np.int64))

    def tokens(self, index: int) -> np.ndarray:
        doc = self._cache.get(index)
        if doc is None:
            self._tokenize([index])
            doc = self._cache[index]
        else:
            self._cache.move_to_end(index)
        return doc.astype(np.int64)

    def read(self, index: int, start: int, stop: int) -> np.ndarray:
        return self.tokens(index)[start:stop]

    def lengths(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        missing = [int(i) for i in np.unique(indices[self._lengths[indices] < 0])]
        if missing:
            self._tokenize(missing)  # one batch: the tokenizers library encodes it in parallel
        return self._lengths[indices].copy()

    def length(self, index: int) -> Optional[int]:
        n = int(self._lengths[index])
        return n if n >= 0 else None


class FirstDocuments:
    """The first `count` documents of another collection (`data.max_documents`)."""

    def __init__(self, documents: Documents, count: int) -> None:
        self.documents = documents
        self.count = min(count, len(documents))

    def __len__(self) -> int:
        return self.count

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(index)

    def tokens(self, index: int) -> np.ndarray:
        self._check(index)
        return self.documents.tokens(index)

    def read(self, index: int, start: int, stop: int) -> np.ndarray:
        self._check(index)
        return read_range(self.documents, index, start, stop)

    def lengths(self, indices: np.ndarray) -> np.ndarray:
        return document_lengths(self.documents, indices)

    def length(self, index: int) -> Optional[int]:
        length = getattr(self.documents, "length", None)
        return length(index) if length is not None else None


def document_length(documents: Documents, index: int) -> int:
    """Token count of a document, without tokenizing when the source knows it."""
    length = getattr(documents, "length", None)
    known = length(index) if length is not None else None
    return known if known is not None else int(document_lengths(documents, np.asarray([index]))[0])


def document_lengths(documents: Documents, indices: np.ndarray) -> np.ndarray:
    """Token counts of these documents (int64), in one call where the source supports it."""
    many = getattr(documents, "lengths", None)
    if many is not None:
        return np.asarray(many(np.asarray(indices, dtype=np.int64)), dtype=np.int64)
    return np.asarray([len(documents.tokens(int(i))) for i in indices], dtype=np.int64)


def read_range(documents: Documents, index: int, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of a document, reading only them where the source can."""
    read = getattr(documents, "read", None)
    if read is not None:
        return read(index, start, stop)
    return np.asarray(documents.tokens(index)[start:stop], dtype=np.int64)
