"""Building the documents of one source (data.source / data.paths, or one data.mix entry).

Text sources (stdlib, jsonl, parquet) index their files and tokenize lazily; indexed datasets
(tokens) map their .idx; synthetic data draws its lengths. Then `data.max_documents` and the
held-out split (`data.holdout`) narrow the collection. Nothing here reads tokens.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

from .config import DataConfig
from .documents import Documents, FirstDocuments, TextDocuments
from .holdout import SPLITS, held_out_split
from .paths import expand_paths

_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


def text_corpus(cfg: DataConfig, split: str):
    """The raw text collection of a text source (no tokenizer yet)."""
    if cfg.source == "stdlib":
        from .stdlib_corpus import StdlibCorpus
        return StdlibCorpus()
    from .text_files import JsonlCorpus, ParquetCorpus
    files = expand_paths(cfg.paths, _SUFFIXES[str(cfg.source)], str(cfg.source))
    if cfg.source == "jsonl" and cfg.preflight and split == "train":  # once per run
        from .preflight import preflight_jsonl
        preflight_jsonl(files, cfg.text_field)
    cls = JsonlCorpus if cfg.source == "jsonl" else ParquetCorpus
    return cls(files, cfg.text_field)


def dataset_prefixes(patterns, field: str = "data.paths") -> list[str]:
    """Indexed-dataset prefixes named by `patterns`: a PREFIX, PREFIX.bin / PREFIX.idx, a
    folder (every .idx under it) or a glob. Sorted, so every rank sees the same order."""
    prefixes: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if set("*?[") & set(pattern):
            hits = [p for p in glob.glob(pattern, recursive=True) if p.endswith((".idx", ".bin", ".npy"))]
        elif os.path.isdir(pattern):
            hits = [os.path.join(r, n) for r, _, names in os.walk(pattern) for n in names if n.endswith(".idx")]
        else:
            hits = [pattern]
        if not hits:
            raise ValueError(f"{field}: {pattern!r} matched no indexed dataset (.idx/.bin). Fix: give dataset "
                             "prefixes written by distca-tokenize (or Megatron's preprocess_data.py)")
        for hit in hits:
            base = hit[:-4] if hit.endswith((".idx", ".bin", ".npy")) else hit
            if hit.endswith(".npy") or (not os.path.exists(base + ".idx") and os.path.exists(base + ".npy")):
                raise ValueError(f"{field}: {base}.npy is a raw token array; data=tokens reads indexed datasets. "
                                 f"Fix: distca-tokenize --from-ids {base}.npy --token-dtype DTYPE --eos-id ID "
                                 f"--output {base}")
            if not os.path.exists(base + ".idx"):
                if os.path.exists(base + ".bin"):
                    raise ValueError(f"{field}: {base}.bin has no index {base}.idx (a raw token file?). Fix: "
                                     f"distca-tokenize --from-ids {base}.bin --token-dtype DTYPE --eos-id ID "
                                     "writes the index beside it (the tokens stay where they are)")
                raise ValueError(f"{field}: {base}.idx does not exist. Fix: give the prefix of an indexed "
                                 "dataset (PREFIX.bin + PREFIX.idx)")
            if not os.path.exists(base + ".bin"):
                raise ValueError(f"{field}: {base}.idx has no {base}.bin beside it. Fix: copy the .bin too")
            prefixes.add(os.path.abspath(base))
    return sorted(prefixes)


class IndexedDocuments:
    """Several indexed datasets as one collection, documents numbered prefix by prefix."""

    def __init__(self, prefixes: list[str], vocab_size: Optional[int]) -> None:
        import numpy as np

        from .indexed import IndexedDataset
        self.parts = [IndexedDataset(p, vocab_size) for p in prefixes]
        self._starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple:
        import bisect
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self._starts.tolist(), index) - 1 if len(self.parts) > 1 else 0
        return self.parts[k], index - int(self._starts[k])

    def lengths(self, indices):
        import numpy as np
        indices = np.asarray(indices, dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0].lengths(indices)
        out = np.empty(indices.size, dtype=np.int64)
        which = np.searchsorted(self._starts, indices, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.parts[k].lengths(indices[sel] - self._starts[k])
        return out

    def length(self, index: int) -> int:
        part, i = self._locate(index)
        return part.length(i)

    def read(self, index: int, start: int, stop: int):
        part, i = self._locate(index)
        return part.read(i, start, stop)

    def tokens(self, index: int):
        part, i = self._locate(index)
        return part.tokens(i)


def build_source(cfg: DataConfig, seed: int, split: str, tokenizer, corpus=None) -> Documents:
    """The documents of one source for `split` ("train" or "eval"); `corpus` reuses a text
    corpus already indexed (for the BPE's training sample)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.source in ("stdlib", "jsonl", "parquet"):
        documents: Documents = TextDocuments(corpus if corpus is not None else text_corpus(cfg, split), tokenizer)
    elif cfg.source == "tokens":
        documents = IndexedDocuments(dataset_prefixes(cfg.paths), tokenizer.vocab_size)
        if len(documents) == 0 or sum(p.num_tokens for p in documents.parts) == 0:
            names = ", ".join(p.prefix + ".bin" for p in documents.parts)
            raise ValueError(f"data.paths: {names} hold(s) no tokens. Fix: point data.paths at non-empty "
                             "datasets (or tokenize the corpus again)")
    else:
        from .synthetic import SyntheticDocuments
        max_len = cfg.synthetic_max_doc_len if cfg.synthetic_max_doc_len > 0 else None
        documents = SyntheticDocuments(cfg.synthetic_dist, cfg.synthetic_tokens, cfg.synthetic_vocab,
                                       seed=int(seed) & ((1 << 64) - 1), max_len=max_len,
                                       stream=SPLITS.index(split))
    if cfg.max_documents > 0:
        documents = FirstDocuments(documents, cfg.max_documents)
    if cfg.source != "synthetic" and (cfg.holdout > 0 or split != "train"):
        documents = held_out_split(documents, cfg.holdout, split)
    return documents
