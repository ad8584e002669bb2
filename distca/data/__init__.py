"""Data pipeline: corpus -> tokenizer -> documents -> packer (samples of `seq_len` tokens)
-> this rank's micro-batches (`batching`, with next-token labels from `labels`).

`build_dataset(cfg.data, seed)` is the entry point. It is cheap (lists files or indexes
them; reads text only when the packer reaches a document) and deterministic: every rank
that calls it with the same config and seed gets the same packer, so the trainer can hand
each rank its own samples from one shared stream.
"""

from __future__ import annotations

from typing import Any

from .config import DataConfig, as_data_config, validate_data_config
from .distributions import LengthDistribution, get_distribution, sample_doc_lengths
from .documents import Documents, FirstDocuments, TextDocuments
from .holdout import SPLITS, held_out_split
from .packer import Packer, Sample
from .tokenizer import ByteTokenizer, TokenIdVocab

__all__ = [
    "DataConfig", "validate_data_config", "build_dataset", "build_documents", "Packer", "Sample",
    "ByteTokenizer", "TokenIdVocab", "LengthDistribution", "get_distribution", "sample_doc_lengths",
]

_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "tokens": (".bin", ".npy")}


def _text_tokenizer(cfg: DataConfig, corpus):
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    from .bpe import load_or_train_bpe
    return load_or_train_bpe(corpus, cfg.bpe_vocab_size)


def build_documents(data_cfg: Any, seed: int, split: str = "train") -> tuple[Any, Documents]:
    """The tokenizer and the (lazily tokenized) document collection for a data config; split
    "eval" gives the held-out documents instead of the training ones (distca/data/holdout.py)."""
    cfg = as_data_config(data_cfg)
    validate_data_config(cfg)
    if cfg.source in ("stdlib", "jsonl", "parquet"):
        if cfg.source == "stdlib":
            from .stdlib_corpus import StdlibCorpus
            corpus = StdlibCorpus()
        else:
            from .paths import expand_paths
            from .text_files import JsonlCorpus, ParquetCorpus
            files = expand_paths(cfg.paths, _SUFFIXES[cfg.source], cfg.source)
            if cfg.source == "jsonl" and cfg.preflight and split == "train":  # once per run
                from .preflight import preflight_jsonl
                preflight_jsonl(files, cfg.text_field)
            cls = JsonlCorpus if cfg.source == "jsonl" else ParquetCorpus
            corpus = cls(files, cfg.text_field)
        tokenizer = _text_tokenizer(cfg, corpus)
        documents: Documents = TextDocuments(corpus, tokenizer)
    elif cfg.source == "tokens":
        from .paths import expand_paths
        from .token_files import TokenFileDocuments
        files = expand_paths(cfg.paths, _SUFFIXES["tokens"], cfg.source)
        documents = TokenFileDocuments(files, cfg.token_dtype, cfg.token_vocab_size, cfg.token_eos_id)
        tokenizer = TokenIdVocab(cfg.token_vocab_size, cfg.token_eos_id)
    else:
        from .synthetic import SyntheticDocuments
        max_len = cfg.synthetic_max_doc_len if cfg.synthetic_max_doc_len > 0 else None
        documents = SyntheticDocuments(cfg.synthetic_dist, cfg.synthetic_tokens, cfg.synthetic_vocab,
                                       seed=int(seed) & ((1 << 64) - 1), max_len=max_len,
                                       stream=SPLITS.index(split))
        tokenizer = TokenIdVocab(documents.vocab_size, documents.eos_id)
    if cfg.max_documents > 0:
        documents = FirstDocuments(documents, cfg.max_documents)
    if cfg.source != "synthetic" and (cfg.holdout > 0 or split != "train"):
        documents = held_out_split(documents, cfg.holdout, split)
    return tokenizer, documents


def build_dataset(data_cfg: Any, seed: int, split: str = "train") -> tuple[Any, Packer]:
    """(tokenizer, packer) for `cfg.data`; `packer.next_sample()` gives a `Sample`.

    `data_cfg` may be a DataConfig, the OmegaConf node of one, or a plain dict. The packer
    shuffles document order per epoch from `seed` and is resumable via its state_dict.
    """
    cfg = as_data_config(data_cfg)
    tokenizer, documents = build_documents(cfg, seed, split)
    return tokenizer, Packer(documents, cfg.seq_len, seed)
