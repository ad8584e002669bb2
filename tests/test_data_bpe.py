"""The locally trained byte-level BPE: lossless, compresses, deterministic, cached."""

import json
from collections import Counter

import numpy as np
import pytest

from distca.data import DataConfig, build_dataset
from distca.data import bpe as bpe_module
from distca.data.bpe import _CHUNK, BPETokenizer, load_or_train_bpe, train_bpe

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


def naive_bpe(texts, vocab_size):
    """Textbook BPE: recount all pairs before every merge (what train_bpe does incrementally)."""
    words = [[list(chunk), f] for chunk, f in Counter(c for t in texts for c in _CHUNK.findall(t)).items()]
    merges = []
    while len(merges) < vocab_size - 258:
        counts = Counter()
        for symbols, f in words:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] += f
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for word in words:
            out, i, s = [], 0, word[0]
            while i < len(s):
                if i < len(s) - 1 and (s[i], s[i + 1]) == best:
                    out.append(257 + len(merges))
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            word[0] = out
    return merges


def test_incremental_training_equals_textbook_bpe():
    rng = np.random.default_rng(0)
    texts = [bytes(rng.choice(list(b"abcd efg\n"), size=200).tolist()) for _ in range(40)]
    merges = train_bpe(texts, 500)
    assert len(merges) > 150
    assert merges == naive_bpe(texts, 500)


def test_training_is_deterministic_and_encoding_lossless():
    texts = [t.encode() for t in corpus_texts()]
    merges = train_bpe(texts, 400)
    assert merges == train_bpe(list(reversed(texts)), 400)  # order of the corpus does not matter
    # this corpus has few distinct words: merges stop once no pair occurs twice
    assert merges == naive_bpe(texts, 400) and 50 < len(merges) <= 400 - 258
    tok = BPETokenizer(merges)
    assert tok.vocab_size == 258 + len(merges)
    for text in corpus_texts(20, seed=1) + ["", "unseen wörds, 12345!!\n\n\t", "✓✓✓"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size and i not in (tok.eos_id, 257) for i in ids)
        assert tok.decode(ids) == text
    sample = corpus_texts(1, seed=2)[0]
    assert len(tok.encode(sample)) < len(sample.encode()) / 2.5  # frequent words became single ids
    assert len(tok.encode(" self")) == 1


def test_merges_are_cached_and_reused(tmp_path, monkeypatch):
    corpus = Texts(corpus_texts())
    first = load_or_train_bpe(corpus, 350, cache_dir=str(tmp_path))
    assert len(list((tmp_path / "bpe").glob("*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("cached merges should have been loaded")

    monkeypatch.setattr(bpe_module, "train_bpe", no_training)
    second = load_or_train_bpe(corpus, 350, cache_dir=str(tmp_path))
    assert second.merges == first.merges
    with pytest.raises(AssertionError, match="cached"):  # another vocabulary size is another cache entry
        load_or_train_bpe(corpus, 360, cache_dir=str(tmp_path))


def test_build_dataset_with_bpe(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    texts = corpus_texts(100)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = DataConfig(source="jsonl", paths=[str(path)], tokenizer="bpe", bpe_vocab_size=300, seq_len=128)
    tok, packer = build_dataset(cfg, seed=0)
    assert tok.vocab_size == 300 and tok.eos_id == 256
    docs = [packer.documents.tokens(i) for i in range(3)]
    assert [tok.decode(d) for d in docs] == texts[:3]
    assert all(d[-1] == tok.eos_id for d in docs)
    s = packer.next_sample()
    assert sum(s.doc_lens) == 128 and int(s.tokens.max()) < 300
