"""Training throughput of the CP strategies on N GPUs (issue 22, part 2): 8B and 8B-hybrid at
128K and 512K tokens per sample, pretrain-like and long-document mixes, ring / allgather / usp
/ cad. Each case is its own `torchrun` of the trainer (`python -m distca.train` with
overrides) under a timeout, so an OOM or hang ends that case only; a failure is recorded
with its last log lines.

    python benchmarks/multigpu_throughput.py --nproc 8 --out $OUT/throughput.json [--cases 512k-pretrain]
    python benchmarks/multigpu_throughput.py --dry-run --nproc 2 --out /tmp/t.json   # CPU, gloo, tiny

Per case the JSON holds the layout and why, the medians over steps after --warmup (excluded)
of the trainer's metrics.jsonl: tokens/s per GPU (tokens_per_s / N), MFU, peak memory
(max_mem_gib is this rank's; rank 0's file is read, and the max over ranks is in the trainer's
log only), cad_imbalance_before/_after, cad_bytes, cad_moved_work, cad_overlap. `goal` compares cad with
the best of ring/allgather/usp per (model, length, mix); the issue's goal is >= 1.15 at 512K,
pretrain mix, both models.

Layout (the same for every algorithm of a case, so only the attention strategy differs):
8B holds ~16 bytes per parameter of weights, fp32 master and Adam moments (~128 GB), more
than one H200 (~139 GiB) can hold beside activations, and CP does not shard weights: tp=2
halves that (64 GB) and leaves cp=N/2 ranks for the context at 128K; at 512K tp=4 (32 GB per
rank) leaves room for 512K/(cp x tp) tokens of activations under full recompute (cp=N/4).
usp uses ulysses=2 inside the CP group. `--layout tp=..,cp=..` overrides.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.multigpu_common import ROOT, child_env, header, torchrun  # noqa: E402

MODELS = {"8b": "model=8b", "8b_hybrid": "model=8b_hybrid"}
LENGTHS = {"128k": 131072, "512k": 524288}
MIXES = {"pretrain": "data=synthetic_pretrain", "longdoc": "data=synthetic_longctx"}
ALGOS = ("ring", "allgather", "usp", "cad")
METRICS = ("tokens_per_s", "mfu", "max_mem_gib", "step_time_s", "cad_imbalance_before",
           "cad_imbalance_after", "cad_bytes", "cad_moved_work", "cad_overlap", "tflops_per_gpu")


def layout(nproc: int, length: str, dry: bool) -> tuple[dict, str]:
    if dry:
        return {"tp": 1, "cp": nproc}, "dry run: all ranks on context"
    if length == "512k":
        tp = min(4, nproc)
        return {"tp": tp, "cp": max(nproc // tp, 1)}, (
            "512K: tp=4 puts 32 GB of weights+optimizer per rank, leaving the rest for activations")
    tp = min(2, nproc)
    return {"tp": tp, "cp": max(nproc // tp, 1)}, "128K: tp=2 (64 GB weights+optimizer per rank), cp on the rest"


def overrides(model, length, mix, algo, lay, args) -> list[str]:
    if args.dry_run:  # the tiny model on its own: the 8B would not fit a CPU run
        base = ["experiment=tiny", "model.layers=SLSS" if model == "8b_hybrid" else "model.layers=SSSS",
                "data=synthetic_pretrain" if mix == "pretrain" else "data=synthetic_longctx",
                "data.seq_len=128", "train.device=cpu", "data.synthetic_vocab=320"]
    else:
        base = [MODELS[model], MIXES[mix], f"data.seq_len={LENGTHS[length]}", "data.synthetic_vocab=128256"]
    o = [*base, f"train.steps={args.steps}", "train.global_batch_size=1", "train.micro_batch_size=1",
         "train.dtype=bf16", "train.warmup_steps=1", "logger.progress=false", "checkpoint.save_final=false",
         f"parallel.tp={lay['tp']}", f"parallel.cp={lay['cp']}", f"parallel.cp_algo={algo}"]
    if algo == "usp":
        o.append(f"parallel.ulysses={2 if lay['cp'] % 2 == 0 and lay['cp'] > 2 else 1}")
    return o


def summarize(metrics_path: Path, nproc: int, warmup: int) -> dict:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "tokens_per_s" in r]
    kept = rows[warmup:] or rows
    out = {"steps_measured": len(kept), "steps_excluded": len(rows) - len(kept)}
    for k in METRICS:
        vals = [r[k] for r in kept if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["tokens_per_s_per_gpu"] = out["tokens_per_s"] / nproc if out["tokens_per_s"] else None
    return out


def run_case(name, over, args, workdir) -> dict:
    run_dir = Path(workdir) / name
    cmd = torchrun(args.nproc, ["-m", "distca.train", *over, f"run_dir={run_dir}"])
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=child_env(1 if args.dry_run else None), capture_output=True,
                           text=True, timeout=args.timeout)
        rc, log = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        log = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace") \
            if isinstance(e.stdout, bytes) or e.stdout is None else (e.stdout or "") + (e.stderr or "")
    row = {"case": name, "overrides": over, "returncode": rc, "wall_s": round(time.time() - t0, 1)}
    metrics = run_dir / "metrics.jsonl"
    if rc == 0 and metrics.exists():
        row.update(ok=True, **summarize(metrics, args.nproc, args.warmup))
    else:
        row.update(ok=False, oom="out of memory" in log.lower(), last_lines=log.splitlines()[-25:])
    return row


def goals(rows) -> list[dict]:
    out = []
    groups = {}
    for r in rows:
        if r.get("ok"):
            groups.setdefault(r["group"], {})[r["algo"]] = r["tokens_per_s_per_gpu"]
    for g, by in sorted(groups.items()):
        base = {a: v for a, v in by.items() if a != "cad" and v}
        best = max(base, key=base.get) if base else None
        ratio = by["cad"] / base[best] if best and by.get("cad") else None
        out.append({"group": g, "cad": by.get("cad"), "best_baseline": best,
                    "best_baseline_tokens_per_s_per_gpu": base.get(best), "ratio": ratio,
                    "goal": 1.15 if g.startswith(("8b-512k-pretrain", "8b_hybrid-512k-pretrain")) else None,
                    "meets_goal": (ratio >= 1.15) if ratio and g.endswith("512k-pretrain") else None})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per case")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--lengths", nargs="+", default=["512k", "128k"])
    ap.add_argument("--mixes", nargs="+", default=list(MIXES))
    ap.add_argument("--algos", nargs="+", default=list(ALGOS))
    ap.add_argument("--layout", help="tp=..,cp=.. for every case (else chosen per length, see doc)")
    ap.add_argument("--workdir", default=tempfile.mkdtemp(prefix="distca_tput_"))
    ap.add_argument("--dry-run", "--cpu-smoke", dest="dry_run", action="store_true")
    args = ap.parse_args()
    if args.dry_run:
        args.steps, args.warmup, args.timeout = 3, 1, min(args.timeout, 120)
    out = {**header(args.nproc), "nproc": args.nproc, "dry_run": args.dry_run, "steps": args.steps,
           "warmup_excluded": args.warmup, "cases": []}
    for model in args.models:
        for length in args.lengths:
            for mix in args.mixes:
                lay, why = layout(args.nproc, length, args.dry_run)
                if args.layout:
                    lay = {k: int(v) for k, v in (kv.split("=") for kv in args.layout.split(","))}
                    why = "given with --layout"
                for algo in args.algos:
                    name = f"{model}-{length}-{mix}-{algo}"
                    row = run_case(name, overrides(model, length, mix, algo, lay, args), args, args.workdir)
                    row.update(group=f"{model}-{length}-{mix}", algo=algo, layout=lay, layout_why=why)
                    out["cases"].append(row)
                    out["goal"] = goals(out["cases"])
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(out, indent=1))  # after every case: a killed sweep keeps its rows
                    print(f"{name}: {'ok' if row['ok'] else 'FAILED ' + str(row['returncode'])} "
                          f"{row.get('tokens_per_s_per_gpu')} tok/s/GPU", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
