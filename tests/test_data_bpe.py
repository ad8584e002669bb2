"""data.tokenizer=bpe: a byte-level BPE trained with the tokenizers library on the corpus:
lossless, compresses, deterministic, cached under DISTCA_CACHE."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from distca.data import DataConfig, build_dataset
from distca.data import bpe as bpe_module
from distca.data.bpe import load_or_train_bpe

WORDS = ["def", "return", "self", "import", "class", "lambda", "value", "None", "print", "for", "in"]


def corpus_texts(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=40)) + f"\n# line {i} ünï ✓\n" for i in range(n)]


class Texts:
    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def raw(self, i):
        return self.texts[i]


def test_bpe_is_lossless_and_compresses(tmp_path):
    tok = load_or_train_bpe([Texts(corpus_texts())], 400, cache=str(tmp_path))
    assert 258 < tok.vocab_size <= 400
    for text in corpus_texts(20, seed=1) + ["", "unseen wörds, 12345!!\n\n\t", "✓✓✓"]:
        doc = tok.document(text)
        assert doc[-1] == tok.eos_id and tok.eos_id not in doc[:-1].tolist()  # no BOS, EOS last
        assert tok.decode(doc) == text
    sample = corpus_texts(1, seed=2)[0]
    assert len(tok.encode(sample)) < len(sample.encode()) / 2.5  # frequent words became single ids
    assert len(tok.encode(" self")) == 1


def test_training_is_deterministic_across_processes(tmp_path):
    # nodes without a shared cache each train: they must get the same tokenizer (another hash
    # seed in another process, as on another machine)
    code = ("import sys; from tests.test_data_bpe import Texts, corpus_texts; "
            "from distca.data.bpe import load_or_train_bpe; "
            "print(load_or_train_bpe([Texts(corpus_texts())], 400, cache=sys.argv[1]).path)")
    files = []
    for i, seed in enumerate(("1", "2")):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"c{i}")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        files.append(open(out.stdout.strip(), "rb").read())
    assert files[0] == files[1]


def test_tokenizer_is_cached_and_reused(tmp_path, monkeypatch):
    corpus = Texts(corpus_texts())
    first = load_or_train_bpe([corpus], 350, cache=str(tmp_path))
    assert len(list((tmp_path / "bpe").glob("*/tokenizer.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(bpe_module, "train_bpe", no_training)
    second = load_or_train_bpe([corpus], 350, cache=str(tmp_path))
    assert second.path == first.path and second.encode("self value") == first.encode("self value")
    with pytest.raises(AssertionError, match="cached"):  # another vocabulary size is another cache entry
        load_or_train_bpe([corpus], 360, cache=str(tmp_path))


def test_build_dataset_with_bpe(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    texts = corpus_texts(100)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = DataConfig(source="jsonl", paths=[str(path)], tokenizer="bpe", bpe_vocab_size=300, seq_len=128)
    tok, packer = build_dataset(cfg, seed=0)
    assert tok.vocab_size == 300 and tok.path.startswith(str(tmp_path / "cache" / "bpe"))
    docs = [packer.documents.tokens(i) for i in range(3)]
    assert [tok.decode(d) for d in docs] == texts[:3]
    assert all(d[-1] == tok.eos_id for d in docs)
    s = packer.next_sample()
    assert sum(s.doc_lens) == 128 and int(s.tokens.max()) < 300
