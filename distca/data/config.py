"""The data section of the config schema (`cfg.data`).

Hydra's structured-config rules shape this file: only simple field types, lists through
`field(default_factory=...)`, and `typing.List` (OmegaConf 2.3 does not read `list[str]`).
Choice fields are enums, so Hydra rejects an unknown value at composition listing the
choices; `validate_data_config` is the one place that turns bad values into errors that name
the override (`data.<field>`) and how to fix it (for configs built in code, and for rules
that involve several fields); `build_dataset` calls it before touching disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, List

from parallel.config import Choice


class Source(Choice):
    stdlib = "stdlib"
    jsonl = "jsonl"
    parquet = "parquet"
    tokens = "tokens"
    synthetic = "synthetic"


class TokenDtype(Choice):
    uint16 = "uint16"
    uint32 = "uint32"


class TokenizerKind(Choice):
    byte = "byte"
    bpe = "bpe"


class SyntheticDist(Choice):
    pretrain = "pretrain"
    longctx = "longctx"


SOURCES = Source.names()
TOKEN_DTYPES = TokenDtype.names()
TOKENIZERS = TokenizerKind.names()
SYNTHETIC_DISTS = SyntheticDist.names()


@dataclass
class DataConfig:
    # Where documents come from:
    #   stdlib    the Python standard library's .py files, one document each (no download)
    #   jsonl     text files with one JSON object per line; the text is `text_field`
    #   parquet   parquet files; the text is the string column `text_field`
    #   tokens    pre-tokenized flat arrays (.bin raw or .npy) of `token_dtype`, documents
    #             separated by `token_eos_id` (see distca/data/token_files.py)
    #   synthetic random token ids, document lengths drawn from `synthetic_dist`
    source: Source = Source.stdlib
    # Files, directories or glob patterns (`**` allowed) for jsonl / parquet / tokens.
    paths: List[str] = field(default_factory=list)
    text_field: str = "text"
    token_dtype: TokenDtype = TokenDtype.uint16
    # Pre-tokenized data was made by a tokenizer we do not have: the trainer needs its
    # vocabulary size and end-of-document id from the config.
    token_vocab_size: int = -1
    token_eos_id: int = -1
    # Tokens per packed sample (the context length).
    seq_len: int = 512
    # Text sources only: "byte" (256 bytes + EOS + PAD) or "bpe" (trained locally on the
    # whole corpus, before max_documents, and cached; see distca/data/bpe.py). A corpus with
    # few distinct words may yield fewer merges: the tokenizer's vocab_size is authoritative.
    tokenizer: TokenizerKind = TokenizerKind.byte
    bpe_vocab_size: int = 4096
    # Synthetic source: document-length distribution (distca/data/distributions.py),
    # vocabulary size, corpus size in tokens (one epoch), longest document (-1: the
    # distribution's own default).
    synthetic_dist: SyntheticDist = SyntheticDist.pretrain
    synthetic_vocab: int = 32000
    synthetic_tokens: int = 1 << 24
    synthetic_max_doc_len: int = -1
    # Use only the first N documents in the corpus' canonical order (-1: all).
    max_documents: int = -1


def _fail(name: str, problem: str, fix: str) -> None:
    raise ValueError(f"data.{name}: {problem}. Fix: {fix}")


def _choice(cfg: DataConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        _fail(name, f"unknown value {value!r}", f"set data.{name} to one of {', '.join(allowed)}")


def validate_data_config(cfg: DataConfig) -> None:
    """Raise ValueError naming the first bad field; checks values, not files (see paths.py)."""
    _choice(cfg, "source", SOURCES)
    _choice(cfg, "token_dtype", TOKEN_DTYPES)
    _choice(cfg, "tokenizer", TOKENIZERS)
    _choice(cfg, "synthetic_dist", SYNTHETIC_DISTS)
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
        _fail("seq_len", f"must be a positive integer, got {cfg.seq_len!r}", "e.g. data.seq_len=4096")
    if cfg.max_documents == 0 or cfg.max_documents < -1:
        _fail("max_documents", f"got {cfg.max_documents}", "use -1 for all documents or a positive cap")
    if cfg.source in ("jsonl", "parquet", "tokens") and not cfg.paths:
        _fail("paths", f"source {cfg.source!r} needs files but data.paths is empty",
              "e.g. data.paths='[/data/train/*.%s]'" % {"jsonl": "jsonl", "parquet": "parquet",
                                                          "tokens": "bin"}[cfg.source])
    if cfg.source in ("jsonl", "parquet") and not cfg.text_field:
        _fail("text_field", "is empty", "name the column / JSON key holding the text, e.g. data.text_field=text")
    if cfg.source == "tokens":
        limit = 1 << (16 if cfg.token_dtype == "uint16" else 32)
        if not 1 <= cfg.token_vocab_size <= limit:
            _fail("token_vocab_size", f"got {cfg.token_vocab_size} for {cfg.token_dtype} token files",
                  f"set it to the vocabulary size of the tokenizer that made the files (at most {limit})")
        if not 0 <= cfg.token_eos_id < cfg.token_vocab_size:
            _fail("token_eos_id", f"got {cfg.token_eos_id}, must be in [0, {cfg.token_vocab_size})",
                  "set it to the end-of-document id that separates documents in the token files")
    if cfg.source == "synthetic":
        if cfg.synthetic_vocab < 2:
            _fail("synthetic_vocab", f"got {cfg.synthetic_vocab}", "use at least 2 (one id is EOS)")
        if cfg.synthetic_tokens < 1:
            _fail("synthetic_tokens", f"got {cfg.synthetic_tokens}", "use a positive token count, e.g. 16777216")
        if cfg.synthetic_max_doc_len != -1 and cfg.synthetic_max_doc_len < 2:
            _fail("synthetic_max_doc_len", f"got {cfg.synthetic_max_doc_len}",
                  "use -1 (the distribution's default) or at least 2")
    if cfg.tokenizer == "bpe" and cfg.source in ("tokens", "synthetic"):
        _fail("tokenizer", f"bpe tokenizes text, but data.source={cfg.source} is already token ids",
              "drop data.tokenizer (or set it to byte), or use a text source")
    if cfg.tokenizer == "bpe" and not 258 < cfg.bpe_vocab_size <= 65536:
        _fail("bpe_vocab_size", f"got {cfg.bpe_vocab_size}", "use a size in (258, 65536], e.g. 4096")


def as_data_config(cfg: Any) -> DataConfig:
    """Accept a DataConfig, an OmegaConf node of the schema, or a plain mapping."""
    if isinstance(cfg, DataConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # plain mappings still work without OmegaConf
        DictConfig = ()  # type: ignore[assignment]
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
        if isinstance(cfg, DataConfig):
            return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"data config must be a DataConfig or a mapping, got {type(cfg).__name__}")
    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"data: unknown field(s) {', '.join(unknown)}. Fix: use only {', '.join(sorted(known))}")
    values = dict(cfg)
    if "paths" in values:
        values["paths"] = list(values["paths"])
    return DataConfig(**values)
