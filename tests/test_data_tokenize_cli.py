"""distca-tokenize: its output equals the tokenizer's own ids, in input order whatever the
worker count; bad input stops with one line and leaves no files; --from-ids indexes raw files."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from distca.data.indexed import IndexedDataset
from distca.data.tokenize_cli import main, plan_units, tokenize
from tests.data_helpers import texts, tiny_tokenizer, write_jsonl


def corpus(tmp_path):
    a, b, c = texts(120, seed=1), texts(40, seed=2), "a plain text file\nwith two lines ✓\n"
    write_jsonl(tmp_path / "a.jsonl", a)
    pq.write_table(pa.table({"content": b}), tmp_path / "b.parquet", row_group_size=15)
    (tmp_path / "c.txt").write_text(c)
    return a, b, c


def expected_ids(folder, docs):
    ref = Tokenizer.from_file(f"{folder}/tokenizer.json")
    bos, eos = ref.token_to_id("<s>"), ref.token_to_id("</s>")
    return [[bos] + ref.encode(t, add_special_tokens=False).ids + [eos] for t in docs]


@pytest.mark.parametrize("workers", [1, 3])
def test_output_equals_the_tokenizers_own_ids(tmp_path, workers):
    folder = tiny_tokenizer(tmp_path / "model")
    a, _, c = corpus(tmp_path)
    r = tokenize([str(tmp_path / "a.jsonl"), str(tmp_path / "c.txt")], folder, str(tmp_path / "out"),
                 workers=workers, progress=False)
    ds = IndexedDataset(str(tmp_path / "out"))
    got = [ds.tokens(i).tolist() for i in range(len(ds))]
    assert got == expected_ids(folder, a + [c])  # one sequence per document, input order
    assert r["documents"] == len(a) + 1 and r["tokens"] == sum(map(len, got)) and r["dtype"] == "uint16"


def test_small_units_and_parquet_keep_the_order(tmp_path, monkeypatch):
    """Many small units over 3 workers: results come back in input order."""
    import distca.data.tokenize_cli as cli
    folder = tiny_tokenizer(tmp_path / "model")
    a, b, _ = corpus(tmp_path)
    monkeypatch.setattr(cli, "UNIT_BYTES", 512)
    units = plan_units([str(tmp_path / "a.jsonl")], 512)
    assert len(units) > 5 and units[0].line == 1 and units[1].line > 1
    # parquet holds the text under "content", jsonl under "text": one run per field
    tokenize([str(tmp_path / "b.parquet")], folder, str(tmp_path / "pq"), workers=3, text_field="content",
             progress=False)
    ds = IndexedDataset(str(tmp_path / "pq"))
    assert [ds.tokens(i).tolist() for i in range(len(ds))] == expected_ids(folder, b)
    tokenize([str(tmp_path / "a.jsonl")], folder, str(tmp_path / "js"), workers=3, progress=False)
    ds = IndexedDataset(str(tmp_path / "js"))
    assert [ds.tokens(i).tolist() for i in range(len(ds))] == expected_ids(folder, a)


def test_command_line_summary_and_byte_tokenizer(tmp_path):
    corpus(tmp_path)
    out = subprocess.run([sys.executable, "-m", "distca.data.tokenize_cli", str(tmp_path / "c.txt"),
                          "--tokenizer", "byte", "--output", str(tmp_path / "bytes"), "--workers", "1"],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "1 documents" in lines[0] and "tokens/s" in lines[0] and "MB/s" in lines[0]
    ds = IndexedDataset(str(tmp_path / "bytes"))
    text = (tmp_path / "c.txt").read_bytes()
    assert ds.tokens(0).tolist() == list(text) + [256]


def test_bad_input_is_one_line_and_leaves_no_files(tmp_path, capsys):
    folder = tiny_tokenizer(tmp_path / "model")
    write_jsonl(tmp_path / "a.jsonl", texts(20))
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write('{"text": "fine"}\n{"txt": "no text key"}\n')
    assert main([str(tmp_path / "a.jsonl"), "--tokenizer", folder, "--output", str(tmp_path / "o"),
                 "--workers", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path / 'a.jsonl'}:22" in err and "Fix:" in err
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob("*.tmp"))
    assert main([str(tmp_path / "a.jsonl"), "--tokenizer", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer: " in err and "no tokenizer.json" in err


def test_from_ids_indexes_a_raw_bin_in_place(tmp_path):
    ids = np.array([1, 2, 3, 0, 4, 0, 5], dtype=np.uint16)
    ids.tofile(tmp_path / "raw.bin")
    before = (tmp_path / "raw.bin").read_bytes()
    assert main([str(tmp_path / "raw.bin"), "--from-ids", "--token-dtype", "uint16", "--eos-id", "0"]) == 0
    assert (tmp_path / "raw.bin").read_bytes() == before  # the tokens stay where they are
    ds = IndexedDataset(str(tmp_path / "raw"))
    assert [ds.tokens(i).tolist() for i in range(len(ds))] == [[1, 2, 3, 0], [4, 0], [5]]


def test_from_ids_with_a_cut_file_names_both_causes(tmp_path, capsys):
    (tmp_path / "raw.bin").write_bytes(b"\x01\x00\x02\x00\x03")
    assert main([str(tmp_path / "raw.bin"), "--from-ids", "--token-dtype", "uint16", "--eos-id", "0"]) == 2
    err = capsys.readouterr().err
    assert "another dtype" in err and "cut short" in err and "raw.bin" in err
