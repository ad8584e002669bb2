"""Model FLOPs per step: 6N per token for the weights plus attention over the real document
lengths (quadratic per document for softmax layers, linear for linear-attention layers).

These are *useful* FLOPs (what the model needs, not what a kernel happens to compute), so
tokens/s and MFU are comparable across parallel layouts and attention strategies.
"""
from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s. On a device not listed here (and on
# CPUs) the peak is unknown: mfu is null in metrics.jsonl and `n/a` on the console.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "H800": 989.0, "GH200": 989.0}


def attention_flops(doc_lens: list[int], mcfg, head_dim: int) -> float:
    """Forward+backward FLOPs of all mixers' token-mixing for documents of these lengths."""
    n_soft = mcfg.layers.count("S")
    n_lin = mcfg.layers.count("L")
    # causal pairs per document: L(L+1)/2; QK^T and PV each 2 FLOPs per pair per dim per head
    pairs = sum(l * (l + 1) / 2 for l in doc_lens)
    soft_fwd = 4.0 * pairs * mcfg.heads * head_dim
    tokens = sum(doc_lens)
    lin_fwd = 4.0 * tokens * mcfg.heads * head_dim * head_dim  # state update + readout
    return 3.0 * (n_soft * soft_fwd + n_lin * lin_fwd)  # backward ~ 2x forward


def dense_flops(num_params: int, tokens: int) -> float:
    return 6.0 * num_params * tokens


def device_peak_tflops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_TFLOPS.items():
        if key in name:
            return val
    return 0.0


def layer_costs(mcfg, head_dim: int, seq_len: int, vocab: int) -> tuple[list[float], float, float]:
    """Forward FLOPs per token of every layer, of the embedding and of the LM head: what the
    pipeline split balances. Softmax attention is costed for one document filling the sample
    (each query sees seq_len / 2 keys on average), an upper bound on packed documents."""
    h, d, kv, ffn = mcfg.hidden, head_dim, mcfg.kv_heads, mcfg.ffn_hidden
    mlp = 2.0 * 3 * h * ffn
    costs = []
    for kind in mcfg.layers:
        if kind == "S":
            proj = 2.0 * h * (mcfg.heads + 2 * kv) * d + 2.0 * mcfg.heads * d * h
            mix = 4.0 * mcfg.heads * d * seq_len / 2
        else:
            proj = 2.0 * h * 4 * mcfg.heads * d + 2.0 * mcfg.heads * d * h  # q, k, v, gate; out
            mix = 4.0 * mcfg.heads * d * d
        costs.append(proj + mix + mlp)
    return costs, 0.0, 2.0 * h * vocab
