"""End-to-end training-step throughput of the 1B-class model on one GPU, beside HF Transformers.

For each context length: our model on one whole document (plain causal), our model on
documents packed from the pretraining-like length distribution (document-masked attention),
and HF Transformers' LlamaForCausalLM with the same shapes (SDPA, full activation
checkpointing; HF with SDPA cannot mask documents, so it runs plain causal). All three use fp32
master weights, bf16 autocast and fused AdamW, and are measured in the same process.
A torch.profiler pass over one of our steps splits GPU time by kernel category.

    python benchmarks/e2e.py --seq-lens 16384 65536 --out benchmarks/results/e2e_h100.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import time

import numpy as np
import torch

from distca.config import compose_config, to_typed
from distca.data.distributions import sample_doc_lengths
from distca.flops import attention_flops, dense_flops, device_peak_tflops
from distca.model import build_model
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard


def _time_steps(step_fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step_fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def _ours(mcfg, seq_len, doc_lens, vocab):
    model = build_model(mcfg, vocab, LocalCoreAttention(), LocalLinearAttention(), seed=0).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    shard = build_shard(doc_lens).to("cuda")
    ids = torch.randint(0, vocab, (seq_len,), device="cuda")
    labels = torch.roll(ids, -1)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, shard, labels) / seq_len
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, step


def _hf(mcfg, seq_len, vocab):
    from transformers import LlamaConfig, LlamaForCausalLM
    head_dim = mcfg.hidden // mcfg.heads
    conf = LlamaConfig(vocab_size=vocab, hidden_size=mcfg.hidden, intermediate_size=mcfg.ffn_hidden,
                       num_hidden_layers=len(mcfg.layers), num_attention_heads=mcfg.heads,
                       num_key_value_heads=mcfg.kv_heads, head_dim=head_dim,
                       max_position_embeddings=seq_len, rope_theta=mcfg.rope_theta,
                       tie_word_embeddings=mcfg.tie_embeddings, attn_implementation="sdpa")
    model = LlamaForCausalLM(conf).cuda()
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, vocab, (1, seq_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, step


CATEGORIES = (("attention", ("attention", "attn", "flash", "fmha")),
              ("matmul", ("gemm", "matmul", "sm90", "cutlass", "nvjet", "xmma")),
              ("loss", ("cross_entropy", "log_softmax", "nll")),
              ("optimizer", ("adam", "multi_tensor", "foreach")))


def _breakdown(step_fn) -> dict:
    from torch.profiler import ProfilerActivity, profile
    step_fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_fn()
        torch.cuda.synchronize()
    per_kernel = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0 and ev.key not in ("ProfilerStep*",):
            per_kernel[ev.key] = per_kernel.get(ev.key, 0) + t
    cats = {c: 0.0 for c, _ in CATEGORIES}
    cats["other"] = 0.0
    for name, t in per_kernel.items():
        low = name.lower()
        for c, keys in CATEGORIES:
            if any(k in low for k in keys):
                cats[c] += t
                break
        else:
            cats["other"] += t
    total = sum(cats.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return {"gpu_ms": total / 1e3, "share": {c: round(v / total, 4) for c, v in cats.items()},
            "top_kernels_ms": [[n[:90], round(t / 1e3, 3)] for n, t in top]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/e2e.json")
    args = ap.parse_args()
    mcfg = to_typed(compose_config([f"model={args.model}"])).model
    vocab = mcfg.vocab_size
    peak = device_peak_tflops(torch.device("cuda"))
    rows = []
    for L in args.seq_lens:
        rng = np.random.default_rng(0)
        packed = sample_doc_lengths("pretrain", L, rng, max_len=L)
        cases = [("distca", "one document (causal)", [L]), ("distca", "packed pretrain documents", packed)]
        if not args.no_hf:
            cases.append(("hf_transformers_llama_sdpa", "one document (causal)", [L]))
        for system, docs, doc_lens in cases:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            if system == "distca":
                model, step = _ours(mcfg, L, doc_lens, vocab)
                n_params = model.num_params()
            else:
                model, step = _hf(mcfg, L, vocab)
                n_params = sum(p.numel() for p in model.parameters()) - (
                    0 if mcfg.tie_embeddings else model.get_input_embeddings().weight.numel())
            try:
                dt = _time_steps(step, args.warmup, args.steps)
                flops = dense_flops(n_params, L) + attention_flops(doc_lens, mcfg, mcfg.hidden // mcfg.heads)
                row = {"system": system, "documents": docs, "seq_len": L, "num_docs": len(doc_lens),
                       "step_s": dt, "tokens_per_s": L / dt, "tflops": flops / dt / 1e12,
                       "mfu": flops / dt / 1e12 / peak if peak else None,
                       "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
                if system == "distca":
                    try:
                        row["breakdown"] = _breakdown(step)
                    except Exception as e:  # the timing above stands without the breakdown
                        row["breakdown_error"] = repr(e)[:300]
            except torch.OutOfMemoryError as e:
                row = {"system": system, "documents": docs, "seq_len": L, "error": f"OOM: {str(e)[:200]}"}
            except Exception as e:
                row = {"system": system, "documents": docs, "seq_len": L, "error": repr(e)[:300]}
            print(json.dumps({k: v for k, v in row.items() if k != "breakdown"}), flush=True)
            rows.append(row)
            del model, step
            gc.collect()
    out = {"benchmark": "e2e_train_step", "model": args.model,
           "shapes": {"layers": len(mcfg.layers), "hidden": mcfg.hidden, "heads": mcfg.heads,
                      "kv_heads": mcfg.kv_heads, "ffn": mcfg.ffn_hidden, "vocab": vocab},
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": __import__("triton").__version__,
           "date": datetime.date.today().isoformat(), "steps": args.steps, "warmup": args.warmup,
           "notes": ("bf16 autocast, fp32 master weights, fused AdamW, full activation checkpointing in "
                     "both systems. MFU counts 6N per token plus causal attention over the real "
                     "document lengths (HF: one document) against the dense bf16 peak."),
           "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
