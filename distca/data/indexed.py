"""Megatron's indexed dataset: `PREFIX.bin` (token ids back to back) + `PREFIX.idx` (where
each sequence starts), the format most pretraining corpora are preprocessed into. Megatron
and NeMo read what `write_indexed` writes, and distca reads theirs, unchanged.

`PREFIX.idx`, all little-endian:

    offset  size        field
    0       9           magic b"MMIDIDX\\x00\\x00"
    9       8  u64      version, 1
    17      1  u8       dtype code of the .bin: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                        6 float64, 7 float32, 8 uint16
    18      8  u64      S, the number of sequences
    26      8  u64      D, the number of entries of the document index (documents + 1)
    34      4*S int32   sequence lengths, in tokens
    ..      8*S int64   sequence pointers: byte offset of each sequence in PREFIX.bin
    ..      8*D int64   document index: document d is sequences [doc[d], doc[d+1]); doc[0] = 0,
                        doc[D-1] = S
    (newer Megatron may append int8[S] sequence modes for multimodal data; ignored here)

Pointers are contiguous (each sequence starts where the one before ends), so document d is
the token range from its first sequence's pointer to its last one's end: a document is the
unit whose attention and positions restart (usually one sequence per document, EOD last).

Opening maps both files and reads nothing but the `.idx`: one vectorised pass checks the
header, the sizes and that the pointers are contiguous and end exactly at the `.bin`'s size.
Each read then touches only its own token range (and checks its ids fit the vocabulary).
"""

from __future__ import annotations

import os
import struct
from typing import Optional, Sequence

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 34
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
_CHECK_CHUNK = 1 << 24  # sequences per vectorised pass: bounds memory on huge indexes
_CODE_NAMES = ", ".join(f"{k} {np.dtype(v).name}" for k, v in DTYPES.items())


def token_dtype(vocab_size: int) -> np.dtype:
    """The .bin element type for a vocabulary: uint16 below 65500 ids (Megatron's rule), else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def _rebuild() -> str:
    return "write both files again in one distca-tokenize run (or copy both again)"


class IndexedDataset:
    """One PREFIX: documents with lengths (metadata) and token ranges (reads)."""

    def __init__(self, prefix: str, vocab_size: Optional[int] = None) -> None:
        self.prefix = prefix
        self.vocab_size = vocab_size
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        self.idx_path, self.bin_path = idx_path, bin_path
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES or head[:9] != MAGIC:
            raise ValueError(f"data.paths: {idx_path} is not a Megatron indexed-dataset index (no MMIDIDX "
                             f"header). Fix: point data.paths at a dataset prefix written by distca-tokenize "
                             "or Megatron's preprocess_data.py")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:HEADER_BYTES])
        if version != VERSION:
            raise ValueError(f"data.paths: {idx_path} has index version {version}, not {VERSION}. Fix: "
                             "re-create the dataset with distca-tokenize")
        if code not in DTYPES:
            raise ValueError(f"data.paths: {idx_path} has the unknown dtype code {code} (known: {_CODE_NAMES}). "
                             f"Fix: the index is damaged or not Megatron's; {_rebuild()}")
        dtype = np.dtype(DTYPES[code]).newbyteorder("<")
        if dtype.kind == "f":
            raise ValueError(f"data.paths: {idx_path} says {bin_path} holds {dtype.name} values, not token ids. "
                             "Fix: point data.paths at a token dataset")
        self.dtype = dtype
        need = HEADER_BYTES + 12 * n_seq + 8 * n_doc
        if idx_size < need:
            raise ValueError(f"data.paths: {idx_path} has {idx_size} bytes but its header promises {need} "
                             f"({n_seq} sequences, {n_doc} document-index entries): the .idx is cut short. "
                             f"Fix: {_rebuild()}")
        if n_doc < 1:
            raise ValueError(f"data.paths: {idx_path} has an empty document index. Fix: {_rebuild()}")
        idx = np.memmap(idx_path, dtype=np.uint8, mode="r")
        self._seq_lens = np.frombuffer(idx, dtype="<i4", count=n_seq, offset=HEADER_BYTES)
        self._seq_ptrs = np.frombuffer(idx, dtype="<i8", count=n_seq, offset=HEADER_BYTES + 4 * n_seq)
        self._doc_index = np.frombuffer(idx, dtype="<i8", count=n_doc, offset=HEADER_BYTES + 12 * n_seq)
        self._check_index(n_seq)
        expected = int(self._seq_ptrs[-1]) + int(self._seq_lens[-1]) * dtype.itemsize if n_seq else 0
        bin_size = os.path.getsize(bin_path)
        if bin_size != expected:
            short = bin_size < expected
            raise ValueError(
                f"data.paths: {bin_path} has {bin_size} bytes but {idx_path} describes {expected} "
                f"({dtype.name} tokens): " + (
                    "either the .bin was cut short (an interrupted copy or write) or the .idx belongs to "
                    "another .bin" if short else
                    "the .idx belongs to another (or an older) .bin, or the .bin has data appended") +
                f". Fix: {_rebuild()}")
        self._bin = np.memmap(bin_path, dtype=dtype, mode="r") if bin_size else np.zeros(0, dtype)
        # one sequence per document (the usual case): the index arrays serve directly, no copy
        self._identity = n_doc == n_seq + 1
        if self._identity:
            self._doc_lens, self._doc_starts = self._seq_lens, None
        else:
            token_starts = np.concatenate([[0], np.cumsum(self._seq_lens, dtype=np.int64)])
            first = token_starts[self._doc_index]
            self._doc_lens = np.diff(first)
            self._doc_starts = first[:-1]
        self.num_tokens = int(expected // dtype.itemsize)

    def _check_index(self, n_seq: int) -> None:
        doc = self._doc_index
        where = f"data.paths: {self.idx_path}"
        if doc[0] != 0 or doc[-1] != n_seq or np.any(np.diff(doc) < 0):
            raise ValueError(f"{where}: the document index is not an increasing list from 0 to the "
                             f"sequence count {n_seq}. Fix: {_rebuild()}")
        item = self.dtype.itemsize
        end = 0
        for a in range(0, n_seq, _CHECK_CHUNK):
            lens = self._seq_lens[a:a + _CHECK_CHUNK].astype(np.int64)
            ptrs = self._seq_ptrs[a:a + _CHECK_CHUNK]
            if lens.size and lens.min() < 0:
                raise ValueError(f"{where}: negative sequence lengths. Fix: {_rebuild()}")
            starts = np.empty_like(ptrs)
            starts[0] = end
            np.cumsum(lens[:-1] * item, out=starts[1:])
            starts[1:] += end
            if not np.array_equal(starts, ptrs):
                raise ValueError(f"{where}: the sequence pointers are not contiguous (each sequence must start "
                                 f"where the one before ends). Fix: {_rebuild()}")
            end = int(starts[-1] + lens[-1] * item)
        self._bin_end = end

    # -- the Documents protocol (distca/data/documents.py) -----------------------------------
    def __len__(self) -> int:
        return len(self._doc_index) - 1

    def lengths(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self._doc_lens[indices], dtype=np.int64)

    def length(self, index: int) -> int:
        return int(self._doc_lens[index])

    def _start(self, index: int) -> int:
        if self._identity:
            return int(self._seq_ptrs[index]) // self.dtype.itemsize
        return int(self._doc_starts[index])

    def read(self, index: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document `index` (int64)."""
        base = self._start(index)
        ids = np.asarray(self._bin[base + start:base + stop], dtype=np.int64)
        if self.vocab_size is not None and ids.size:
            top, low = int(ids.max()), int(ids.min())
            if top >= self.vocab_size or low < 0:
                bad = top if top >= self.vocab_size else low
                raise ValueError(
                    f"data: {self.bin_path} holds token id {bad}, outside the vocabulary of {self.vocab_size} "
                    "ids. Fix: set data.tokenizer_path (or data.token_vocab_size) to the tokenizer that made "
                    "this dataset")
        return ids

    def tokens(self, index: int) -> np.ndarray:
        return self.read(index, 0, self.length(index))


def write_index(idx_path: str, dtype: np.dtype, seq_lens: np.ndarray, doc_index: Optional[np.ndarray] = None) -> None:
    """Write a .idx for sequences of these lengths stored back to back (one sequence per
    document unless `doc_index` says otherwise)."""
    lens = np.asarray(seq_lens, dtype=np.int64)
    if lens.size and (lens.min() < 0 or lens.max() > np.iinfo(np.int32).max):
        raise ValueError("sequence lengths must fit int32")
    ptrs = np.zeros(lens.size, dtype=np.int64)
    if lens.size > 1:
        np.cumsum(lens[:-1] * np.dtype(dtype).itemsize, out=ptrs[1:])
    doc = np.arange(lens.size + 1, dtype=np.int64) if doc_index is None else np.asarray(doc_index, np.int64)
    with open(idx_path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<QBQQ", VERSION, CODES[np.dtype(dtype)], lens.size, doc.size))
        f.write(lens.astype("<i4").tobytes())
        f.write(ptrs.astype("<i8").tobytes())
        f.write(doc.astype("<i8").tobytes())


class IndexedWriter:
    """Append documents to PREFIX.bin (through a temporary name) and write PREFIX.idx at the
    end; both appear under their names only when complete."""

    def __init__(self, prefix: str, dtype: np.dtype) -> None:
        self.prefix, self.dtype = prefix, np.dtype(dtype).newbyteorder("<")
        self._tmp = f"{prefix}.bin.{os.getpid()}.tmp"
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self._file = open(self._tmp, "wb", buffering=1 << 22)
        self._lens: list[np.ndarray] = []
        self.tokens = 0

    def add(self, ids: np.ndarray, lengths: Sequence[int]) -> None:
        """Documents of these lengths, their ids back to back in `ids`."""
        info = np.iinfo(self.dtype)
        if ids.size and (ids.min() < info.min or ids.max() > info.max):
            raise ValueError(f"token ids do not fit {self.dtype.name}")
        self._file.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._lens.append(np.asarray(lengths, dtype=np.int64))
        self.tokens += int(ids.size)

    def close(self) -> tuple[str, str]:
        self._file.close()
        lens = np.concatenate(self._lens) if self._lens else np.zeros(0, np.int64)
        idx_tmp = f"{self.prefix}.idx.{os.getpid()}.tmp"
        write_index(idx_tmp, self.dtype, lens)
        os.replace(self._tmp, self.prefix + ".bin")
        os.replace(idx_tmp, self.prefix + ".idx")
        return self.prefix + ".bin", self.prefix + ".idx"

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
