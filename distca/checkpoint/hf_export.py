"""`distca-export RUN_DIR OUT_DIR [--step N] [--dtype bf16|fp32]`: a Hugging Face folder from a
checkpoint of any layout.

The checkpoint's weights are layout-free (each fused weight stored part by part: q, k, v and
gate, up; distca/checkpoint/store.py), so any (dp, tp, pp, cp) writes the same folder. Each
HF tensor is read on its own (torch.distributed.checkpoint loads one entry at a time; a
DeepSpeed ZeRO checkpoint is consolidated by DeepSpeed's own reader), so memory stays near
one shard. Written: `config.json` (the run's architecture and RoPE settings over the source
folder's config when the run started from one, so bos/eos and the rest are kept),
safetensors shards of at most `--max-shard-gb` (5) GB with `model.safetensors.index.json`,
and the tokenizer files when the run used a Hugging Face tokenizer.

A model with linear-attention layers has no transformers class: it is written in the same
layout with our own `config.json` (model_type "distca_hybrid", the layer pattern and decay
mode), which distca (`model.init_from`, distca-eval) reads back; transformers refuses it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from distca.checkpoint import store as ckpt
from distca.checkpoint.hf_config import ARCHITECTURES, HYBRID_TYPE
from distca.checkpoint.hf_import import part_sizes
from distca.checkpoint.hf_names import hf_tensors
from distca.checkpoint.hf_source import COPY_DIR, SMALL_FILES
from distca.config.schema import RootConfig, RopeScaling

TOKENIZER_FILES = tuple(f for f in SMALL_FILES if f not in ("config.json", "generation_config.json"))


def run_config(run_dir: Path) -> RootConfig:
    """The run's resolved config (config.yaml, without its `run:` facts) as the schema's types."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no config.yaml; give a run dir distca-train wrote")
    raw = OmegaConf.load(path)
    raw.pop("run", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), raw))


def hf_config(cfg: RootConfig, source: dict | None, dtype: str) -> dict:
    """config.json for the exported folder: the source's, with our architecture written over it."""
    m = cfg.model
    hybrid = "L" in m.layers
    head_dim = m.head_dim if m.head_dim > 0 else m.hidden // m.heads
    kind = HYBRID_TYPE if hybrid else (source or {}).get("model_type") or (
        "qwen3" if m.qk_norm else "qwen2" if m.qkv_bias and not m.out_bias else "llama")
    out = dict(source or {})
    for stale in ("rope_scaling", "rope_parameters", "rope_theta", "torch_dtype", "dtype", "transformers_version"):
        out.pop(stale, None)
    out.update({
        "model_type": kind, "architectures": [ARCHITECTURES[kind]], "hidden_size": m.hidden,
        "intermediate_size": m.ffn_hidden, "num_hidden_layers": len(m.layers), "num_attention_heads": m.heads,
        "num_key_value_heads": m.kv_heads, "head_dim": head_dim, "rms_norm_eps": m.norm_eps,
        "vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings, "hidden_act": "silu",
        "max_position_embeddings": _max_positions(cfg, out),
        "torch_dtype": {"bf16": "bfloat16", "fp32": "float32"}[dtype],
    })
    if kind in ("llama", "qwen3", HYBRID_TYPE):
        out["attention_bias"] = bool(m.qkv_bias or m.out_bias)
    if kind in ("llama", "mistral") and (m.qkv_bias != m.out_bias):
        raise ValueError(f"a {kind} config.json has one attention_bias for q/k/v and o; this model has "
                         f"qkv_bias={m.qkv_bias}, out_bias={m.out_bias}, which transformers' {kind} cannot express")
    if hybrid:
        out.update(layers=m.layers, linear_decay=str(m.linear_decay), qk_norm=m.qk_norm, qkv_bias=m.qkv_bias,
                   out_bias=m.out_bias)
    rope = {"rope_type": "default" if RopeScaling(m.rope_scaling) == RopeScaling.none else str(m.rope_scaling),
            "rope_theta": m.rope_theta}
    kind_rope = RopeScaling(m.rope_scaling)
    if kind_rope != RopeScaling.none:
        rope["factor"] = m.rope_factor
    if kind_rope in (RopeScaling.yarn, RopeScaling.llama3):
        rope["original_max_position_embeddings"] = m.rope_original_max_position
    if kind_rope == RopeScaling.llama3:
        rope.update(low_freq_factor=m.rope_low_freq_factor, high_freq_factor=m.rope_high_freq_factor)
    if kind_rope == RopeScaling.yarn:
        rope.update(beta_fast=m.rope_beta_fast, beta_slow=m.rope_beta_slow, truncate=m.rope_truncate)
        if m.rope_attention_factor > 0:
            rope["attention_factor"] = m.rope_attention_factor
    # both spellings: transformers >= 5 reads rope_parameters, older readers (and vLLM's older
    # releases) rope_theta + rope_scaling
    out["rope_parameters"] = rope
    out["rope_theta"] = m.rope_theta
    out["rope_scaling"] = None if kind_rope == RopeScaling.none else {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def _max_positions(cfg: RootConfig, source: dict) -> int:
    """The context the exported model is meant for: a YaRN model's original x factor (what
    transformers derives the factor from), else the source's, and never less than the run's."""
    m = cfg.model
    if RopeScaling(m.rope_scaling) == RopeScaling.yarn:
        return max(int(m.rope_factor * m.rope_original_max_position), cfg.data.seq_len)
    return max(int(source.get("max_position_embeddings") or 0), cfg.data.seq_len)


class CheckpointReader:
    """Our parameters, by full-model name, from a checkpoint of any layout and engine."""

    def __init__(self, ckpt_dir: Path, step: int, zero_stage: int):
        self.path = ckpt_dir / f"step_{step:08d}"
        self._full = None
        if zero_stage:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=self.path.name)
            return
        from torch.distributed.checkpoint import FileSystemReader
        self.meta = FileSystemReader(str(self.path)).read_metadata().state_dict_metadata

    def parts(self, name: str) -> list[torch.Tensor]:
        """The parameter's parts as stored (q, k, v of a fused weight), or [whole]."""
        if self._full is not None:
            return [self._full[name]]
        key = f"model.{name}"
        keys = [key] if key in self.meta else sorted(k for k in self.meta if k.startswith(key + "/part"))
        if not keys:
            raise ValueError(f"{self.path} holds no weights for {name}; is it a checkpoint of this model?")
        return [self._load(k) for k in sorted(keys, key=lambda k: int(k.rsplit("part", 1)[-1]) if "/part" in k else 0)]

    def _load(self, key: str) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp
        t = torch.empty(tuple(self.meta[key].size), dtype=self.meta[key].properties.dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: t}, checkpoint_id=str(self.path), no_dist=True)
        return t


def hf_state(cfg: RootConfig, reader: CheckpointReader, vocab: int):
    """(HF name, tensor) pairs, one parameter at a time."""
    from distca.model import build_model
    model = build_model(cfg.model, vocab, None, None, 0, meta=True)
    for name, param in model.named_parameters():
        names = hf_tensors(name, cfg.model.layers)
        parts = reader.parts(name)
        if len(parts) == 1 and len(names) > 1:  # one stored tensor (DeepSpeed): cut it into its parts
            parts = list(parts[0].split(part_sizes(name, tuple(param.shape), cfg.model), 0))
        if len(parts) != len(names):
            raise ValueError(f"{name}: {len(parts)} stored parts for {len(names)} tensors")
        yield from zip(names, parts)


def write_folder(out: Path, tensors, max_shard_bytes: int, dtype: torch.dtype) -> int:
    """safetensors shards (model.safetensors, or model-0000i-of-0000n.safetensors + index)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    written = 0
    for name, t in tensors:
        t = t.to(dtype).contiguous()
        if current and size + t.numel() * t.element_size() > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * t.element_size()
        written += t.numel() * t.element_size()
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return written
    n, weight_map = len(shards), {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": written}, "weight_map": weight_map}, indent=2))
    return written


def export(run_dir: str, out_dir: str, step: int | None = None, dtype: str = "bf16",
           max_shard_gb: float = 5.0) -> Path:
    run, out = Path(run_dir), Path(out_dir)
    cfg = run_config(run)
    ckpt_dir = Path(cfg.checkpoint.dir or run / "checkpoints")
    if step is None:
        step = ckpt.newest_complete(str(ckpt_dir), warn=True)
        if step is None:
            raise ValueError(f"{ckpt_dir} holds no complete checkpoint; train with checkpoints first "
                             "(checkpoint.save_final=true)")
    elif not (ckpt_dir / f"step_{step:08d}").is_dir():
        raise ValueError(f"--step {step}: {ckpt_dir} has no step_{step:08d}; saved: {ckpt.saved_steps(str(ckpt_dir))}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; give a new folder")
    source_dir = run / COPY_DIR
    source = json.loads((source_dir / "config.json").read_text()) if (source_dir / "config.json").is_file() else None
    config = hf_config(cfg, source, dtype)
    reader = CheckpointReader(ckpt_dir, step, cfg.parallel.zero_stage)
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    written = write_folder(out, hf_state(cfg, reader, cfg.model.vocab_size), int(max_shard_gb * 2**30), torch_dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for src in _tokenizer_dirs(cfg, source_dir):
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if (src / name).is_file() and not (out / name).exists():
                shutil.copyfile(src / name, out / name)
    print(f"distca-export: step {step} of {run} -> {out} ({written / 2**30:.2f} GiB, {dtype}, "
          f"{config['architectures'][0]})", file=sys.stderr)
    if config["model_type"] == HYBRID_TYPE:
        print("distca-export: a hybrid (linear-attention layers): distca reads it back (model.init_from); "
              "transformers has no class for it", file=sys.stderr)
    return out


def _tokenizer_dirs(cfg, source_dir: Path) -> list[Path]:
    """Where the run's Hugging Face tokenizer files are: the copy of the source folder's, and
    data.tokenizer_path when the run named one."""
    dirs = [source_dir]
    path = getattr(cfg.data, "tokenizer_path", "") or ""
    if path:
        p = Path(path)
        dirs.append(p if p.is_dir() else p.parent)
    return [d for d in dirs if d.is_dir()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="distca-export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run dir distca-train wrote (config.yaml, checkpoints/)")
    ap.add_argument("out_dir", help="the Hugging Face folder to write (new or empty)")
    ap.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the newest complete)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weights' dtype in the folder")
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors file (GB)")
    args = ap.parse_args(argv)
    try:
        export(args.run_dir, args.out_dir, args.step, args.dtype, args.max_shard_gb)
    except ValueError as e:
        print(f"distca-export: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
