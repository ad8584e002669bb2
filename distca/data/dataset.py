"""`build_data(cfg.data, seed, split, model_dir)`: the tokenizer and every source of a run,
checked and indexed, but no tokens read: the entry point of the data path.

Every rank calls it with the same config and seed and gets the same `Dataset`; its
`loader(...)` then gives this rank's steps (distca/data/loader.py). Bad input (missing or
damaged files, a tokenizer that cannot load, a source without documents) is a ValueError
naming the file and the fix, raised here, before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .config import DataConfig, as_data_config, mix_entries, validate_data_config
from .loader import StepLoader
from .sources import build_source, text_corpus
from .step_plan import StepPlanner


@dataclass
class Dataset:
    tokenizer: Any          # vocab_size, eos_id, decode (distca/data/tokenizer.py, hf_tokenizer.py)
    sources: list           # one Documents per source (distca/data/documents.py)
    names: list[str]        # the sources' names (data_tokens_<name> metrics)
    weights: list[float]
    cfg: DataConfig
    seed: int

    def planner(self, global_batch_size: int, micro_batch_size: int, dp: int) -> StepPlanner:
        return StepPlanner(self.sources, self.names, self.weights, self.cfg.seq_len, self.seed,
                           global_batch_size, micro_batch_size, dp, str(self.cfg.packing))

    def loader(self, plan, global_batch_size: int, micro_batch_size: int, device,
               prefetch: Optional[bool] = None, steps: Optional[int] = None) -> StepLoader:
        """This rank's loader under the parallel plan `plan` (after plan.setup)."""
        planner = self.planner(global_batch_size, micro_batch_size, plan.dims.dp)
        return StepLoader(planner, self.sources, plan, device,
                          self.cfg.prefetch if prefetch is None else prefetch, steps)


def _named(where: str, error: ValueError) -> ValueError:
    return ValueError(f"{where}: {error}")


def build_data(data_cfg: Any, seed: int, split: str = "train", model_dir: Optional[str] = None) -> Dataset:
    """The tokenizer and the sources for `data_cfg` (a DataConfig, its OmegaConf node or a
    dict); split "eval" gives the held-out documents (distca/data/holdout.py); `model_dir` is
    the folder of the model training starts from (its tokenizer serves data.tokenizer=auto)."""
    from .choose_tokenizer import TEXT_SOURCES, load_tokenizer

    cfg = as_data_config(data_cfg)
    validate_data_config(cfg)
    entries = mix_entries(cfg)
    where = [f"data.mix[{i}] ({name})" if cfg.mix else "" for i, (name, _, _) in enumerate(entries)]
    corpora: dict[int, Any] = {}
    for i, (_, _, sub) in enumerate(entries):
        if sub.source in TEXT_SOURCES:
            try:
                corpora[i] = text_corpus(sub, split)
            except ValueError as e:
                raise (_named(where[i], e) if where[i] else e) from None
    tokenizer = load_tokenizer(cfg, model_dir, list(corpora.values()))
    sources = []
    for i, (_, _, sub) in enumerate(entries):
        try:
            docs = build_source(sub, seed, split, tokenizer, corpora.get(i))
            if len(docs) == 0:
                raise ValueError(f"data.paths: {sub.paths or sub.source} hold(s) no documents. Fix: point "
                                 "the source at non-empty data")
        except ValueError as e:
            raise (_named(where[i], e) if where[i] else e) from None
        sources.append(docs)
    return Dataset(tokenizer, sources, [n for n, _, _ in entries], [w for _, w, _ in entries], cfg, int(seed))
