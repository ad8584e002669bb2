"""Megatron's indexed dataset: a dataset written here from the documented byte layout (struct,
not our writer) reads back exactly; our writer writes that layout; every damaged input is one
line naming the file and the fix."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from distca.data import DataConfig, build_documents
from distca.data.indexed import IndexedDataset, IndexedWriter

CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}
FORMATS = {np.uint8: "B", np.int8: "b", np.int16: "h", np.int32: "i", np.int64: "q", np.uint16: "H"}


def megatron_write(prefix, sequences, dtype, doc_index=None) -> None:
    """PREFIX.bin + PREFIX.idx byte by byte from the layout Megatron documents: magic, version
    u64 = 1, dtype code u8, sequence count u64, document-index length u64, int32 lengths, int64
    byte pointers, int64 document index (0 .. sequences)."""
    item = np.dtype(dtype).itemsize
    with open(f"{prefix}.bin", "wb") as f:
        for s in sequences:
            for x in s:
                f.write(struct.pack("<" + FORMATS[dtype], int(x)))
    doc = list(range(len(sequences) + 1)) if doc_index is None else doc_index
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(doc)))
        for s in sequences:
            f.write(struct.pack("<i", len(s)))
        pointer = 0
        for s in sequences:
            f.write(struct.pack("<q", pointer))
            pointer += len(s) * item
        for d in doc:
            f.write(struct.pack("<q", d))


SEQS = [[5, 6, 7, 2], [9, 2], [1, 1, 1, 1, 1, 2], [300, 2]]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.int16])
def test_a_dataset_written_from_the_byte_layout_reads_back_exactly(tmp_path, dtype):
    megatron_write(tmp_path / "m", SEQS, dtype)
    ds = IndexedDataset(str(tmp_path / "m"), vocab_size=1000)
    assert len(ds) == 4 and ds.num_tokens == 14 and ds.dtype == np.dtype(dtype)
    assert [ds.tokens(i).tolist() for i in range(4)] == SEQS
    assert ds.lengths(np.array([3, 0])).tolist() == [2, 4]
    assert ds.read(2, 1, 4).tolist() == [1, 1, 1]
    # through the config: data=tokens with the prefix, or the .bin / .idx name, or the folder
    for path in (tmp_path / "m", tmp_path / "m.bin", tmp_path / "m.idx", tmp_path):
        _, docs = build_documents(DataConfig(source="tokens", paths=[str(path)], token_vocab_size=1000), 0)
        assert [docs.tokens(i).tolist() for i in range(len(docs))] == SEQS


def test_documents_of_several_sequences_are_one_document(tmp_path):
    # preprocess_data.py --split-sentences writes one sequence per sentence; the document
    # index groups them: a document is the unit whose attention restarts
    megatron_write(tmp_path / "m", SEQS, np.uint16, doc_index=[0, 2, 2, 4])
    ds = IndexedDataset(str(tmp_path / "m"))
    assert len(ds) == 3
    assert [ds.tokens(i).tolist() for i in range(3)] == [SEQS[0] + SEQS[1], [], SEQS[2] + SEQS[3]]
    assert ds.lengths(np.arange(3)).tolist() == [6, 0, 8]


def test_our_writer_writes_the_documented_layout(tmp_path):
    w = IndexedWriter(str(tmp_path / "ours"), np.uint16)
    w.add(np.concatenate([np.asarray(s) for s in SEQS]), [len(s) for s in SEQS])
    w.close()
    megatron_write(tmp_path / "ref", SEQS, np.uint16)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"ref{ext}").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def one_line_error(tmp_path, prefix, *names) -> str:
    with pytest.raises(ValueError) as info:
        build_documents(DataConfig(source="tokens", paths=[str(prefix)], token_vocab_size=1000), 0)
    msg = str(info.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


def test_truncated_bin_names_both_causes(tmp_path):
    megatron_write(tmp_path / "m", SEQS, np.uint16)
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[:-3])  # cut mid-token: not even a whole number of tokens
    msg = one_line_error(tmp_path, tmp_path / "m", "m.bin", "m.idx")
    assert "cut short" in msg and "belongs to another" in msg  # both possible causes, no dtype advice
    (tmp_path / "m.bin").write_bytes(data[:-4])
    one_line_error(tmp_path, tmp_path / "m", "cut short")


def test_idx_and_bin_that_disagree(tmp_path):
    megatron_write(tmp_path / "m", SEQS, np.uint16)
    megatron_write(tmp_path / "other", SEQS + [[4, 4, 2]], np.uint16)
    (tmp_path / "m.bin").write_bytes((tmp_path / "other.bin").read_bytes())  # a longer .bin
    msg = one_line_error(tmp_path, tmp_path / "m", "m.bin", "m.idx", "another")
    assert "distca-tokenize" in msg


def test_unknown_dtype_code_and_damaged_index(tmp_path):
    megatron_write(tmp_path / "m", SEQS, np.uint16)
    idx = bytearray((tmp_path / "m.idx").read_bytes())
    idx[17] = 9
    (tmp_path / "m.idx").write_bytes(bytes(idx))
    msg = one_line_error(tmp_path, tmp_path / "m", "m.idx", "dtype code 9")
    assert "8 uint16" in msg  # the known codes are listed
    idx[17] = 7  # float32: not token ids
    (tmp_path / "m.idx").write_bytes(bytes(idx))
    one_line_error(tmp_path, tmp_path / "m", "m.idx", "float32")
    idx[17] = 8
    (tmp_path / "m.idx").write_bytes(bytes(idx[:-5]))  # the .idx itself cut short
    one_line_error(tmp_path, tmp_path / "m", "m.idx", "cut short")
    (tmp_path / "m.idx").write_bytes(b"NOTANIDX" + bytes(idx[8:]))
    one_line_error(tmp_path, tmp_path / "m", "m.idx", "MMIDIDX")
    ptrs = bytearray(idx)
    ptrs[34 + 4 * 4 + 8] += 2  # the second pointer off by one token
    (tmp_path / "m.idx").write_bytes(bytes(ptrs))
    one_line_error(tmp_path, tmp_path / "m", "m.idx", "contiguous")


def test_opening_reads_the_index_only(tmp_path, monkeypatch):
    """Opening maps the .bin without reading any of it; lengths come from the .idx; a read
    touches only its own range."""
    import distca.data.indexed as indexed
    megatron_write(tmp_path / "m", SEQS, np.uint16)
    touched = []

    class Spy:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, key):
            touched.append((key.start, key.stop) if isinstance(key, slice) else key)
            return self.arr[key]

        def __array__(self, *args, **kwargs):
            touched.append("all")
            return np.asarray(self.arr)

        def __len__(self):
            return len(self.arr)

    real = np.memmap
    monkeypatch.setattr(indexed.np, "memmap", lambda path, *a, **k: Spy(real(path, *a, **k))
                        if str(path).endswith(".bin") else real(path, *a, **k))
    ds = IndexedDataset(str(tmp_path / "m"))
    assert ds.lengths(np.arange(4)).tolist() == [4, 2, 6, 2] and not touched
    ds.read(2, 2, 5)
    assert touched == [(4 + 2 + 2, 4 + 2 + 5)]
