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
    stdlib = "stdlib"       # the Python standard library's .py files, one document each (no download)
    jsonl = "jsonl"         # text files with one JSON object per line; the text is data.text_field
    parquet = "parquet"     # parquet files; the text is the string column data.text_field
    tokens = "tokens"       # pre-tokenized arrays (.bin raw or .npy), documents split by data.token_eos_id
    synthetic = "synthetic" # a small learnable language, document lengths from data.synthetic_dist


class TokenDtype(Choice):
    uint16 = "uint16"
    uint32 = "uint32"


class TokenizerKind(Choice):
    byte = "byte"           # 256 bytes + EOS + PAD
    bpe = "bpe"             # trained locally on the whole corpus and cached (distca/data/bpe.py)


class SyntheticDist(Choice):
    pretrain = "pretrain"   # pretraining-like: most documents short, a heavy tail to 128K
    longctx = "longctx"     # long-context mix: many long documents


SOURCES = Source.names()
TOKEN_DTYPES = TokenDtype.names()
TOKENIZERS = TokenizerKind.names()
SYNTHETIC_DISTS = SyntheticDist.names()


@dataclass
class DataConfig:
    source: Source = Source.stdlib  # where documents come from (stdlib needs no download)
    paths: List[str] = field(default_factory=list)  # files, folders, globs (** too): jsonl/parquet/tokens
    text_field: str = "text"        # jsonl key / parquet column holding the text
    preflight: bool = True          # scan every jsonl line before step 1 (errors give path:line)
    token_dtype: TokenDtype = TokenDtype.uint16  # element type of pre-tokenized (tokens) files
    # Pre-tokenized data was made by a tokenizer we do not have: the trainer needs its
    # vocabulary size and end-of-document id from the config.
    token_vocab_size: int = -1      # tokens source: vocabulary size of the tokenizer that made the files
    token_eos_id: int = -1          # tokens source: the end-of-document id separating documents
    seq_len: int = 512              # tokens per packed sample (the context length)
    # Text sources only: "byte" (256 bytes + EOS + PAD) or "bpe" (trained locally on the
    # whole corpus, before max_documents, and cached; see distca/data/bpe.py). A corpus with
    # few distinct words may yield fewer merges: the tokenizer's vocab_size is authoritative.
    tokenizer: TokenizerKind = TokenizerKind.byte  # text sources: byte-level or a locally trained BPE
    bpe_vocab_size: int = 4096      # bpe: target vocabulary size (a small corpus may give fewer merges)
    # Synthetic source: document-length distribution (distca/data/distributions.py),
    # vocabulary size, corpus size in tokens (one epoch), longest document (-1: the
    # distribution's own default).
    synthetic_dist: SyntheticDist = SyntheticDist.pretrain  # synthetic: document-length distribution
    synthetic_vocab: int = 32000    # synthetic: vocabulary size (the last id is EOS)
    synthetic_tokens: int = 1 << 24  # synthetic: corpus size in tokens (one epoch)
    synthetic_max_doc_len: int = -1  # synthetic: longest document (-1: the distribution's default)
    max_documents: int = -1         # use only the first N documents in canonical order (-1: all)
    # Evaluation (eval.every) reads documents training never sees: file and stdlib sources
    # keep the last ceil(holdout x N) of their documents (after max_documents) out of the
    # training stream; synthetic data ignores it and evaluates on another stream of the same
    # language.
    holdout: float = 0.0            # share of documents kept out of training for eval (0: none)


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
    if not 0.0 <= cfg.holdout < 1.0:
        _fail("holdout", f"got {cfg.holdout}",
              "use a share in [0, 1), e.g. data.holdout=0.01 (1% of the documents)")
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
