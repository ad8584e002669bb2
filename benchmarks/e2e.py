"""End-to-end training-step throughput of the 1B-class model on one GPU, beside HF Transformers
(SDPA) and HF Transformers + Liger kernels, in one process.

Rows, per context length:
- distca on one whole document (plain causal) and on documents packed from the
  pretraining-like length distribution (document-masked attention), at each recompute policy
  (`model.recompute` = none, selective, full);
- the same 1B shapes as a hybrid (LLLS: three Lightning-style linear layers per softmax one),
  packed documents, no recompute and full recompute;
- HF Transformers LlamaForCausalLM, SDPA, gradient checkpointing on and off (SDPA cannot mask
  documents, so HF always runs one plain causal document);
- the same HF model with Liger kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy).
Every system: fp32 master weights, bf16 autocast, fused AdamW. Liger patches transformers'
classes process-wide, so its rows run last. A row that runs out of memory is recorded as such.

Two comparisons follow from the rows (`comparisons` in the JSON): (a) the same setting in both
(full recompute vs gradient checkpointing), and (b) each system at its fastest setting that
fits. MFU counts 6N per token plus causal attention over the real documents (recompute not
counted) against the dense bf16 peak. A torch.profiler pass splits one step of distca's
fastest fitting policy by kernel category. `--cli` also times the trainer itself
(`experiment=e2e_1b`), so metrics.jsonl can be compared with these rows.

    python benchmarks/e2e.py --seq-lens 16384 65536 --out benchmarks/results/e2e_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch

from distca.config import compose_config, to_typed
from distca.data.distributions import sample_doc_lengths
from distca.observe.flops import attention_flops, dense_flops, device_peak_tflops
from distca.model import build_model
from parallel.context.local import LocalCoreAttention, LocalLinearAttention
from parallel.context.shard import build_shard

POLICIES = ("none", "selective", "full")


def _time_steps(step_fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step_fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step_fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _ours(mcfg, seq_len, doc_lens, vocab, recompute, core=None):
    """distca's model and one training step (core: the core-attention strategy, local by default)."""
    mcfg.recompute, mcfg.checkpoint_activations = recompute, None
    core = LocalCoreAttention() if core is None else core
    model = build_model(mcfg, vocab, core, LocalLinearAttention(), seed=0).cuda()
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
    return model, step, model.num_params()


def _hf(mcfg, seq_len, vocab, checkpointing):
    from transformers import LlamaConfig, LlamaForCausalLM
    conf = LlamaConfig(vocab_size=vocab, hidden_size=mcfg.hidden, intermediate_size=mcfg.ffn_hidden,
                       num_hidden_layers=len(mcfg.layers), num_attention_heads=mcfg.heads,
                       num_key_value_heads=mcfg.kv_heads, head_dim=mcfg.hidden // mcfg.heads,
                       max_position_embeddings=seq_len, rope_theta=mcfg.rope_theta,
                       tie_word_embeddings=mcfg.tie_embeddings, attn_implementation="sdpa")
    model = LlamaForCausalLM(conf).cuda()
    if checkpointing:
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
    n = sum(p.numel() for p in model.parameters()) - (
        0 if mcfg.tie_embeddings else model.get_input_embeddings().weight.numel())
    return model, step, n


CATEGORIES = (("attention", ("attention", "attn", "flash", "fmha", "lightning")),
              ("matmul", ("gemm", "matmul", "sm90", "cutlass", "nvjet", "xmma")),
              ("loss", ("cross_entropy", "log_softmax", "nll", "_ce_rows")),
              ("norm", ("rms_norm", "rmsnorm")),
              ("swiglu", ("swiglu",)),
              ("rope", ("rope",)),
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
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]
    return {"gpu_ms": total / 1e3, "share": {c: round(v / total, 4) for c, v in cats.items()},
            "top_kernels_ms": [[n[:90], round(t / 1e3, 3)] for n, t in top]}


def _flops(n_params: int, L: int, doc_lens, mcfg, hd: int) -> float:
    return dense_flops(n_params, L) + attention_flops(doc_lens, mcfg, hd)


def _measure(build, label: dict, flops_of, peak, args) -> tuple[dict, object]:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = step = None
    try:
        model, step, n_params = build()
        dt = _time_steps(step, args.warmup, args.steps)
        flops = flops_of(n_params)
        row = {**label, "step_s": dt, "tokens_per_s": label["seq_len"] / dt,
               "tflops": flops / dt / 1e12, "mfu": flops / dt / 1e12 / peak if peak else None,
               "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    except torch.OutOfMemoryError as e:
        row, step = {**label, "error": f"OOM: {str(e)[:160]}"}, None
    except Exception as e:  # a broken row is reported, the others still run
        row, step = {**label, "error": repr(e)[:300]}, None
    print(json.dumps(row), flush=True)
    if args.out:  # rows so far, so a run cut short still leaves its measurements
        with open(args.out + ".partial", "a") as f:
            f.write(json.dumps(row) + "\n")
    del model
    return row, step


def _cli_run(seq_len: int, steps: int) -> dict:
    """The trainer itself (`experiment=e2e_1b`), what users see in metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "distca.train", "experiment=e2e_1b", f"data.seq_len={seq_len}",
               f"train.steps={steps}", "logger.progress=false", "checkpoint.save_final=false",
               f"run_dir={tmp}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "WANDB_MODE": "disabled"})
        path = os.path.join(tmp, "metrics.jsonl")
        if r.returncode or not os.path.exists(path):
            return {"command": " ".join(cmd[1:-1]), "error": (r.stderr or r.stdout)[-600:]}
        ms = [json.loads(line) for line in open(path)]
    later = ms[2:] or ms
    return {"command": " ".join(cmd[1:-1]), "seq_len": seq_len,
            "median_tokens_per_s_after_step_2": float(np.median([m["tokens_per_s"] for m in later])),
            "median_mfu_after_step_2": float(np.median([m["mfu"] for m in later])),
            "max_mem_gib": max(m["max_mem_gib"] for m in ms), "steps": len(ms)}


def _comparisons(rows: list[dict]) -> list[dict]:
    ok = [r for r in rows if "error" not in r]
    out = []
    for L in sorted({r["seq_len"] for r in rows}):
        def pick(system, docs=None, setting=None):
            return [r for r in ok if r["seq_len"] == L and r["system"] == system
                    and (docs is None or r["documents"] == docs)
                    and (setting is None or r["setting"] == setting)]
        liger_full = pick("hf_liger", setting="gradient checkpointing")
        liger_best = max(pick("hf_liger"), key=lambda r: r["tokens_per_s"], default=None)
        for docs in ("one document", "packed documents"):
            full = pick("distca", docs, "recompute=full")
            best = max(pick("distca", docs), key=lambda r: r["tokens_per_s"], default=None)
            c = {"seq_len": L, "documents": docs}
            if full and liger_full:
                c["same_setting_full_recompute"] = {
                    "distca_over_hf_liger": full[0]["tokens_per_s"] / liger_full[0]["tokens_per_s"],
                    "distca_mem_gib": full[0]["max_mem_gib"], "hf_liger_mem_gib": liger_full[0]["max_mem_gib"]}
            if best and liger_best:
                c["best_vs_best"] = {
                    "distca_over_hf_liger": best["tokens_per_s"] / liger_best["tokens_per_s"],
                    "distca_setting": best["setting"], "hf_liger_setting": liger_best["setting"],
                    "distca_mfu": best["mfu"], "hf_liger_mfu": liger_best["mfu"]}
            out.append(c)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-hybrid", action="store_true")
    ap.add_argument("--cli", action="store_true", help="also time `distca-train experiment=e2e_1b`")
    ap.add_argument("--out", default="benchmarks/results/e2e.json")
    ap.add_argument("--merge", nargs="*", default=[],
                    help="earlier JSON files of this benchmark (other context lengths) whose rows, "
                         "breakdowns and CLI timings join this run's before the comparisons")
    args = ap.parse_args()
    mcfg = to_typed(compose_config([f"model={args.model}"])).model
    hd = mcfg.hidden // mcfg.heads
    vocab = mcfg.vocab_size
    peak = device_peak_tflops(torch.device("cuda"))
    rows, breakdowns = [], {}
    hybrid_layers = ("LLLS" * len(mcfg.layers))[:len(mcfg.layers)]
    for L in args.seq_lens:
        packed = sample_doc_lengths("pretrain", L, np.random.default_rng(0), max_len=L)
        best = None
        for docs, doc_lens in (("one document", [L]), ("packed documents", packed)):
            for policy in args.policies:
                label = {"system": "distca", "documents": docs, "setting": f"recompute={policy}",
                         "seq_len": L, "num_docs": len(doc_lens), "layers": mcfg.layers}
                row, step = _measure(partial(_ours, mcfg, L, doc_lens, vocab, policy), label,
                                     partial(_flops, L=L, doc_lens=doc_lens, mcfg=mcfg, hd=hd),
                                     peak, args)
                rows.append(row)
                if "error" not in row and (best is None or row["tokens_per_s"] > best[0]):
                    best = (row["tokens_per_s"], policy, doc_lens)
                del step
        if best is not None:  # profile distca's fastest fitting policy on packed documents
            _, policy, doc_lens = best
            _, step, _ = _ours(mcfg, L, doc_lens, vocab, policy)
            breakdowns[f"{L} {policy}"] = _breakdown(step)
            del step
        if not args.no_hybrid:
            hyb = to_typed(compose_config([f"model={args.model}", f"model.layers={hybrid_layers}"])).model
            for policy in ("none", "full"):
                label = {"system": "distca_hybrid", "documents": "packed documents",
                         "setting": f"recompute={policy}", "seq_len": L, "num_docs": len(packed),
                         "layers": hybrid_layers}
                row, step = _measure(partial(_ours, hyb, L, packed, vocab, policy), label,
                                     partial(_flops, L=L, doc_lens=packed, mcfg=hyb, hd=hd),
                                     peak, args)
                rows.append(row)
                del step
    if not args.no_hf:
        for system in ("hf_sdpa", "hf_liger"):
            if system == "hf_liger":  # patches transformers' Llama classes for the rest of the process
                from liger_kernel.transformers import apply_liger_kernel_to_llama
                apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True,
                                            fused_linear_cross_entropy=True, cross_entropy=False)
            for L in args.seq_lens:
                for ckpt in (True, False):
                    label = {"system": system, "documents": "one document",
                             "setting": "gradient checkpointing" if ckpt else "no checkpointing",
                             "seq_len": L, "num_docs": 1}
                    row, step = _measure(partial(_hf, mcfg, L, vocab, ckpt), label,
                                         partial(_flops, L=L, doc_lens=[L], mcfg=mcfg, hd=hd),
                                         peak, args)
                    rows.append(row)
                    del step
    cli = [_cli_run(L, 8) for L in args.seq_lens] if args.cli else []
    merged_from = []
    for path in args.merge:
        with open(path) as f:
            earlier = json.load(f)
        rows, cli = earlier["rows"] + rows, earlier.get("cli", []) + cli
        breakdowns = {**earlier.get("breakdown", {}), **breakdowns}
        merged_from.append({"file": os.path.basename(path), "date": earlier["date"],
                            "device": earlier["device"], "torch": earlier["torch"]})
    versions = {"torch": torch.__version__, "triton": __import__("triton").__version__}
    for name in ("transformers", "liger_kernel"):
        try:
            from importlib.metadata import version
            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = None
    out = {"benchmark": "e2e_train_step", "model": args.model,
           "shapes": {"layers": mcfg.layers, "hidden": mcfg.hidden, "heads": mcfg.heads,
                      "kv_heads": mcfg.kv_heads, "ffn": mcfg.ffn_hidden, "vocab": vocab},
           "device": torch.cuda.get_device_name(), **versions,
           "date": datetime.date.today().isoformat(), "steps": args.steps, "warmup": args.warmup,
           "step_time": "median of the timed steps",
           "notes": ("bf16 autocast, fp32 master weights, fused AdamW in every system. MFU counts 6N "
                     "per token plus causal attention over the real document lengths (HF: one "
                     "document), recompute not counted, against the dense bf16 peak."),
           "merged_from": merged_from,
           "comparisons": _comparisons(rows), "rows": rows, "breakdown": breakdowns, "cli": cli}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    if os.path.exists(args.out + ".partial"):  # the whole record is written: drop the fallback
        os.remove(args.out + ".partial")
    print(json.dumps(out["comparisons"], indent=1))


if __name__ == "__main__":
    main()
