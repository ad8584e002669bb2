"""How long training steps wait for their data: distca-train on an indexed dataset, with the
background prefetcher (data.prefetch=true, the default) and without it, `data_wait_s` from
metrics.jsonl.

The dataset is the Python standard library's sources tokenized by distca-tokenize (bytes by
default, or --tokenizer PATH), so nothing is downloaded. On a GPU the run is the 1B model at
16K tokens per sample (bf16); --smoke runs the tiny model on the CPU for a few steps to check
the script. Writes benchmarks/results/data_wait_<device>.json (device: h100, h200, cpu, ...).

Usage: python benchmarks/data_wait.py [--steps 30] [--smoke] [--tokenizer PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.data_common import HERE, RESULTS, provenance, write_result  # noqa: E402

ROOT = os.path.join(HERE, "..")


def device_name() -> str:
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0)
    for key in ("H200", "H100", "A100"):
        if key in name:
            return key.lower()
    return name.split()[-1].lower()


def tokenize(prefix: str, tokenizer: str) -> str:
    from distca.data.stdlib_corpus import stdlib_root
    out = subprocess.run([sys.executable, "-m", "distca.data.tokenize_cli", f"{stdlib_root()}/**/*.py",
                          "--tokenizer", tokenizer, "--output", prefix, "--no-progress"],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip()


def train(run_dir: str, prefix: str, args, prefetch: bool) -> dict:
    vocab = ["data.token_vocab_size=258"] if args.tokenizer == "byte" else [f"data.tokenizer_path={args.tokenizer}"]
    if args.smoke:
        model = ["experiment=tiny", "data.seq_len=256", "train.global_batch_size=8"]
    else:
        model = ["model=1b", "data.seq_len=16384", "train.global_batch_size=8", "train.dtype=bf16"]
    cmd = [sys.executable, "-m", "distca.train", *model, "data=tokens", f"data.paths=[{prefix}]", *vocab,
           f"data.prefetch={str(prefetch).lower()}", f"train.steps={args.steps}", "logger.progress=false",
           "checkpoint.save_final=false", "checkpoint.every=0", "checkpoint.every_minutes=0", f"run_dir={run_dir}"]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"})
    rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    later = rows[1:] or rows  # step 1 includes compilation and warm-up
    wait = np.asarray([r["data_wait_s"] for r in later])
    step = np.asarray([r["step_time_s"] for r in later])
    return {"prefetch": prefetch, "command": " ".join(cmd[1:]), "steps": len(rows),
            "data_wait_s_median": float(np.median(wait)), "data_wait_s_p90": float(np.percentile(wait, 90)),
            "data_wait_s_max": float(wait.max()), "step_time_s_median": float(np.median(step)),
            "wait_share_of_step_median": float(np.median(wait / step)),
            "tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in later])),
            "step1_data_wait_s": rows[0]["data_wait_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tokenizer", default="byte", help="byte, or a tokenizer.json / model folder")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps (checks the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.smoke:
        args.steps = min(args.steps, 4)
    device = device_name()
    out_path = args.out or (os.path.join(tempfile.gettempdir(), "data_wait_smoke.json") if args.smoke
                            else os.path.join(RESULTS, f"data_wait_{device}.json"))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "stdlib")
        summary = tokenize(prefix, args.tokenizer)
        print(summary, flush=True)
        runs = [train(os.path.join(tmp, f"run_{p}"), prefix, args, p) for p in (True, False)]
    for r in runs:
        print(f"prefetch={r['prefetch']}: data_wait_s median {r['data_wait_s_median'] * 1e3:.2f} ms "
              f"(p90 {r['data_wait_s_p90'] * 1e3:.2f}, max {r['data_wait_s_max'] * 1e3:.2f}), step "
              f"{r['step_time_s_median']:.3f} s, {r['tokens_per_s_median']:.0f} tok/s", flush=True)
    result = {"benchmark": "data_wait_s of distca-train on an indexed dataset", "device": device,
              "provenance": provenance(), "dataset": {"what": "Python standard library sources via distca-tokenize",
                                                      "tokenizer": args.tokenizer, "distca_tokenize": summary},
              "smoke": args.smoke, "runs": runs}
    write_result(out_path, result)


if __name__ == "__main__":
    main()
