"""Small data fixtures shared by the data tests: corpora, a tiny tokenizer trained in the test
(tokenizers' BpeTrainer on a few KB, no download), and a stand-in for the parallel plan."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from parallel.context.shard import build_shard

WORDS = ("the plan cuts attention into tasks and every rank serves its share of queries keys "
         "values documents tokens layers ranks balance step loss gradient shard ring gather").split()


def texts(n: int, seed: int = 0, longest: int = 400) -> list[str]:
    """Seeded random texts of mixed lengths (some unicode, some empty)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, longest // 4))
        out.append(" ".join(rng.choice(WORDS, size=k)) + (" ünï ✓" if i % 7 == 0 else ""))
    return out


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> str:
    with open(path, "w") as f:
        for t in docs:
            f.write(json.dumps({field: t}) + "\n")
    return str(path)


def tiny_tokenizer(folder: Path, vocab_size: int = 300, add_bos: bool = True) -> str:
    """A byte-level BPE trained here on a few KB, saved as a model folder would hold it:
    tokenizer.json + tokenizer_config.json (BOS <s>, EOS </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(200, seed=1), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": add_bos}))
    return str(folder)


def layout(dp: int, dp_rank: int, cp: int = 1, cp_rank: int = 0, shard_layout: str = "contiguous"):
    """What the loader uses of a ParallelPlan, for one simulated rank."""
    return SimpleNamespace(dims=SimpleNamespace(dp=dp), dp_rank=dp_rank,
                           build_shard=lambda doc_lens: build_shard(doc_lens, cp_rank, cp, layout=shard_layout))


def indexed_dataset(prefix: Path, lengths, vocab: int = 258, seed: int = 0) -> list[np.ndarray]:
    """An indexed dataset of documents with these lengths (ids < vocab, EOS 256 last), written
    with our writer; returns the documents."""
    from distca.data.indexed import IndexedWriter, token_dtype
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(0, 256, n - 1), 256) for n in lengths]
    w = IndexedWriter(str(prefix), token_dtype(vocab))
    w.add(np.concatenate(docs), [len(d) for d in docs])
    w.close()
    return docs
