"""Text corpora from jsonl and parquet files (one document per JSON line / per row).

Both index their files at construction (jsonl: line offsets found with one vectorised pass
over a memory map; parquet: row counts from the footer) and read a document's text only
when the packer asks for it. Documents are numbered file by file in sorted path order.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
from collections import OrderedDict
from typing import Sequence

import numpy as np


class _MultiFileIndex:
    """Maps a global document index to (file number, index within that file)."""

    def __init__(self, counts: Sequence[int]) -> None:
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        file_no = bisect.bisect_right(self.starts, index) - 1
        return file_no, index - self.starts[file_no]


def _line_number(mapped, offset: int) -> int:
    """1-based line of a byte offset (errors name lines, which editors show, not bytes)."""
    return mapped[:offset].count(b"\n") + 1


class JsonlCorpus:
    """One JSON object per non-blank line; the document is the string under `text_field`."""

    def __init__(self, paths: Sequence[str], text_field: str) -> None:
        self.paths = list(paths)
        self.text_field = text_field
        self._maps: list = []
        self._line_starts: list[np.ndarray] = []
        self._line_ends: list[np.ndarray] = []
        for path in self.paths:
            starts, ends, mapped = self._index_lines(path)
            self._maps.append(mapped)
            self._line_starts.append(starts)
            self._line_ends.append(ends)
        self._index = _MultiFileIndex([len(s) for s in self._line_starts])
        if len(self._index) == 0:
            raise ValueError(f"data.paths: the jsonl files {self.paths} hold no documents. "
                             f"Fix: point data.paths at non-empty files")

    @staticmethod
    def _index_lines(path: str):
        if os.path.getsize(path) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), b""
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = np.frombuffer(mapped, dtype=np.uint8)
        # Chunked so that indexing a file many GB large needs little memory beyond the map.
        chunk = 1 << 28
        newlines = np.concatenate([np.flatnonzero(data[i:i + chunk] == ord("\n")) + i
                                   for i in range(0, len(data), chunk)])
        starts = np.concatenate([[0], newlines + 1])
        ends = np.concatenate([newlines, [len(data)]])
        # Empty lines and lone "\r" (Windows line ends) are not documents; other odd lines
        # fail with a clear error when read.
        lengths = ends - starts
        last = data[np.maximum(ends - 1, 0)]
        keep = (lengths > 1) | ((lengths == 1) & (last != ord("\r")))
        starts, ends = starts[keep], ends[keep]
        del data  # the mmap must have no exported buffers left when it is closed later
        return starts.astype(np.int64), ends.astype(np.int64), mapped

    def __len__(self) -> int:
        return len(self._index)

    def raw(self, index: int) -> str:
        file_no, line = self._index.locate(index)
        start, end = int(self._line_starts[file_no][line]), int(self._line_ends[file_no][line])
        text = self._maps[file_no][start:end]
        where = lambda: f"{self.paths[file_no]}:{_line_number(self._maps[file_no], start)}"  # noqa: E731
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where()}: not valid JSON ({e}). Fix: one JSON object per line") from None
        if not isinstance(record, dict) or self.text_field not in record:
            raise ValueError(f"data.text_field: {where()} has no key {self.text_field!r}. "
                             "Fix: set data.text_field to the key holding the text")
        value = record[self.text_field]
        if not isinstance(value, str):
            raise ValueError(f"data.text_field: {where()}: key {self.text_field!r} is "
                             f"{type(value).__name__}, not text. Fix: name a string field")
        return value


class ParquetCorpus:
    """One row per document; the document is the string column `text_field`.

    Rows are read a row group at a time; the few most recently used row groups stay in
    memory because shuffled order jumps between them.
    """

    cached_row_groups = 4

    def __init__(self, paths: Sequence[str], text_field: str) -> None:
        import pyarrow.parquet as pq

        self.paths = list(paths)
        self.text_field = text_field
        self._files = []
        self._group_starts: list[list[int]] = []
        counts = []
        for path in self.paths:
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises several types for a non-parquet file
                raise ValueError(f"data.paths: {path} is not a readable parquet file ({e}). "
                                 f"Fix: give parquet files or set data.source") from None
            names = pf.schema_arrow.names
            if text_field not in names:
                raise ValueError(f"data.text_field: {path} has no column {text_field!r} (columns: "
                                 f"{', '.join(names)}). Fix: set data.text_field to the text column")
            meta = pf.metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self._files.append(pf)
            self._group_starts.append(np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist())
            counts.append(meta.num_rows)
        self._index = _MultiFileIndex(counts)
        if len(self._index) == 0:
            raise ValueError(f"data.paths: the parquet files {self.paths} hold no rows. "
                             f"Fix: point data.paths at non-empty files")
        self._cache: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    def _row_group(self, file_no: int, group: int):
        key = (file_no, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        column = self._files[file_no].read_row_group(group, columns=[self.text_field]).column(0)
        self._cache[key] = column
        if len(self._cache) > self.cached_row_groups:
            self._cache.popitem(last=False)
        return column

    def raw(self, index: int) -> str:
        file_no, row = self._index.locate(index)
        starts = self._group_starts[file_no]
        group = bisect.bisect_right(starts, row) - 1
        value = self._row_group(file_no, group)[row - starts[group]].as_py()
        if value is None:
            return ""  # a null cell is an empty document (it still gets its EOS)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise ValueError(f"data.text_field: column {self.text_field!r} of {self.paths[file_no]} "
                             f"holds {type(value).__name__}, not text. Fix: name a string column")
        return value
