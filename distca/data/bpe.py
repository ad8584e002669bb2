"""`data.tokenizer=bpe`: a byte-level BPE trained on the corpus with the `tokenizers` library's
trainer, cached, then used like any tokenizer.json (distca/data/hf_tokenizer.py).

Training reads a few MB of the corpus (documents spread over all of it, each contributing at
most 64 KB, so no single file dominates) and takes seconds. The result is a folder with
`tokenizer.json` and `tokenizer_config.json` (EOS `<|endoftext|>`, no BOS) under
`$DISTCA_CACHE/bpe/<hash>` (default `~/.cache/distca`), the hash covering the training text,
the vocabulary size and the library's version; later runs and the other ranks load it, and a
file lock makes concurrent ranks train once. Training is deterministic (same text, same
merges), so nodes without a shared cache train the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from .hf_tokenizer import HFTokenizer

_VERSION = 2  # 1 was the pure-Python BPE of earlier releases
TRAIN_BYTES = 4 << 20  # enough text for a few thousand merges; keeps training to seconds
EOS = "<|endoftext|>"


def training_sample(corpora: Sequence, budget: int = TRAIN_BYTES, per_document: int = 64 << 10) -> list[bytes]:
    """Up to `budget` bytes, an equal share from each text corpus, from documents in a fixed
    pseudo-random order (seed 0, not the training seed): the whole corpus is represented, and
    the sample depends only on it."""
    texts: list[bytes] = []
    share = budget // max(1, len(corpora))
    for corpus in corpora:
        total = 0
        for i in np.random.default_rng(0).permutation(len(corpus)).tolist():
            raw = corpus.raw(i)
            data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
            texts.append(data[:min(per_document, share - total)])
            total += len(texts[-1])
            if total >= share:
                break
    return texts


def train_bpe(texts: Sequence[bytes], vocab_size: int, folder: str) -> None:
    """Train a byte-level BPE (GPT-2's pre-tokenizer: words keep their leading space) on
    `texts` and save it as a tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((t.decode("utf-8", errors="replace") for t in texts), trainer)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": EOS, "add_bos_token": False}, f)


def cache_dir() -> str:
    return os.environ.get("DISTCA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distca")


def load_or_train_bpe(corpora: Sequence, vocab_size: int, cache: Optional[str] = None) -> HFTokenizer:
    """The BPE tokenizer of these text corpora: from the cache, or trained now and cached."""
    import tokenizers

    texts = training_sample(corpora)
    digest = hashlib.sha256(f"bpe-v{_VERSION}-{vocab_size}-{tokenizers.__version__}".encode())
    for t in texts:
        digest.update(len(t).to_bytes(8, "little"))
        digest.update(t)
    root = os.path.join(cache or cache_dir(), "bpe")
    os.makedirs(root, exist_ok=True)
    folder = os.path.join(root, digest.hexdigest()[:24])
    import fcntl

    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains; the others wait, then load
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            tmp = f"{folder}.{os.getpid()}.tmp"
            train_bpe(texts, vocab_size, tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    return HFTokenizer(folder, field="data.tokenizer=bpe (cached in " + root + ")")
