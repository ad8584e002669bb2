"""A small byte-level BPE tokenizer, trained locally on the corpus and cached (`data.tokenizer=bpe`).

Ids 0..255 are bytes, 256 is EOS, 257 PAD, and every merge adds one id from 258 up to
`data.bpe_vocab_size`. Text is first split into chunks (words with their leading space,
digit runs, punctuation runs, whitespace) so merges never cross a word boundary, as in
GPT-2's tokenizer; then merges are learned the usual way: repeatedly fuse the most frequent
adjacent pair (ties go to the smaller pair, so training is deterministic).

Training reads a few MB of the corpus (documents spread over all of it) and takes seconds; the
merges are cached in `$DISTCA_CACHE` (default `~/.cache/distca`) under a hash of the
training text and vocabulary size, so later runs and the other ranks load them. A file lock
makes concurrent ranks train once.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
from collections import Counter, defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np

_VERSION = 1
_CHUNK = re.compile(rb"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z_\x80-\xff]+| ?[0-9]{1,3}| ?[^\sA-Za-z_0-9\x80-\xff]+|\s+(?!\S)|\s+""")
TRAIN_BYTES = 4 << 20  # enough text for a few thousand merges; keeps training to seconds


class BPETokenizer:
    eos_id = 256  # ids 0..255 are bytes, 257 is reserved (as ByteTokenizer), merges follow
    name = "bpe"

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None:
        self.merges = [tuple(m) for m in merges]
        self.vocab_size = 258 + len(self.merges)
        self._rank = {pair: i for i, pair in enumerate(self.merges)}
        self._bytes: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[bytes, list[int]] = {}

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        ids = list(chunk)
        while len(ids) > 1:
            best, where = None, -1
            for i in range(len(ids) - 1):
                r = self._rank.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r < best):
                    best, where = r, i
            if best is None:
                break
            pair, new_id = self.merges[best], 258 + best
            out, i = [], 0
            while i < len(ids):  # fuse every occurrence of the best pair, left to right
                if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self._cache) < 1 << 20:
            self._cache[chunk] = ids
        return ids

    def encode_bytes(self, data: bytes) -> np.ndarray:
        ids: list[int] = []
        for chunk in _CHUNK.findall(data):
            ids.extend(self._encode_chunk(chunk))
        return np.asarray(ids, dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8")).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")


def train_bpe(texts: Iterable[bytes], vocab_size: int) -> list[tuple[int, int]]:
    """Merges learned from `texts` until the vocabulary (258 + merges) reaches `vocab_size`."""
    counts = Counter(chunk for text in texts for chunk in _CHUNK.findall(text))
    words = [list(chunk) for chunk in counts]
    freqs = list(counts.values())
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (symbols, f) in enumerate(zip(words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 258 and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg < 2:
            if pair_count.get(pair, 0) == -neg:  # most frequent pair occurs once: stop
                break
            continue  # stale heap entry
        new_id = 258 + len(merges)
        merges.append(pair)
        changed: dict[tuple[int, int], int] = defaultdict(int)
        for w in sorted(where.pop(pair)):
            symbols, f = words[w], freqs[w]
            for p in zip(symbols, symbols[1:]):
                changed[p] -= f
            out, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[w] = out
            for p in zip(out, out[1:]):
                changed[p] += f
                where[p].add(w)
        del pair_count[pair]
        for p, delta in changed.items():
            if p == pair or delta == 0:
                continue
            pair_count[p] += delta
            if pair_count[p] <= 0:
                del pair_count[p]
            else:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


def training_sample(corpus, budget: int = TRAIN_BYTES, per_document: int = 64 << 10) -> list[bytes]:
    """Up to `budget` bytes from documents in a fixed pseudo-random order (seed 0, not the
    training seed): the whole corpus is represented, and the sample depends only on it.
    Each document contributes at most `per_document` bytes so no single file dominates."""
    texts, total = [], 0
    for i in np.random.default_rng(0).permutation(len(corpus)).tolist():
        raw = corpus.raw(i)
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        texts.append(data[:min(per_document, budget - total)])
        total += len(texts[-1])
        if total >= budget:
            break
    return texts


def _cache_dir() -> str:
    return os.environ.get("DISTCA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distca")


def load_or_train_bpe(corpus, vocab_size: int, cache_dir: Optional[str] = None) -> BPETokenizer:
    texts = training_sample(corpus)
    digest = hashlib.sha256(f"bpe-v{_VERSION}-{vocab_size}".encode())
    for t in texts:
        digest.update(len(t).to_bytes(8, "little"))
        digest.update(t)
    folder = os.path.join(cache_dir or _cache_dir(), "bpe")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{digest.hexdigest()[:24]}.json")
    import fcntl

    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains; the others wait, then load
        if not os.path.exists(path):
            merges = train_bpe(texts, vocab_size)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"version": _VERSION, "vocab_size": vocab_size, "merges": merges}, f)
            os.replace(tmp, path)
    with open(path) as f:
        return BPETokenizer([tuple(m) for m in json.load(f)["merges"]])
