"""Every data source on small files, end to end through build_dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distca.data import ByteTokenizer, DataConfig, build_dataset, build_documents
from distca.data.stdlib_corpus import stdlib_root

TEXTS = ["hello world", "ünïcødé ✓ text", "x" * 300, "a\nmulti-line\ndocument\n", "", "last one"]


def all_documents(documents):
    return [documents.tokens(i) for i in range(len(documents))]


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id) == (258, 256)
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(ids + [tok.eos_id]) == text  # specials carry no text
    np.testing.assert_array_equal(tok.document("ab✓".encode()), tok.encode("ab✓") + [tok.eos_id])


def test_stdlib_corpus_is_sorted_real_files_and_documents_end_with_eos():
    tok, documents = build_documents(DataConfig(), seed=0)
    corpus = documents.corpus
    assert len(corpus) > 500  # every CPython ships well over a thousand modules
    assert corpus.relpaths == sorted(corpus.relpaths)
    assert not any("site-packages" in p for p in corpus.relpaths)
    index = corpus.relpaths.index("json/decoder.py")
    ids = documents.tokens(index)
    assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
    with open(os.path.join(stdlib_root(), "json/decoder.py"), "rb") as f:
        assert tok.decode(ids) == f.read().decode("utf-8")
    assert documents.length(index) == len(ids)  # known from the file size, without reading


def test_stdlib_build_is_fast_and_identical_in_another_process():
    # A fresh interpreter with a different hash seed must list the same corpus and pack
    # the same first samples; time only the build (torch import is the caller's cost).
    code = (
        "import time, torch, hashlib\n"
        "from distca.data import build_dataset, DataConfig\n"
        "t = time.perf_counter()\n"
        "tok, p = build_dataset(DataConfig(seq_len=256), seed=5)\n"
        "built = time.perf_counter() - t\n"
        "h = hashlib.sha256()\n"
        "for _ in range(20):\n"
        "    s = p.next_sample(); h.update(s.tokens.numpy().tobytes()); h.update(str(s.doc_lens).encode())\n"
        "print(built, len(p.documents), h.hexdigest())\n"
    )
    runs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        runs.append(out.stdout.split())
    assert float(runs[0][0]) < 2.0 and float(runs[1][0]) < 2.0
    assert runs[0][1:] == runs[1][1:]


def test_max_documents_takes_the_first_documents():
    _, full = build_documents(DataConfig(), seed=0)
    _, capped = build_documents(DataConfig(max_documents=10), seed=0)
    assert len(capped) == 10
    for i in range(10):
        np.testing.assert_array_equal(capped.tokens(i), full.tokens(i))
    _, packer = build_dataset(DataConfig(max_documents=3, seq_len=64), seed=0)
    assert packer.num_documents == 3


def test_jsonl_source(tmp_path):
    (tmp_path / "a").mkdir()
    # Documents spread over two files, with blank lines and a Windows line end between them.
    with open(tmp_path / "a" / "part-0.jsonl", "w", newline="") as f:
        f.write(json.dumps({"text": TEXTS[0], "id": 1}) + "\r\n\n")
        f.write(json.dumps({"text": TEXTS[1]}) + "\n")
        f.write(json.dumps({"text": TEXTS[2]}) + "\n\n\r\n")
    with open(tmp_path / "a" / "part-1.jsonl", "w") as f:
        for t in TEXTS[3:]:
            f.write(json.dumps({"text": t}) + "\n")
    for paths in ([str(tmp_path / "a" / "*.jsonl")], [str(tmp_path / "a")],
                  [str(tmp_path / "a" / "part-0.jsonl"), str(tmp_path / "**" / "part-1.jsonl")]):
        tok, documents = build_documents(DataConfig(source="jsonl", paths=paths), seed=0)
        docs = all_documents(documents)
        assert [tok.decode(d) for d in docs] == TEXTS
        assert all(d[-1] == tok.eos_id for d in docs)
        assert len(docs[4]) == 1  # the empty text is an EOS-only document


def test_jsonl_other_text_field_and_bad_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"content": "abc"}) + "\n" + "not json\n")
    # preflight off: the errors come when a record is read (test_data_preflight.py: at start-up)
    tok, documents = build_documents(DataConfig(source="jsonl", paths=[str(path)], text_field="content",
                                                preflight=False), 0)
    assert tok.decode(documents.tokens(0)) == "abc"
    with pytest.raises(ValueError, match="d.jsonl:2: not valid JSON"):
        documents.tokens(1)
    _, documents = build_documents(DataConfig(source="jsonl", paths=[str(path)], preflight=False), 0)
    with pytest.raises(ValueError, match="data.text_field"):
        documents.tokens(0)


def test_parquet_source_across_files_and_row_groups(tmp_path):
    pq.write_table(pa.table({"text": TEXTS[:4], "n": [1, 2, 3, 4]}), tmp_path / "p0.parquet", row_group_size=3)
    pq.write_table(pa.table({"body": [TEXTS[4], None, TEXTS[5]]}), tmp_path / "p1.parquet", row_group_size=1)
    tok, documents = build_documents(DataConfig(source="parquet", paths=[str(tmp_path / "p0.parquet")]), 0)
    assert [tok.decode(d) for d in all_documents(documents)] == TEXTS[:4]
    # access out of order, as the shuffled packer does, across row groups
    assert tok.decode(documents.tokens(3)) == TEXTS[3]
    assert tok.decode(documents.tokens(0)) == TEXTS[0]
    tok, documents = build_documents(
        DataConfig(source="parquet", paths=[str(tmp_path / "p1.parquet")], text_field="body"), 0)
    assert [tok.decode(d) for d in all_documents(documents)] == [TEXTS[4], "", TEXTS[5]]
    with pytest.raises(ValueError, match="data.text_field.*no column 'text'"):
        build_documents(DataConfig(source="parquet", paths=[str(tmp_path / "p1.parquet")]), 0)


@pytest.mark.parametrize("dtype,suffix", [("uint16", ".bin"), ("uint32", ".bin"), ("uint32", ".npy")])
def test_raw_token_files_become_indexed_datasets_split_at_eos(tmp_path, dtype, suffix):
    """Raw EOS-separated id files (what earlier releases trained on) are indexed once by
    distca-tokenize --from-ids; the indexed dataset then holds the same documents."""
    from distca.data.raw_ids import convert_raw
    eos = 9 if dtype == "uint16" else 70000
    vocab = eos + 1
    file0 = np.array([1, 2, 3, eos, 4, eos, 5, 6], dtype=dtype)  # ends without EOS
    file1 = np.array([eos, 7, 8, eos], dtype=dtype)  # starts with an EOS-only document
    paths = []
    for i, arr in enumerate([file0, file1]):
        path = tmp_path / f"shard{i}{suffix}"
        np.save(path, arr) if suffix == ".npy" else arr.tofile(path)
        paths.append(str(path))
    if suffix == ".bin":  # each raw .bin gets its index beside it; its tokens stay put
        for p in paths:
            convert_raw([p], dtype, eos, None, vocab)
        prefixes = [p[:-4] for p in paths]
    else:
        convert_raw(paths, dtype, eos, str(tmp_path / "joined"), vocab)
        prefixes = [str(tmp_path / "joined")]
    cfg = DataConfig(source="tokens", paths=prefixes, token_vocab_size=vocab, seq_len=4)
    tok, documents = build_documents(cfg, 0)
    assert tok.vocab_size == vocab
    docs = [d.tolist() for d in all_documents(documents)]
    assert docs == [[1, 2, 3, eos], [4, eos], [5, 6], [eos], [7, 8, eos]]  # a cut tail keeps no EOS
    assert [documents.length(i) for i in range(len(documents))] == [len(d) for d in docs]
    _, packer = build_dataset(cfg, seed=0)
    samples = [packer.next_sample() for _ in range(3)]
    first_epoch = np.concatenate([s.tokens.numpy() for s in samples]).tolist()[:12]
    assert sorted(first_epoch) == sorted(sum(docs, []))


def test_indexed_reads_reject_ids_outside_the_vocabulary(tmp_path):
    from distca.data.raw_ids import convert_raw
    np.array([1, 500, 3], dtype=np.uint16).tofile(tmp_path / "t.bin")
    convert_raw([str(tmp_path / "t.bin")], "uint16", 3, None)
    with pytest.raises(ValueError, match="vocab"):
        convert_raw([str(tmp_path / "t.bin")], "uint16", 3, None, vocab_size=100)
    cfg = DataConfig(source="tokens", paths=[str(tmp_path / "t")], token_vocab_size=100)
    _, documents = build_documents(cfg, 0)  # opening reads the index only
    with pytest.raises(ValueError, match=r"t\.bin holds token id 500.*data.tokenizer_path"):
        documents.tokens(0)


def test_synthetic_source_is_deterministic_random_ids_with_eos():
    cfg = DataConfig(source="synthetic", synthetic_dist="longctx", synthetic_vocab=1000,
                     synthetic_tokens=200_000, seq_len=4096)
    tok, documents = build_documents(cfg, seed=3)
    assert (tok.vocab_size, tok.eos_id) == (1000, 999)
    assert sum(documents.length(i) for i in range(len(documents))) == 200_000
    doc = documents.tokens(5)
    assert len(doc) == documents.length(5) and doc[-1] == 999 and (doc[:-1] < 999).all()
    assert len(np.unique(doc[:-1])) > min(100, len(doc) // 4)  # really random ids
    _, again = build_documents(cfg, seed=3)
    np.testing.assert_array_equal(again.tokens(5), doc)
    _, other = build_documents(cfg, seed=4)
    assert not np.array_equal(other.doc_lens, documents.doc_lens)
    _, packer = build_dataset(cfg, seed=3)
    s = packer.next_sample()
    assert s.tokens.shape == (4096,) and sum(s.doc_lens) == 4096
    assert int((s.tokens == 999).sum()) >= len(s.doc_lens) - 1  # each whole doc piece ends with EOS


def test_synthetic_max_doc_len_caps_documents():
    cfg = DataConfig(source="synthetic", synthetic_dist="pretrain", synthetic_tokens=100_000,
                     synthetic_max_doc_len=1000)
    _, documents = build_documents(cfg, 0)
    assert max(documents.doc_lens) == 1000


def test_build_dataset_accepts_dicts_and_hydra_structured_configs():
    omegaconf = pytest.importorskip("omegaconf")
    base = omegaconf.OmegaConf.structured(DataConfig)
    merged = omegaconf.OmegaConf.merge(base, omegaconf.OmegaConf.from_dotlist(
        ["seq_len=128", "max_documents=5", "paths=[a,b]"]))
    assert merged.paths == ["a", "b"]
    merged.paths = []
    tok, packer = build_dataset(merged, seed=1)
    assert packer.seq_len == 128 and packer.num_documents == 5
    _, from_dict = build_dataset({"seq_len": 128, "max_documents": 5}, seed=1)
    np.testing.assert_array_equal(from_dict.next_sample().tokens, packer.next_sample().tokens)
    with pytest.raises(omegaconf.errors.ValidationError):
        omegaconf.OmegaConf.merge(base, {"seq_len": "long"})
