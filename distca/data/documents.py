"""What the packer reads: an indexable collection of tokenized documents.

A `Documents` object has `len()` and `tokens(i)`: a 1-D int64 numpy array that ends with
the end-of-document id and is never empty. Sources may also offer `length(i)` when they know
a document's token count without tokenizing it, which lets the packer check a resumed
position without tokenizing the document.
Text sources implement `TextCorpus` (raw text by index) and `TextDocuments` tokenizes it
lazily: nothing is read or tokenized until the packer asks for that document.
"""

from __future__ import annotations

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
    """Tokenizes documents of a text corpus on demand and appends EOS to each."""

    def __init__(self, corpus: TextCorpus, tokenizer) -> None:
        self.corpus = corpus
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.corpus)

    def tokens(self, index: int) -> np.ndarray:
        raw = self.corpus.raw(index)
        if isinstance(raw, bytes):
            ids = np.asarray(self.tokenizer.encode_bytes(raw), dtype=np.int64)
        else:
            ids = np.asarray(self.tokenizer.encode(raw), dtype=np.int64)
        out = np.empty(len(ids) + 1, dtype=np.int64)
        out[:-1] = ids
        out[-1] = self.tokenizer.eos_id
        return out

    def length(self, index: int) -> Optional[int]:
        # Byte-level tokens of a bytes document: one id per byte, plus EOS. Other tokenizers
        # or text given as str need the real tokenization.
        byte_len = getattr(self.corpus, "byte_length", None)
        if byte_len is not None and getattr(self.tokenizer, "name", "") == "byte":
            return byte_len(index) + 1
        return None


class FirstDocuments:
    """The first `count` documents of another collection (`data.max_documents`)."""

    def __init__(self, documents: Documents, count: int) -> None:
        self.documents = documents
        self.count = min(count, len(documents))

    def __len__(self) -> int:
        return self.count

    def tokens(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.documents.tokens(index)

    def length(self, index: int) -> Optional[int]:
        length = getattr(self.documents, "length", None)
        return length(index) if length is not None else None


def document_length(documents: Documents, index: int) -> int:
    """Token count of a document, without tokenizing when the source knows it."""
    length = getattr(documents, "length", None)
    known = length(index) if length is not None else None
    return known if known is not None else len(documents.tokens(index))
