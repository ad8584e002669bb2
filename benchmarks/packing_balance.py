"""data.packing=balanced against sequential on the CAD simulator's length mixes: how even the
attention work of micro-batches and DP ranks is, before and after.

The step's documents come from the product's planner (distca/data/step_plan.py) over
synthetic documents of the simulator's two mixes (`pretrain`: WLB-LLM's pretraining trace;
`longctx`: ProLong-like; distca/data/distributions.py, documents up to the sample length T),
the simulator's grid: D DP ranks (GPUs / TP 8) x m = 4 micro-batches of one T-token sample.
For each step and packing:

  mb_attn_imbalance     max / mean over micro-batches of the attention work (sum of squared
                        document lengths)
  dp_attn_imbalance     the same over DP ranks (each rank's micro-batches summed)
  dp_step_imbalance     max / mean over DP ranks of modelled time: attention from the
                        measured H100 kernel table plus the linear layers at the measured
                        GEMM rate, Llama-3-8B at TP 8 (benchmarks/cad_sim_model.py); the
                        slowest rank sets the step
  slowest_rank_gain     sequential's slowest rank time / balanced's (the same pieces: the same
                        work, only placed differently)
  whole_documents       a variant the product does not take: the step's documents kept whole
                        (sequential's cuts at sample ends undone) before the same greedy;
                        work_ratio is its modelled work over sequential's (whole long
                        documents cost more attention) and its slowest_rank_gain follows

Beside them, DistCA's WLB-ideal (benchmarks/cad_sim_baselines.py wlb_pack: variable-length
micro-batches up to 2 x T tokens, the simulator's default cap) on the same documents, for
reference: it also evens the linear work by moving tokens, which fixed-size micro-batches
cannot. --cpu-run adds a real distca-train run at dp=2 on the CPU with each packing (the
data_dp_imbalance metric and step times from metrics.jsonl).
Writes benchmarks/results/packing_balance.json.

Usage: python benchmarks/packing_balance.py [--steps 10] [--cpu-run]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.cad_sim_baselines import wlb_pack  # noqa: E402
from benchmarks.cad_sim_model import SHAPES, gpu_costs, pick_table  # noqa: E402
from benchmarks.data_common import HERE, RESULTS, provenance, write_result  # noqa: E402
from distca.data.balance import assign_bins, attention_work, balanced_bins, imbalance  # noqa: E402
from distca.data.step_plan import StepPlanner  # noqa: E402
from distca.data.synthetic import SyntheticDocuments  # noqa: E402


def rank_times(plan, gc) -> np.ndarray:
    """Modelled seconds of each DP rank's micro-batches (all layers, forward + backward)."""
    out = []
    for bins in plan.ranks:
        t = 0.0
        for b in bins:
            L = plan.bins[b].length.astype(np.float64)
            t += float(gc.cm.cost(L, L).sum() + (gc.lin_fwd_tok + gc.lin_bwd_tok) * L.sum())
        out.append(t * gc.shape.layers)
    return np.asarray(out)


def whole_documents(plan, T: int):
    """Sequential's step with the pieces of one document rejoined (where one sample's last
    piece continues in the next sample), then laid out by the balanced greedy."""
    p = [b for b in plan.bins]
    src, doc = np.concatenate([b.src for b in p]), np.concatenate([b.doc for b in p])
    start, length = np.concatenate([b.start for b in p]), np.concatenate([b.length for b in p])
    merged = []
    for i in range(len(length)):
        if merged and src[i] == merged[-1][0] and doc[i] == merged[-1][1] and start[i] == merged[-1][2] + merged[-1][3]:
            merged[-1][3] += int(length[i])
        else:
            merged.append([int(src[i]), int(doc[i]), int(start[i]), int(length[i])])
    L = np.asarray([m[3] for m in merged], dtype=np.int64)
    layout = balanced_bins(L, len(plan.bins), T)
    bins = [SimpleNamespace(length=np.asarray([n for _, _, n in placed], dtype=np.int64)) for placed in layout]
    ranks = assign_bins([attention_work(b.length) for b in bins], len(plan.ranks))
    return SimpleNamespace(bins=bins, ranks=ranks)


def setting(dist: str, T: int, D: int, m: int, steps: int, gc, seed: int) -> dict:
    docs = SyntheticDocuments(dist, max(64 * T, D * m * T * steps * 2), 32000, seed=seed, max_len=T)
    planners = {p: StepPlanner([docs], ["s"], [1.0], T, seed, D * m, 1, D, p) for p in ("sequential", "balanced")}
    acc = {p: {"mb": [], "dp": [], "step": [], "slowest": [], "total": []} for p in (*planners, "whole_documents")}
    wlb = {"mb": [], "max_tokens_over_T": []}
    for _ in range(steps):
        plans = {p: planner.next_plan() for p, planner in planners.items()}
        plans["whole_documents"] = whole_documents(plans["sequential"], T)
        for p, plan in plans.items():
            acc[p]["mb"].append(imbalance([attention_work(b.length) for b in plan.bins]))
            acc[p]["dp"].append(imbalance([sum(attention_work(plan.bins[b].length) for b in r) for r in plan.ranks]))
            times = rank_times(plan, gc)
            acc[p]["step"].append(imbalance(times))
            acc[p]["slowest"].append(float(times.max()))
            acc[p]["total"].append(float(times.sum()))
            if p == "sequential":  # WLB-ideal on the same documents (whole ones: merge the pieces)
                L = np.concatenate([b.length for b in plan.bins])
                bucket = wlb_pack(L, L.astype(np.float64) ** 2, D * m, 2.0 * T)
                wlb["mb"].append(imbalance(np.bincount(bucket, L.astype(np.float64) ** 2, minlength=D * m)))
                wlb["max_tokens_over_T"].append(float(np.bincount(bucket, L, minlength=D * m).max() / T))
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    out = {"dist": dist, "tokens_per_sample": T, "dp_ranks": D, "micro_batches_per_rank": m, "steps": steps}
    for p in acc:
        out[p] = {"mb_attn_imbalance": mean(acc[p]["mb"]), "dp_attn_imbalance": mean(acc[p]["dp"]),
                  "dp_step_imbalance": mean(acc[p]["step"])}
    for p in ("balanced", "whole_documents"):
        out[p]["work_ratio"] = float(np.sum(acc[p]["total"]) / np.sum(acc["sequential"]["total"]))
        out[p]["slowest_rank_gain"] = float(np.sum(acc["sequential"]["slowest"]) / np.sum(acc[p]["slowest"]))
    out["wlb_ideal_variable_length"] = {"mb_attn_imbalance": mean(wlb["mb"]),
                                        "max_tokens_over_T": max(wlb["max_tokens_over_T"])}
    return out


def cpu_run(tmp: str, steps: int) -> dict:
    """distca-train at dp=2 on the CPU (2 processes), synthetic pretrain data, each packing."""
    out = {}
    for packing in ("sequential", "balanced"):
        run_dir = os.path.join(tmp, packing)
        cmd = [sys.executable, "-m", "launch.local", "--nproc", "2", "experiment=tiny", "data=synthetic_pretrain",
               f"data.seq_len={512 if steps <= 2 else 4096}", "data.synthetic_vocab=512", "data.synthetic_tokens=1048576",
               "train.global_batch_size=8", f"train.steps={steps}", "parallel.dp=2", f"data.packing={packing}",
               "logger.progress=false", "checkpoint.save_final=false", f"run_dir={run_dir}"]
        subprocess.run(cmd, check=True, cwd=os.path.join(HERE, ".."), capture_output=True, text=True,
                       env={**os.environ, "WANDB_MODE": "disabled"})
        rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
        out[packing] = {"data_dp_imbalance_mean": float(np.mean([r["data_dp_imbalance"] for r in rows])),
                        "step_time_s_median": float(np.median([r["step_time_s"] for r in rows[1:]])),
                        "data_wait_s_median": float(np.median([r["data_wait_s"] for r in rows[1:]])),
                        "losses": [r["loss"] for r in rows]}
        print(f"cpu run, {packing}: dp imbalance {out[packing]['data_dp_imbalance_mean']:.2f}, step "
              f"{out[packing]['step_time_s_median']:.2f} s", flush=True)
    out["command"] = "python -m launch.local --nproc 2 experiment=tiny data=synthetic_pretrain data.seq_len=4096 " \
                     "data.synthetic_vocab=512 train.global_batch_size=8 parallel.dp=2 data.packing=..."
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 262144, 524288])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 32], help="DP ranks (GPUs / TP 8)")
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cpu-run", action="store_true")
    ap.add_argument("--cpu-steps", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="one small setting, 2 steps, a 2-step CPU run (smoke)")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.ranks, args.steps, args.cpu_steps = [131072], [8], 2, 2
    args.out = args.out or (os.path.join(tempfile.gettempdir(), "packing_balance_quick.json") if args.quick
                            else os.path.join(RESULTS, "packing_balance.json"))
    gpu, path, table = pick_table("h100")
    gc = gpu_costs(SHAPES["8b"], 8, table)
    rows = []
    for dist in ("pretrain", "longctx"):
        for T in args.tokens:
            for D in args.ranks:
                r = setting(dist, T, D, args.micro_batches, args.steps, gc, seed=T // 1024 + D)
                rows.append(r)
                print(f"{dist:8s} {T // 1024:3d}K {D:2d} ranks: dp attention imbalance "
                      f"{r['sequential']['dp_attn_imbalance']:.2f} -> {r['balanced']['dp_attn_imbalance']:.2f}, "
                      f"step {r['sequential']['dp_step_imbalance']:.2f} -> {r['balanced']['dp_step_imbalance']:.2f}, "
                      f"slowest rank x{r['balanced']['slowest_rank_gain']:.2f} (work x{r['balanced']['work_ratio']:.3f}); "
                      f"whole documents: step {r['whole_documents']['dp_step_imbalance']:.2f}, work "
                      f"x{r['whole_documents']['work_ratio']:.2f}, slowest x{r['whole_documents']['slowest_rank_gain']:.2f}",
                      flush=True)
    out = {"benchmark": "balanced vs sequential packing on the CAD simulator's mixes",
           "provenance": provenance(),
           "cost_model": {"model": "Llama-3-8B", "tp": 8, "attention_table": os.path.relpath(path),
                          "table_device": table.get("device"), "gemm_tflops": gc.gemm_tflops},
           "results": rows}
    if args.cpu_run:
        with tempfile.TemporaryDirectory() as tmp:
            out["cpu_run"] = cpu_run(tmp, args.cpu_steps)
    write_result(args.out, out)


if __name__ == "__main__":
    main()
