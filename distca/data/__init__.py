"""Data pipeline: corpus -> tokenizer -> documents -> step plan (from lengths alone, the same
on every rank) -> this rank's micro-batches, read in the background (`loader`).

`build_data(cfg.data, seed, split, model_dir)` is the entry point (distca/data/dataset.py):
cheap (lists files, maps indexes; reads text only when a step needs a document) and
deterministic: every rank that calls it with the same config and seed plans the same steps.
`build_dataset` / `Packer` give the single-source sample stream of earlier releases (tests,
quick looks). `distca-tokenize` (distca/data/tokenize_cli.py) writes indexed datasets.

Names are imported on first use, so `distca-tokenize` starts without importing torch.
"""

from __future__ import annotations

from typing import Any

from .config import DataConfig, MixSource, as_data_config, validate_data_config
from .distributions import LengthDistribution, get_distribution, sample_doc_lengths
from .documents import Documents, FirstDocuments, TextDocuments
from .holdout import SPLITS, held_out_split
from .tokenizer import ByteTokenizer, TokenIdVocab

__all__ = [
    "DataConfig", "MixSource", "as_data_config", "validate_data_config", "build_data", "Dataset",
    "build_dataset", "build_documents", "Packer", "Sample", "ByteTokenizer", "TokenIdVocab",
    "LengthDistribution", "get_distribution", "sample_doc_lengths", "Documents", "FirstDocuments",
    "TextDocuments", "SPLITS", "held_out_split",
]


def __getattr__(name: str) -> Any:
    """The names whose modules import torch, on first use (PEP 562)."""
    if name in ("Dataset", "build_data"):
        from . import dataset
        return getattr(dataset, name)
    if name in ("Packer", "Sample"):
        from . import packer
        return getattr(packer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_documents(data_cfg: Any, seed: int, split: str = "train", model_dir=None) -> tuple[Any, Any]:
    """The tokenizer and the documents of a single-source data config."""
    from .dataset import build_data
    data = build_data(data_cfg, seed, split, model_dir)
    if len(data.sources) != 1:
        raise ValueError("build_documents reads one source; this config has a data.mix (use build_data)")
    return data.tokenizer, data.sources[0]


def build_dataset(data_cfg: Any, seed: int, split: str = "train", model_dir=None) -> tuple[Any, Any]:
    """(tokenizer, packer) of a single-source config; `packer.next_sample()` gives a `Sample`."""
    from .packer import Packer
    tokenizer, documents = build_documents(data_cfg, seed, split, model_dir)
    return tokenizer, Packer(documents, as_data_config(data_cfg).seq_len, seed)
