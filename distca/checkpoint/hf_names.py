"""Our parameter names <-> Hugging Face tensor names (Llama / Mistral / Qwen layout).

Our fused weights are concatenations of HF tensors along rows: `qkv` is [q | k | v] and
`gate_up` is [gate | up], so one of our parameters maps to a list of HF tensors, in the
order of its parts (the same order as its tensor-parallel `TPSlice.parts`). Linear-attention
layers, which transformers has no class for, use names of the same shape under `linear_attn`
(written and read only by distca).
"""
from __future__ import annotations

import re

_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")

SOFTMAX = {
    "mixer_norm.weight": ["input_layernorm.weight"],
    "mlp_norm.weight": ["post_attention_layernorm.weight"],
    "mixer.qkv.weight": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "mixer.qkv.bias": ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
    "mixer.out.weight": ["self_attn.o_proj.weight"],
    "mixer.out.bias": ["self_attn.o_proj.bias"],
    "mixer.q_norm.weight": ["self_attn.q_norm.weight"],
    "mixer.k_norm.weight": ["self_attn.k_norm.weight"],
    "mlp.gate_up.weight": ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
    "mlp.down.weight": ["mlp.down_proj.weight"],
}
LINEAR = {
    **{k: v for k, v in SOFTMAX.items() if k.startswith(("mixer_norm", "mlp"))},
    "mixer.qkv.weight": ["linear_attn.q_proj.weight", "linear_attn.k_proj.weight", "linear_attn.v_proj.weight"],
    "mixer.out.weight": ["linear_attn.o_proj.weight"],
    "mixer.gate.weight": ["linear_attn.g_proj.weight"],
    "mixer.norm_weight": ["linear_attn.norm.weight"],
    "mixer.decay_proj.weight": ["linear_attn.decay_proj.weight"],
    "mixer.decay_proj.bias": ["linear_attn.decay_proj.bias"],
}
TOP = {"embed.weight": ["model.embed_tokens.weight"], "norm.weight": ["model.norm.weight"],
       "lm_head.weight": ["lm_head.weight"]}


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def hf_tensors(name: str, layers: str) -> list[str]:
    """The HF tensors our parameter `name` is the row-concatenation of (model.layers letters
    decide which family a block's names come from)."""
    if name in TOP:
        return TOP[name]
    m = _LAYER.match(name)
    if m is None:
        raise KeyError(name)
    i, rest = int(m.group(1)), m.group(2)
    table = LINEAR if layers[i] == "L" else SOFTMAX
    return [f"model.layers.{i}.{t}" for t in table[rest]]
