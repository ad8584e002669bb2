"""Pre-tokenized token files.

Format (the one choice this module makes): each file is a flat array of token ids, either
raw little-endian `data.token_dtype` (`.bin`, no header, as written by
`np.asarray(ids, dtype).tofile(path)`) or a 1-D `.npy` of that dtype. Documents are
separated by `data.token_eos_id`: a document is the ids up to and including an EOS. Ids after
the last EOS of a file form one more document, which gets an EOS appended, so a file that
was cut short does not merge into the next file's first document.

We chose EOS separators over a sidecar of lengths because that is what tokenizing
scripts already produce, and it keeps a dataset one file per shard. The index (EOS
positions) is built with one chunked vectorised pass per file, which also checks that every
id fits `data.token_vocab_size`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .text_files import _MultiFileIndex

_SCAN_CHUNK = 1 << 24  # tokens per vectorised pass: bounds index-building memory


def _open_token_file(path: str, dtype: np.dtype) -> np.ndarray:
    if path.endswith(".npy"):
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise ValueError(f"data.paths: {path} is not a readable .npy file ({e})") from None
        if arr.dtype != dtype:
            raise ValueError(f"data.token_dtype: {path} holds {arr.dtype}, not {dtype}. "
                             f"Fix: set data.token_dtype={arr.dtype.name}")
        if arr.ndim != 1:
            raise ValueError(f"data.paths: {path} has shape {arr.shape}; token files are 1-D. "
                             f"Fix: save the ids flattened")
        return arr
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise ValueError(f"data.token_dtype: {path} has {size} bytes, not a multiple of "
                         f"{dtype.itemsize} ({dtype.name}). Fix: set data.token_dtype to the dtype "
                         f"the file was written with")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenFileDocuments:
    def __init__(self, paths: Sequence[str], token_dtype: str, vocab_size: int, eos_id: int) -> None:
        dtype = np.dtype(token_dtype).newbyteorder("<")
        self.paths = list(paths)
        self.eos_id = eos_id
        self._arrays: list[np.ndarray] = []
        self._doc_ends: list[np.ndarray] = []  # exclusive end of each document in its file
        for path in self.paths:
            arr = _open_token_file(path, dtype)
            ends = []
            for start in range(0, len(arr), _SCAN_CHUNK):
                chunk = np.asarray(arr[start:start + _SCAN_CHUNK])
                top = int(chunk.max())
                if top >= vocab_size:
                    raise ValueError(f"data.token_vocab_size: {path} holds id {top} >= {vocab_size}. "
                                     f"Fix: set data.token_vocab_size to the tokenizer's vocabulary size "
                                     f"(or check data.token_dtype)")
                ends.append(np.flatnonzero(chunk == eos_id) + start + 1)
            doc_ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
            if len(arr) and (len(doc_ends) == 0 or doc_ends[-1] != len(arr)):
                doc_ends = np.concatenate([doc_ends, [len(arr)]])  # unterminated tail document
            self._arrays.append(arr)
            self._doc_ends.append(doc_ends.astype(np.int64))
        self._index = _MultiFileIndex([len(e) for e in self._doc_ends])
        if len(self._index) == 0:
            raise ValueError(f"data.paths: the token files {self.paths} are empty. "
                             f"Fix: point data.paths at non-empty files")

    def __len__(self) -> int:
        return len(self._index)

    def _bounds(self, index: int) -> tuple[int, int, int]:
        file_no, doc = self._index.locate(index)
        ends = self._doc_ends[file_no]
        return file_no, int(ends[doc - 1]) if doc else 0, int(ends[doc])

    def length(self, index: int) -> int:
        file_no, start, end = self._bounds(index)
        terminated = self._arrays[file_no][end - 1] == self.eos_id
        return end - start + (0 if terminated else 1)

    def tokens(self, index: int) -> np.ndarray:
        file_no, start, end = self._bounds(index)
        ids = np.asarray(self._arrays[file_no][start:end], dtype=np.int64)
        if ids[-1] != self.eos_id:
            ids = np.append(ids, self.eos_id)
        return ids
