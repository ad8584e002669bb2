"""Hugging Face `config.json` <-> the model section of our config.

On import (`model.init_from=DIR`) the folder's config.json decides the architecture: it
replaces the `model=` preset's shapes. What a user may still choose: the RoPE fields (to
extend the context), `model.recompute`, the S/L letters of `model.layers` (its length is the
folder's layer count) and the training-only fields. A command-line or experiment override of an
architecture field that contradicts the folder is an error naming both values: an override is
a value that differs from what the chosen preset (configs/model/<name>.yaml, else the schema
default) sets.

Supported: Llama 2/3/3.1/3.2 (tied or untied), Mistral (without a sliding window), Qwen2/2.5
(q/k/v bias), Qwen3 (q/k RMSNorm per head, explicit head_dim), and our own hybrid folders
(model_type "distca_hybrid", written by distca-export for models with linear-attention layers).
Both RoPE spellings are read: `rope_theta` + `rope_scaling` (older files) and `rope_parameters`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import yaml

from distca.config.schema import ModelConfig, RopeScaling

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "distca_hybrid")
HYBRID_TYPE = "distca_hybrid"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", HYBRID_TYPE: "DistcaHybridForCausalLM"}
# fields the folder decides (besides the layer count); RoPE fields are read but overridable
ARCH_FIELDS = ("hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "vocab_size", "norm_eps",
               "tie_embeddings", "qkv_bias", "out_bias", "qk_norm", "linear_decay")
ROPE_FIELDS = ("rope_theta", "rope_scaling", "rope_factor", "rope_original_max_position", "rope_low_freq_factor",
               "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "rope_attention_factor", "rope_truncate")
_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def read_config(folder: str) -> dict:
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise ValueError(f"model.init_from={folder} is not a folder; give a local Hugging Face model folder "
                         "(config.json + *.safetensors)")
    if not path.is_file():
        raise ValueError(f"model.init_from={folder} has no config.json; give the folder a Hugging Face model "
                         "was saved to (save_pretrained / a downloaded snapshot)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-export the model") from e


def _rope_fields(hf: dict) -> dict:
    """Our rope_* fields from either spelling of the RoPE settings."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        params = params.get("full_attention") or next(iter(params.values()))  # per layer type
    if not params:
        params = {"rope_theta": hf.get("rope_theta", 10000.0), **(hf.get("rope_scaling") or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    names = {"default": RopeScaling.none, "linear": RopeScaling.linear, "yarn": RopeScaling.yarn,
             "llama3": RopeScaling.llama3}
    if kind not in names:
        raise ValueError(f"RoPE type {kind!r} in config.json is not supported (supported: "
                         f"{', '.join(names)}); set model.rope_scaling to one of none, linear, yarn, llama3")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("config.json sets partial_rotary_factor != 1 (RoPE on part of each head), which "
                         "distca does not support")
    out = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
           "rope_scaling": names[kind]}
    if kind == "default":
        return out
    factor = params.get("factor")
    original = params.get("original_max_position_embeddings")
    if factor is None and original:  # transformers' yarn fallback
        factor = hf["max_position_embeddings"] / original
    out["rope_factor"] = float(factor)
    if original is not None:
        out["rope_original_max_position"] = int(original)
    for ours, theirs in (("rope_low_freq_factor", "low_freq_factor"), ("rope_high_freq_factor", "high_freq_factor"),
                         ("rope_beta_fast", "beta_fast"), ("rope_beta_slow", "beta_slow")):
        if params.get(theirs) is not None:
            out[ours] = float(params[theirs])
    if params.get("attention_factor") is not None:
        out["rope_attention_factor"] = float(params["attention_factor"])
    elif params.get("mscale") and params.get("mscale_all_dim"):
        def mscale(m):
            return 0.1 * m * math.log(out["rope_factor"]) + 1.0 if out["rope_factor"] > 1 else 1.0
        out["rope_attention_factor"] = mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
    if "truncate" in params:
        out["rope_truncate"] = bool(params["truncate"])
    return out


def architecture(hf: dict, folder: str, seq_len: int | None = None) -> dict:
    """Our model fields (and the layer count) from a config.json; ValueError naming the field."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"model.init_from={folder}: model_type {kind!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED)}); convert the model to a Llama-style folder first")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"model.init_from={folder}: hidden_act={hf['hidden_act']!r}; distca's MLP is SwiGLU (silu)")
    if hf.get("mlp_bias"):
        raise ValueError(f"model.init_from={folder}: mlp_bias=true is not supported (distca's MLP has no bias)")
    if kind == "mistral" and hf.get("sliding_window") and (seq_len is None or seq_len > hf["sliding_window"]):
        raise ValueError(f"model.init_from={folder}: Mistral with sliding_window={hf['sliding_window']} attends "
                         f"to the last {hf['sliding_window']} tokens only; distca runs full attention, so "
                         f"data.seq_len={seq_len} would change the model. Use data.seq_len <= "
                         f"{hf['sliding_window']} or a Mistral version without a window (v0.2+)")
    if kind == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError(f"model.init_from={folder}: use_sliding_window=true is not supported (full attention only)")
    heads = int(hf["num_attention_heads"])
    fields = {
        "hidden": int(hf["hidden_size"]), "heads": heads,
        "kv_heads": int(hf.get("num_key_value_heads") or heads),
        "head_dim": int(hf.get("head_dim") or hf["hidden_size"] // heads),
        "ffn_hidden": int(hf["intermediate_size"]), "vocab_size": int(hf["vocab_size"]),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "qkv_bias": kind == "qwen2" or bool(hf.get("attention_bias", False)),
        "out_bias": kind != "qwen2" and bool(hf.get("attention_bias", False)),
        "qk_norm": kind == "qwen3" or bool(hf.get("qk_norm", False)),
        **_rope_fields(hf),
    }
    if kind == HYBRID_TYPE:  # its linear layers' decay is part of the trained model
        fields["linear_decay"] = hf["linear_decay"]
    layers = hf.get("layers") if kind == HYBRID_TYPE else "S" * int(hf["num_hidden_layers"])
    return {"layers": layers, **fields}


def preset_values(name: str) -> dict:
    """What the `model=<name>` preset sets (schema defaults for the rest)."""
    values = {f.name: f.default for f in dataclasses.fields(ModelConfig)
              if f.default is not dataclasses.MISSING}
    path = _CONFIGS / f"{name}.yaml"
    if path.is_file():
        values.update((yaml.safe_load(path.read_text()) or {}).get("model", {}))
    return values


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return str(a) == str(b)


def apply_architecture(mcfg: ModelConfig, arch: dict, folder: str) -> ModelConfig:
    """mcfg with the folder's architecture; a user's architecture override that contradicts it
    is a ValueError naming both values."""
    preset = preset_values(mcfg.name)
    changes = {}
    for name in ARCH_FIELDS + ROPE_FIELDS:
        if name not in arch:
            continue
        mine, theirs = getattr(mcfg, name), arch[name]
        overridden = name in preset and not _same(mine, preset[name])
        if name in ROPE_FIELDS and overridden:
            continue  # extending the context: the user's RoPE wins
        if overridden and not _same(mine, theirs) and not (name == "vocab_size" and mine == -1):
            raise ValueError(f"model.{name}={mine} contradicts {folder}/config.json ({name} = {theirs}); drop "
                             f"the override (the folder decides the architecture)")
        changes[name] = theirs
    layers = mcfg.layers
    want = len(arch["layers"])
    if len(layers) != want or set(layers) - {"S", "L"}:
        if not _same(layers, preset.get("layers", layers)):
            raise ValueError(f"model.layers={layers} has {len(layers)} letters but {folder} has {want} layers; "
                             f"give {want} letters (S softmax, L linear attention), e.g. {arch['layers']}")
        layers = arch["layers"]
    if arch["layers"] != "S" * want and layers != arch["layers"]:
        raise ValueError(f"model.layers={layers}: {folder} is a hybrid ({arch['layers']}); its layer kinds "
                         "cannot change")
    changes["layers"] = layers
    return dataclasses.replace(mcfg, **changes)
