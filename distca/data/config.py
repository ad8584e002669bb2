"""The data section of the config schema (`cfg.data`).

Hydra's structured-config rules shape this file: only simple field types, lists through
`field(default_factory=...)`, and `typing.List` (OmegaConf 2.3 does not read `list[str]`).
Choice fields are enums, so Hydra rejects an unknown value at composition listing the
choices; `validate_data_config` is the one place that turns bad values into errors that name
the override (`data.<field>`) and how to fix it (for configs built in code, and for rules
that involve several fields); `build_data` calls it before touching disk.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, List, Optional

from parallel.config import Choice


class Source(Choice):
    stdlib = "stdlib"       # the Python standard library's .py files, one document each (no download)
    jsonl = "jsonl"         # text files with one JSON object per line; the text is data.text_field
    parquet = "parquet"     # parquet files; the text is the string column data.text_field
    tokens = "tokens"       # Megatron indexed datasets (PREFIX.bin + PREFIX.idx; distca-tokenize writes them)
    synthetic = "synthetic" # a small learnable language, document lengths from data.synthetic_dist


class TokenizerKind(Choice):
    auto = "auto"           # the model.init_from folder's tokenizer.json when it has one, else byte
    byte = "byte"           # 256 bytes + EOS + PAD
    hf = "hf"               # a tokenizer.json (file, or a model folder) at data.tokenizer_path
    bpe = "bpe"             # a byte-level BPE trained on the corpus with the tokenizers library, cached


class Packing(Choice):
    sequential = "sequential"  # documents back to back in stream order, cut every data.seq_len tokens
    balanced = "balanced"      # the same pieces laid out so every micro-batch and DP rank gets an even attention cost (sum of squared lengths)


class SyntheticDist(Choice):
    pretrain = "pretrain"   # pretraining-like: most documents short, a heavy tail to 128K
    longctx = "longctx"     # long-context mix: many long documents


SOURCES = Source.names()
TOKENIZERS = TokenizerKind.names()
PACKINGS = Packing.names()
SYNTHETIC_DISTS = SyntheticDist.names()


@dataclass
class MixSource:
    """One weighted source of `data.mix`; unset fields take the value of `data.<field>`."""
    weight: float = 1.0                  # share of the samples (normalised over the mix)
    name: str = ""                       # metrics key data_tokens_<name> ("": mix<i>)
    source: Optional[Source] = None      # null: data.source
    paths: List[str] = field(default_factory=list)  # this source's files (jsonl, parquet, tokens)
    text_field: Optional[str] = None     # null: data.text_field
    synthetic_dist: Optional[SyntheticDist] = None  # null: data.synthetic_dist
    synthetic_tokens: Optional[int] = None          # null: data.synthetic_tokens


@dataclass
class DataConfig:
    source: Source = Source.stdlib  # where documents come from (stdlib needs no download)
    paths: List[str] = field(default_factory=list)  # files, folders, globs (** too); tokens: dataset prefixes
    text_field: str = "text"        # jsonl key / parquet column holding the text
    preflight: bool = True          # scan every jsonl line before step 1 (errors give path:line)
    # Indexed datasets (data.source=tokens) were made by some tokenizer: the trainer needs its
    # vocabulary size, from data.tokenizer_path (or the model folder's tokenizer) or from here.
    token_vocab_size: int = -1      # tokens source: vocabulary size of the tokenizer that made the dataset (-1: the tokenizer's)
    seq_len: int = 512              # tokens per packed sample (the context length)
    tokenizer: TokenizerKind = TokenizerKind.auto  # how text becomes token ids
    tokenizer_path: str = ""        # hf: a tokenizer.json, or a folder with tokenizer.json (+ tokenizer_config.json)
    bpe_vocab_size: int = 4096      # bpe: target vocabulary size (a small corpus may give fewer)
    # Each sample comes from one source, the one most behind its weight; one tokenizer for all.
    mix: List[MixSource] = field(default_factory=list)  # weighted sources, e.g. '[{paths:[/d/long],weight:0.6,name:long},{paths:[/d/short],weight:0.4}]'; entry fields weight, name, source, paths, text_field, synthetic_dist, synthetic_tokens (unset: data.*); []: data.source alone
    packing: Packing = Packing.sequential  # how the step's documents are laid into micro-batches
    prefetch: bool = True           # prepare the next step's data in a background thread while this step runs
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


def _choice(cfg: Any, name: str, allowed: tuple[str, ...], where: str = "") -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        _fail(where + name, f"unknown value {value!r}", f"set data.{where}{name} to one of {', '.join(allowed)}")


_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def mix_entries(cfg: DataConfig) -> list[tuple[str, float, DataConfig]]:
    """(name, weight, the data config of that source) for every source of the run: the mix's
    entries, or the one source data.source / data.paths with weight 1."""
    if not cfg.mix:
        return [("data", 1.0, cfg)]
    out = []
    for i, entry in enumerate(cfg.mix):
        e = entry if isinstance(entry, MixSource) else MixSource(**dict(entry))
        sub = replace(cfg, mix=[], paths=list(e.paths),
                      **{k: getattr(e, k) for k in ("source", "text_field", "synthetic_dist", "synthetic_tokens")
                         if getattr(e, k) is not None})
        out.append((e.name or f"mix{i}", float(e.weight), sub))
    return out


def _validate_source(cfg: DataConfig, where: str) -> None:
    """The rules of one source (data.* itself, or one mix entry seen through data.*)."""
    _choice(cfg, "source", SOURCES)
    _choice(cfg, "synthetic_dist", SYNTHETIC_DISTS)
    if cfg.source in ("jsonl", "parquet", "tokens") and not cfg.paths:
        example = {"jsonl": "/data/train/*.jsonl", "parquet": "/data/train/*.parquet",
                   "tokens": "/data/corpus_text_document"}[cfg.source]
        _fail(f"{where}paths", f"source {cfg.source!r} needs files but data.{where}paths is empty",
              f"e.g. data.{where}paths='[{example}]'")
    if cfg.source in ("jsonl", "parquet") and not cfg.text_field:
        _fail(f"{where}text_field", "is empty", "name the column / JSON key holding the text, e.g. data.text_field=text")
    if cfg.source == "synthetic":
        if cfg.synthetic_vocab < 2:
            _fail("synthetic_vocab", f"got {cfg.synthetic_vocab}", "use at least 2 (one id is EOS)")
        if cfg.synthetic_tokens < 1:
            _fail(f"{where}synthetic_tokens", f"got {cfg.synthetic_tokens}", "use a positive token count, e.g. 16777216")
        if cfg.synthetic_max_doc_len != -1 and cfg.synthetic_max_doc_len < 2:
            _fail("synthetic_max_doc_len", f"got {cfg.synthetic_max_doc_len}",
                  "use -1 (the distribution's default) or at least 2")


def validate_data_config(cfg: DataConfig) -> None:
    """Raise ValueError naming the first bad field; checks values, not files (see paths.py)."""
    _choice(cfg, "tokenizer", TOKENIZERS)
    _choice(cfg, "packing", PACKINGS)
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
        _fail("seq_len", f"must be a positive integer, got {cfg.seq_len!r}", "e.g. data.seq_len=4096")
    if not 0.0 <= cfg.holdout < 1.0:
        _fail("holdout", f"got {cfg.holdout}",
              "use a share in [0, 1), e.g. data.holdout=0.01 (1% of the documents)")
    if cfg.max_documents == 0 or cfg.max_documents < -1:
        _fail("max_documents", f"got {cfg.max_documents}", "use -1 for all documents or a positive cap")
    if cfg.token_vocab_size == 0 or cfg.token_vocab_size < -1:
        _fail("token_vocab_size", f"got {cfg.token_vocab_size}",
              "use -1 (the tokenizer's) or the vocabulary size of the tokenizer that made the dataset")
    if cfg.tokenizer == "hf" and not cfg.tokenizer_path:
        _fail("tokenizer_path", "data.tokenizer=hf needs a tokenizer file but data.tokenizer_path is empty",
              "set data.tokenizer_path=/path/to/model_folder (or its tokenizer.json), or data.tokenizer=auto")
    if cfg.tokenizer_path and cfg.tokenizer not in ("hf", "auto"):
        _fail("tokenizer_path", f"is set but data.tokenizer={cfg.tokenizer} does not read it",
              "set data.tokenizer=hf (or auto), or drop data.tokenizer_path")
    if cfg.tokenizer == "bpe" and not 258 < cfg.bpe_vocab_size <= 1 << 20:
        _fail("bpe_vocab_size", f"got {cfg.bpe_vocab_size}", "use a size above 258, e.g. 4096")
    if cfg.mix:
        if cfg.paths:
            _fail("paths", "is set together with data.mix (each mix entry names its own files)",
                  "move the files into the mix entries' paths, or drop data.mix")
        names = set()
        for i, (name, weight, sub) in enumerate(mix_entries(cfg)):
            where = f"mix[{i}]."
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                _fail(f"{where}weight", f"got {weight!r}", "use a positive weight, e.g. 0.6")
            if not _NAME.match(name) or name in names:
                _fail(f"{where}name", f"{name!r} is not a unique name of letters, digits and _",
                      "give every mix entry its own name, e.g. name=long")
            names.add(name)
            _validate_source(sub, where)
    else:
        _validate_source(cfg, "")
    kinds = {sub.source for _, _, sub in mix_entries(cfg)}
    if cfg.tokenizer == "bpe" and not kinds & {"stdlib", "jsonl", "parquet"}:
        _fail("tokenizer", f"bpe is trained on text, but data.source={'/'.join(sorted(map(str, kinds)))} "
              "is already token ids", "drop data.tokenizer (auto), or use a text source")


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
    if "mix" in values:
        entry_known = {f.name for f in fields(MixSource)}
        mix = []
        for i, e in enumerate(values["mix"]):
            if isinstance(e, MixSource):
                mix.append(e)
                continue
            bad = sorted(set(e) - entry_known)
            if bad:
                raise ValueError(f"data.mix[{i}]: unknown field(s) {', '.join(bad)}. "
                                 f"Fix: use only {', '.join(sorted(entry_known))}")
            mix.append(MixSource(**{**e, "paths": list(e.get("paths", []))}))
        values["mix"] = mix
    return DataConfig(**values)
