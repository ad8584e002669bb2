"""Tiny Hugging Face models made by transformers inside the tests (no download): one folder per
architecture and RoPE setting, random weights (norms and biases too, so a weight read into the
wrong place shows), and transformers' own loss on a batch of documents as the reference."""
from __future__ import annotations

from pathlib import Path

import torch

# (model_type, tied, extra config): Llama 2/3 untied, Llama 3.2 tied, Mistral, Qwen2.5 (q/k/v
# bias), Qwen3 (q/k norms, a head_dim that is not hidden/heads, tied)
ARCHS = {
    "llama": ("llama", False, {}),
    "llama_tied": ("llama", True, {}),
    "mistral": ("mistral", False, {}),
    "qwen2": ("qwen2", False, {}),
    "qwen3": ("qwen3", True, {"head_dim": 32}),
    "llama_bias": ("llama", False, {"attention_bias": True}),
}
ROPES = {
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    "yarn_explicit": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
                      "rope_theta": 50000.0, "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.3},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0},
}
VOCAB = 320


def make_hf_model(folder: Path, arch: str = "llama", rope: str | None = None, legacy_rope: bool = False,
                  seed: int = 0, **overrides):
    """Save a tiny random model of `arch` (ARCHS) to `folder`; returns the transformers model."""
    import transformers

    kind, tied, extra = ARCHS[arch]
    cfg = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, tie_word_embeddings=tied,
               rms_norm_eps=1e-6)
    cfg.update(extra, **overrides)
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    if rope is not None:
        cfg["rope_parameters"] = dict(ROPES[rope])
    config = classes[kind](**cfg)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    if legacy_rope:  # the older spelling: rope_theta + rope_scaling
        import json
        path = Path(folder) / "config.json"
        c = json.loads(path.read_text())
        params = c.pop("rope_parameters")
        c["rope_theta"] = params.pop("rope_theta")
        c["rope_scaling"] = None if params.get("rope_type") == "default" else params
        path.write_text(json.dumps(c))
    return model


def hf_document_loss(model, documents: list[torch.Tensor]) -> tuple[float, int]:
    """transformers' summed next-token loss over documents (each its own causal sequence) and
    the number of labels: what one step of distca computes on the same packed samples."""
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in documents:
            if len(doc) < 2:
                continue
            logits = model(doc[None]).logits[0].double()
            total += float(torch.nn.functional.cross_entropy(logits[:-1], doc[1:], reduction="sum"))
            count += len(doc) - 1
    return total, count


def import_model(folder, *overrides):
    """distca's model of `folder` in this process (tp = 1, fp32) through model.init_from:
    (model, plan, typed config)."""
    from distca.checkpoint import hf_source
    from distca.config import compose_config, to_typed
    from distca.config.validate import build_plan
    from distca.model import build_model
    from distca.parallelize.materialize import hf_source as source, materialize

    cfg = to_typed(compose_config(["experiment=tiny", f"model.init_from={folder}", "data.seq_len=512", *overrides]))
    cfg, init = hf_source.resolve(cfg)
    vocab = cfg.model.vocab_size
    init.check(cfg.model, vocab)
    plan = build_plan(cfg, 1, vocab)
    plan.setup(torch.device("cpu"))
    model = build_model(cfg.model, vocab, plan.core_attention, plan.linear_attention, 0, meta=True)
    materialize(model, torch.device("cpu"), source(init.weights, cfg.model, init.source_layers, init.tied_in_folder,
                                                   0, 0, 1))
    return model, plan, cfg


def our_logits(model, plan, tokens: torch.Tensor) -> torch.Tensor:
    """Full logits [T, V] of one document (tests only: the trainer never makes them)."""
    with torch.no_grad():
        shard = plan.build_shard([len(tokens)])
        hidden = model(shard.local(tokens), shard)
        return hidden @ model.lm_head.weight.t()
