"""Bad data config: a ValueError that names the field (data.<field>) and says how to fix it."""

import pytest

from distca.data import DataConfig, build_dataset


def fails(match, seed=0, **overrides):
    with pytest.raises(ValueError, match=match) as info:
        build_dataset(DataConfig(**overrides), seed)
    assert "Fix:" in str(info.value)
    return str(info.value)


def test_unknown_source_names_the_choices():
    msg = fails(r"data\.source", source="hdf5")
    assert "stdlib" in msg and "parquet" in msg


def test_unknown_tokenizer_and_distribution():
    fails(r"data\.tokenizer", tokenizer="sentencepiece")
    fails(r"data\.synthetic_dist", source="synthetic", synthetic_dist="zipf")
    fails(r"data\.tokenizer.*token ids", source="synthetic", tokenizer="bpe")


@pytest.mark.parametrize("source", ["jsonl", "parquet", "tokens"])
def test_file_sources_need_paths(source):
    fails(r"data\.paths", source=source, token_vocab_size=10)


def test_missing_file_and_empty_glob(tmp_path):
    fails(r"data\.paths.*does not exist", source="jsonl", paths=[str(tmp_path / "nope.jsonl")])
    fails(r"data\.paths.*matched no files", source="jsonl", paths=[str(tmp_path / "*.jsonl")])
    (tmp_path / "readme.txt").write_text("not data")
    fails(r"data\.paths.*no .jsonl", source="jsonl", paths=[str(tmp_path)])


def test_non_parquet_file(tmp_path):
    (tmp_path / "a.parquet").write_text("not parquet")
    fails(r"data\.paths.*not a readable parquet", source="parquet", paths=[str(tmp_path / "a.parquet")])


def test_raw_token_files_and_missing_vocabulary(tmp_path):
    (tmp_path / "raw.bin").write_bytes(b"\x01\x02\x03\x04")
    msg = fails(r"data\.paths.*raw\.bin has no index", source="tokens", paths=[str(tmp_path / "raw.bin")],
                token_vocab_size=10)
    assert "distca-tokenize --from-ids" in msg
    fails(r"data\.paths.*does not exist", source="tokens", paths=[str(tmp_path / "nothing")], token_vocab_size=10)
    from distca.data.indexed import IndexedWriter
    import numpy as np
    w = IndexedWriter(str(tmp_path / "ok"), np.uint16)
    w.add(np.array([1, 2, 3]), [3])
    w.close()
    fails(r"data\.token_vocab_size.*data\.tokenizer_path", source="tokens", paths=[str(tmp_path / "ok")])
    fails(r"data\.token_vocab_size", source="tokens", paths=[str(tmp_path / "ok")], token_vocab_size=0)


def test_bad_numbers():
    fails(r"data\.seq_len", seq_len=0)
    fails(r"data\.max_documents", max_documents=0)
    fails(r"data\.synthetic_vocab", source="synthetic", synthetic_vocab=1)
    fails(r"data\.synthetic_tokens", source="synthetic", synthetic_tokens=0)
    fails(r"data\.synthetic_max_doc_len", source="synthetic", synthetic_max_doc_len=1)
    fails(r"data\.bpe_vocab_size", tokenizer="bpe", bpe_vocab_size=100)


def test_unknown_field_in_a_mapping():
    with pytest.raises(ValueError, match="unknown field.*seqlen"):
        build_dataset({"seqlen": 128}, 0)
