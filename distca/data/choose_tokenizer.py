"""Which tokenizer a run uses (`data.tokenizer`, `data.tokenizer_path`, the model folder) and
the vocabulary its data lives in.

`resolve_tokenizer(data_cfg, model_dir)` decides from the config alone: `auto` is the model
folder's tokenizer.json when it has one (a run continuing a pretrained model tokenizes with
that model's tokenizer), else bytes; `hf` reads data.tokenizer_path (or the model folder);
`byte` and `bpe` need no file. `load_tokenizer` then builds it; data that is already ids
(indexed datasets, synthetic) only needs its vocabulary size: from the tokenizer file when
there is one, else `data.token_vocab_size`, else the synthetic language's.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .config import DataConfig, mix_entries
from .hf_tokenizer import HFTokenizer, has_tokenizer
from .tokenizer import ByteTokenizer, TokenIdVocab

TEXT_SOURCES = ("stdlib", "jsonl", "parquet")


def resolve_tokenizer(data_cfg: DataConfig, model_dir: Optional[str]) -> tuple[str, str]:
    """(kind, path): kind byte | hf | bpe, path the tokenizer file or folder for hf."""
    kind = str(data_cfg.tokenizer)
    if kind == "auto":
        if data_cfg.tokenizer_path:
            return "hf", data_cfg.tokenizer_path
        if model_dir and has_tokenizer(model_dir):
            return "hf", os.path.expanduser(model_dir)
        return "byte", ""
    if kind == "hf":
        return "hf", data_cfg.tokenizer_path or (model_dir or "")
    return kind, ""


def load_tokenizer(cfg: DataConfig, model_dir: Optional[str], text_corpora: Sequence = ()):
    """The run's tokenizer (or, for id data without a tokenizer file, its vocabulary)."""
    kind, path = resolve_tokenizer(cfg, model_dir)
    kinds = {str(sub.source) for _, _, sub in mix_entries(cfg)}
    if kind == "hf":
        tokenizer = HFTokenizer(path)
    elif kind == "bpe":
        from .bpe import load_or_train_bpe
        tokenizer = load_or_train_bpe(text_corpora, cfg.bpe_vocab_size)
    elif kind == "byte" and kinds & set(TEXT_SOURCES):
        tokenizer = ByteTokenizer()
    elif "tokens" in kinds:
        if cfg.token_vocab_size < 1:
            raise ValueError("data.token_vocab_size: the tokens source needs the vocabulary of the tokenizer "
                             "that made the dataset. Fix: set data.tokenizer_path=/path/to/tokenizer (a "
                             "tokenizer.json or model folder), or data.token_vocab_size=N")
        tokenizer = TokenIdVocab(cfg.token_vocab_size)
    else:  # synthetic data alone: its own language
        tokenizer = TokenIdVocab(cfg.synthetic_vocab, cfg.synthetic_vocab - 1)
    if cfg.token_vocab_size > 0 and "tokens" in kinds and tokenizer.vocab_size != cfg.token_vocab_size:
        where = getattr(tokenizer, "path", "") or f"data.tokenizer={kind}"
        raise ValueError(f"data.token_vocab_size={cfg.token_vocab_size} but the tokenizer ({where}) has "
                         f"{tokenizer.vocab_size} ids. Fix: drop data.token_vocab_size (the tokenizer's is used), "
                         "or point data.tokenizer_path at the tokenizer that made the dataset")
    if "synthetic" in kinds and cfg.synthetic_vocab > tokenizer.vocab_size:
        raise ValueError(f"data.synthetic_vocab={cfg.synthetic_vocab} exceeds the run's vocabulary of "
                         f"{tokenizer.vocab_size} ids (the tokenizer's). Fix: data.synthetic_vocab="
                         f"{tokenizer.vocab_size} or smaller")
    return tokenizer
