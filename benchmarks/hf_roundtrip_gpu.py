"""Continued pretraining end to end on one GPU: a Hugging Face folder in, RoPE scaled, trained,
passkey-evaluated, exported, and transformers' logits on the export compared with ours.

1. transformers makes a Llama-3.2-1B-shaped model (random weights, bf16 safetensors);
2. distca-train imports it (`model.init_from`), extends it 4x with YaRN
   (`model.rope_scaling=yarn`, factor 4 over 8K) and trains `--steps` steps at `--seq-len`
   tokens in bf16, with passkey retrieval evaluated after the last step;
3. distca-export writes the last checkpoint as a Hugging Face folder (bf16);
4. transformers loads it; its bf16 logits on a held-out sequence are compared with distca's
   (the same folder imported back, bf16 autocast), and both with an fp32 transformers reference.

    python benchmarks/hf_roundtrip_gpu.py --out $OUT/hf_roundtrip_h100.json --work /tmp/hf_roundtrip
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_model(folder: Path, smoke: bool) -> dict:
    import torch
    import transformers
    shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64, vocab_size=128256)
    if smoke:  # CPU: the same code path on a model a CPU trains in seconds
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512)
    cfg = transformers.LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=131072,
                                   rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=256,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters()), **shape}


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def compare_logits(folder: Path, seq: int, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from distca.data import build_dataset
    from distca.config import compose_config, to_typed
    from distca.checkpoint import hf_source
    from distca.config.validate import build_plan
    from distca.model import build_model
    from distca.parallelize.materialize import hf_source as source, materialize

    cfg = to_typed(compose_config(["data=stdlib", f"data.seq_len={seq}", f"model.init_from={folder}"]))
    cfg, init = hf_source.resolve(cfg)
    _, packer = build_dataset(cfg.data, 123, split="eval") if cfg.data.holdout > 0 else build_dataset(cfg.data, 123)
    tokens = packer.next_sample().tokens[:seq]
    plan = build_plan(cfg, 1, cfg.model.vocab_size)
    dev = torch.device(device)
    plan.setup(dev)
    ours = build_model(cfg.model, cfg.model.vocab_size, plan.core_attention, plan.linear_attention, 0, meta=True)
    materialize(ours, dev, source(init.weights, cfg.model, init.source_layers, init.tied_in_folder, 0, 0, 1))
    ours = ours.to(dev).eval()
    shard = plan.build_shard([len(tokens)]).to(dev)
    out = {}
    with torch.no_grad():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            hidden = ours(shard.local(tokens.to(dev)), shard)
            mine = (hidden.float() @ ours.lm_head.weight.float().t())
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                  attn_implementation="sdpa").to(dev).eval()
        theirs = hf(tokens[None].to(dev)).logits[0].float()
        del hf
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(dev).eval()
        exact = ref(tokens[None].to(dev)).logits[0].float()
    scale = float(exact.abs().max())
    out.update(
        tokens=len(tokens),
        ours_vs_transformers_bf16_max_abs=float((mine - theirs).abs().max()),
        ours_vs_fp32_max_abs=float((mine - exact).abs().max()),
        transformers_bf16_vs_fp32_max_abs=float((theirs - exact).abs().max()),
        logit_scale_max_abs=scale,
        argmax_agreement_ours_transformers=float((mine.argmax(-1) == theirs.argmax(-1)).float().mean()),
        argmax_agreement_ours_fp32=float((mine.argmax(-1) == exact.argmax(-1)).float().mean()),
    )
    # bf16 tolerance: our error to the fp32 reference no worse than 2x transformers' own bf16 error
    out["within_bf16_tolerance"] = out["ours_vs_fp32_max_abs"] <= 2 * out["transformers_bf16_vs_fp32_max_abs"] + 1e-3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/hf_roundtrip", help="where the model folders and the run go")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--smoke", action="store_true", help="CPU: a tiny model, short sequences")
    args = ap.parse_args()
    import torch
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Path(args.out).with_suffix(".log")
    src, run_dir, export = work / "src", work / "run", work / "export"
    t0 = time.perf_counter()
    shape = make_model(src, args.smoke)
    made_s = time.perf_counter() - t0
    seq = 512 if args.smoke else args.seq_len
    lengths = "[400]" if args.smoke else "[8192,32768]"
    train = [sys.executable, "-m", "distca.train", f"model.init_from={src}", "model.rope_scaling=yarn",
             "model.rope_factor=4", "model.rope_original_max_position=8192", f"data.seq_len={seq}",
             "data=stdlib", "data.holdout=0.01", "train.global_batch_size=1", f"train.steps={args.steps}",
             "train.lr=1e-5", "train.warmup_steps=5", "model.recompute=full", f"run_dir={run_dir}",
             "checkpoint.save_final=true", "checkpoint.every_minutes=0", "logger.progress=false",
             f"eval.every={args.steps}", "eval.tasks=[loss,passkey]", f"eval.passkey.lengths={lengths}",
             "eval.passkey.depths=[0.0,0.5,1.0]", "eval.passkey.samples=1", "eval.batches=1"]
    if not args.smoke:
        train.append("train.dtype=bf16")
    train_s = run(train, log)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    export_s = run([sys.executable, "-m", "distca.checkpoint.hf_export", str(run_dir), str(export), "--dtype",
                    "fp32" if args.smoke else "bf16"], log)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    logits = compare_logits(export, 256 if args.smoke else 4096, device)
    last = rows[-1]
    record = {
        "benchmark": "hf_roundtrip", "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "model": shape, "seq_len": seq, "steps": args.steps, "rope": "yarn x4 over 8192 (source: llama3 x32)",
        "losses": [r["loss"] for r in rows], "tokens_per_s_median": sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2],
        "passkey": {k: last.get(k) for k in ("eval_passkey_acc", "eval_passkey_token_acc", "eval_passkey_grid")},
        "eval_loss": last.get("eval_loss"), "logits": logits,
        "seconds": {"make_model": made_s, "train_incl_startup_and_eval": train_s, "export": export_s},
        "note": "random weights (no download): passkey accuracy is expected at 0; the point is that import, "
                "YaRN, training, evaluation and export run at this size and the export gives our logits",
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("device", "seq_len", "tokens_per_s_median", "logits")}, indent=2))


if __name__ == "__main__":
    main()
