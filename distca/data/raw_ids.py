"""Raw token-id files (a flat array, documents separated by an EOS id) into indexed datasets.

Earlier releases trained on such files directly (`.bin` of raw little-endian ids, or a 1-D
`.npy`), rescanning them on every rank at every start. Now `distca-tokenize --from-ids`
scans them once: a single raw `.bin` gets an index written beside it (`FILE.idx`; the tokens
stay where they are, since a raw `.bin` already is Megatron's `.bin`), anything else (`.npy`,
several files, another output prefix) is copied into `PREFIX.bin` + `PREFIX.idx`. A document
is the ids up to and including an EOS; ids after a file's last EOS form one more document
(without an EOS: the file may have been cut, and its tail must not run into the next file).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from .indexed import CODES, IndexedWriter, write_index

SCAN_CHUNK = 1 << 24  # ids per vectorised pass: bounds memory


def open_raw(path: str, dtype: np.dtype) -> np.ndarray:
    """The ids of a raw .bin (memory-mapped) or a 1-D .npy; ValueError naming the file and fix."""
    if path.endswith(".npy"):
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise ValueError(f"{path} is not a readable .npy file ({e})") from None
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise ValueError(f"{path} holds {arr.dtype} of shape {arr.shape}; token files are 1-D integer "
                             "arrays. Fix: save the ids flattened as integers")
        return arr
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise ValueError(
            f"{path} has {size} bytes, not a multiple of {dtype.itemsize} ({dtype.name}): either it was "
            f"written with another dtype (set --token-dtype to it) or it is cut short (its last "
            f"{size % dtype.itemsize} byte(s) are part of a token: copy or write it again)")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)


def document_ends(arr: np.ndarray, eos_id: int, vocab_size: Optional[int], path: str) -> np.ndarray:
    """Exclusive end of every document (the last one may lack its EOS)."""
    ends = []
    for start in range(0, len(arr), SCAN_CHUNK):
        chunk = np.asarray(arr[start:start + SCAN_CHUNK])
        if vocab_size is not None and chunk.size and (int(chunk.max()) >= vocab_size or int(chunk.min()) < 0):
            bad = int(chunk.max()) if int(chunk.max()) >= vocab_size else int(chunk.min())
            raise ValueError(f"{path} holds id {bad}, outside a vocabulary of {vocab_size}. Fix: give the "
                             "tokenizer's vocabulary size (--vocab-size) or check --token-dtype")
        ends.append(np.flatnonzero(chunk == eos_id) + start + 1)
    out = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    if len(arr) and (out.size == 0 or out[-1] != len(arr)):
        out = np.concatenate([out, [len(arr)]])
    return out.astype(np.int64)


def _index_dtype(arr: np.ndarray, path: str) -> np.dtype:
    """The dtype the .idx declares: the file's own where Megatron has a code for it; uint32
    ids below 2^31 are bitwise int32 (Megatron's type for large vocabularies)."""
    dt = np.dtype(arr.dtype).newbyteorder("=")
    if dt in CODES:
        return dt
    if dt == np.uint32:
        top = max((int(np.asarray(arr[a:a + SCAN_CHUNK]).max()) for a in range(0, len(arr), SCAN_CHUNK)), default=0)
        if top < 2 ** 31:
            return np.dtype(np.int32)
    raise ValueError(f"{path}: {dt.name} has no Megatron dtype code. Fix: convert the ids to uint16 or int32")


def convert_raw(paths: Sequence[str], dtype: str, eos_id: int, prefix: Optional[str],
                vocab_size: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> tuple[str, int, int]:
    """Index (or copy) raw id files; returns (prefix written, documents, tokens)."""
    dt = np.dtype(dtype).newbyteorder("<")
    arrays = [open_raw(p, dt) for p in paths]
    single_bin = len(paths) == 1 and paths[0].endswith(".bin")
    own = paths[0][:-len(".bin")] if single_bin else None
    if prefix is None:
        if own is None:
            raise ValueError("--output PREFIX is needed to convert .npy files or several files")
        prefix = own
    if single_bin and os.path.abspath(prefix) == os.path.abspath(own):
        arr = arrays[0]
        ends = document_ends(arr, eos_id, vocab_size, paths[0])
        lens = np.diff(np.concatenate([[0], ends]))
        tmp = f"{prefix}.idx.{os.getpid()}.tmp"
        write_index(tmp, _index_dtype(arr, paths[0]), lens)
        os.replace(tmp, prefix + ".idx")
        if progress:
            progress(len(lens), int(lens.sum()))
        return prefix, int(lens.size), int(lens.sum())
    out_dtype = np.dtype(np.uint16) if all(a.dtype.itemsize <= 2 and a.dtype.kind == "u" for a in arrays) \
        else np.dtype(np.int32)
    writer = IndexedWriter(prefix, out_dtype)
    try:
        docs = 0
        for path, arr in zip(paths, arrays):
            ends = document_ends(arr, eos_id, vocab_size, path)
            lens = np.diff(np.concatenate([[0], ends]))
            for a in range(0, len(lens), 1 << 16):  # documents in batches: bounded memory
                first = int(ends[a - 1]) if a else 0
                last = int(ends[min(a + (1 << 16), len(ends)) - 1])
                writer.add(np.asarray(arr[first:last]), lens[a:a + (1 << 16)])
                if progress:
                    progress(len(lens[a:a + (1 << 16)]), last - first)
            docs += len(lens)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return prefix, docs, writer.tokens
