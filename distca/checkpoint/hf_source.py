"""`model.init_from=DIR`: the Hugging Face folder a run starts from, resolved at config time.

`resolve(cfg)` reads config.json, puts the folder's architecture into the model section
(distca/checkpoint/hf_config.py) and indexes the weights; `HFSource.check` then compares
every tensor the model needs with the safetensors headers, so every problem with the folder
is a config error before anything is built. The folder's small files (config.json, the
tokenizer's) are copied into the run dir (`<run_dir>/hf_source/`) so that distca-export can
write them back even after the folder is gone.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from distca.checkpoint.hf_config import architecture, apply_architecture, read_config
from distca.checkpoint.hf_import import HFWeights, check_folder

SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
COPY_DIR = "hf_source"


@dataclass
class HFSource:
    folder: str
    config: dict                 # the folder's config.json
    source_layers: str          # the folder's layer kinds (all S for a transformers model)
    _weights: HFWeights | None = None

    @property
    def weights(self) -> HFWeights:
        if self._weights is None:
            self._weights = HFWeights(self.folder)
        return self._weights

    @property
    def tied_in_folder(self) -> bool:
        """The folder's LM head is its embedding (tied, or no lm_head tensor at all)."""
        return bool(self.config.get("tie_word_embeddings")) or self.weights.shape("lm_head.weight") is None

    def check(self, mcfg, vocab: int) -> None:
        from distca.model import build_model  # a meta build: the full shapes, nothing allocated
        shapes = {n: tuple(p.shape) for n, p in build_model(mcfg, vocab, None, None, 0, meta=True).named_parameters()}
        check_folder(self.weights, mcfg, shapes, self.source_layers, self.tied_in_folder)

    def copy_small_files(self, run_dir: str) -> None:
        out = Path(run_dir) / COPY_DIR
        out.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            src = Path(self.folder) / name
            if src.is_file():
                shutil.copyfile(src, out / name)


def resolve(cfg):
    """(cfg with the folder's architecture, HFSource), or (cfg, None) without model.init_from."""
    folder = cfg.model.init_from
    if not folder:
        return cfg, None
    hf = read_config(folder)
    arch = architecture(hf, folder, cfg.data.seq_len)
    mcfg = apply_architecture(cfg.model, arch, folder)
    return dataclasses.replace(cfg, model=mcfg), HFSource(folder, hf, arch["layers"])
