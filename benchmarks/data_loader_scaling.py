"""Per-rank data loading time per step as the job grows: 8, 64 and 512 simulated ranks, seq_len
128K, a 4M-token global batch (32 samples), an indexed dataset of pretraining-like documents.

Each simulated rank runs what a real rank runs in its prefetch thread: the step's plan from
document lengths (the same on every rank), then its own micro-batches only: read its token
ranges from the memory-mapped .bin, labels, and its CP shard. Layouts (ranks = dp x cp x tp;
tp ranks read what their dp/cp position reads):

    8 ranks    dp 8              4 samples per DP rank
    64 ranks   dp 32 x cp 2      1 sample per DP rank, halved by CP
    512 ranks  dp 32 x cp 4 x tp 4

Sampled ranks: the first and the last of each layout (dp_rank and cp_rank extremes); the
result per layout is the slowest sampled rank's median step, in wall time and in CPU time of
the loading thread (one torch thread; on a shared machine the CPU time is the steadier
measure). Beside it, the design this
replaced, on the same rank: it read the whole global batch and computed every sample's
labels (for the loss normaliser), then built its own share's micro-batches (reading an
indexed dataset here; before, token files were rescanned and text tokenized in full on every
rank). Writes benchmarks/results/data_loader_scaling_cpu.json.

Usage: python benchmarks/data_loader_scaling.py [--steps 6] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.data_common import RESULTS, provenance, write_result  # noqa: E402
from distca.data import DataConfig, build_data  # noqa: E402
from distca.data.distributions import sample_doc_lengths  # noqa: E402
from distca.data.indexed import IndexedWriter  # noqa: E402
from parallel.context.shard import build_shard  # noqa: E402

LAYOUTS = {8: (8, 1, 1), 64: (32, 2, 1), 512: (32, 4, 4)}  # ranks: (dp, cp, tp)


def write_dataset(prefix: str, tokens: int, seq_len: int, seed: int = 0) -> dict:
    """Pretraining-like documents (distca/data/distributions.py, longest seq_len), ids < 32000."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(sample_doc_lengths("pretrain", tokens, rng, max_len=seq_len), dtype=np.int64)
    w = IndexedWriter(prefix, np.uint16)
    for a in range(0, len(lengths), 4096):
        chunk = lengths[a:a + 4096]
        w.add(rng.integers(0, 31999, int(chunk.sum()), dtype=np.uint16), chunk)
    w.close()
    return {"documents": int(len(lengths)), "tokens": int(lengths.sum()), "mean_doc_len": float(lengths.mean())}


def rank_view(dp: int, dp_rank: int, cp: int, cp_rank: int):
    return SimpleNamespace(dims=SimpleNamespace(dp=dp), dp_rank=dp_rank,
                           build_shard=lambda doc_lens: build_shard(doc_lens, cp_rank, cp, layout="zigzag"))


def time_rank(cfg, dp, dp_rank, cp, cp_rank, gbs, steps) -> dict:
    """Median seconds per step of this rank's loader (no prefetch: the work itself), and of
    the plan alone (a second planner drawing the same steps)."""
    data = build_data(cfg, seed=0)
    loader = data.loader(rank_view(dp, dp_rank, cp, cp_rank), gbs, 1, "cpu", prefetch=False)
    planner = data.planner(gbs, 1, dp)
    loader.next_step()  # warm: page cache, first plan
    planner.next_plan()
    times, cpu, plan_times = [], [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = loader.next_step()
        t1, c1 = time.perf_counter(), time.thread_time()
        planner.next_plan()
        plan_times.append(time.perf_counter() - t1)
        times.append(t1 - t0)
        cpu.append(c1 - c0)
    return {"dp_rank": dp_rank, "cp_rank": cp_rank, "step_s_median": float(np.median(times)),
            "cpu_s_median": float(np.median(cpu)), "plan_s_median": float(np.median(plan_times)),
            "local_tokens": sum(int(mb.input_ids.numel()) for mb in batch.micro)}


def time_whole_batch(cfg, dp, dp_rank, cp, cp_rank, gbs, steps) -> dict:
    """The replaced design on one rank: read and label the whole global batch, then build
    this rank's micro-batches. Median seconds per step."""
    from distca.data.batching import micro_batch
    from distca.data.labels import next_token_labels
    data = build_data(cfg, seed=0)
    view = rank_view(dp, dp_rank, cp, cp_rank)
    loader = data.loader(view, gbs, 1, "cpu", prefetch=False)
    planner = data.planner(gbs, 1, dp)
    times, cpu = [], []
    for step in range(steps + 1):
        t0, c0 = time.perf_counter(), time.thread_time()
        plan = planner.next_plan()
        every = [(loader._read(b), b.length.tolist()) for b in plan.bins]
        n_labels = sum(int((next_token_labels(t, lens) != -100).sum()) for t, lens in every)
        mine = [micro_batch(*every[b], view) for b in plan.ranks[dp_rank]]
        if step:  # the first step warms the page cache
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        del every, mine, n_labels
    return {"step_s_median": float(np.median(times)), "cpu_s_median": float(np.median(cpu))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=131072)
    ap.add_argument("--global-tokens", type=int, default=4 << 20)
    ap.add_argument("--dataset-tokens", type=int, default=96 << 20)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="a small dataset and 2 steps (smoke run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.dataset_tokens, args.steps = 16 << 20, 2
    args.out = args.out or (os.path.join(tempfile.gettempdir(), "data_loader_scaling_quick.json") if args.quick
                            else os.path.join(RESULTS, "data_loader_scaling_cpu.json"))
    torch.set_num_threads(1)  # the loading thread's CPU time is then all of its work
    gbs = args.global_tokens // args.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "pretrain")
        t0 = time.perf_counter()
        dataset = write_dataset(prefix, args.dataset_tokens, args.seq_len)
        dataset["write_s"] = time.perf_counter() - t0
        cfg = DataConfig(source="tokens", paths=[prefix], token_vocab_size=32000, seq_len=args.seq_len)
        t0 = time.perf_counter()
        build_data(cfg, seed=0)
        dataset["open_s"] = time.perf_counter() - t0  # the .idx read and checked, nothing else
        rows = []
        for ranks, (dp, cp, tp) in LAYOUTS.items():
            sampled = [time_rank(cfg, dp, r, cp, c, gbs, args.steps) for r, c in ((0, 0), (dp - 1, cp - 1))]
            worst = max(sampled, key=lambda s: s["cpu_s_median"])
            old = time_whole_batch(cfg, dp, worst["dp_rank"], cp, worst["cp_rank"], gbs, args.steps)
            rows.append({"ranks": ranks, "dp": dp, "cp": cp, "tp": tp, "samples_per_dp_rank": gbs // dp,
                         "per_rank_step_s": worst["step_s_median"], "per_rank_cpu_s": worst["cpu_s_median"],
                         "plan_s": worst["plan_s_median"], "local_tokens": worst["local_tokens"],
                         "whole_batch_design": old, "sampled_ranks": sampled})
            print(f"{ranks:4d} ranks (dp {dp} x cp {cp} x tp {tp}): {worst['step_s_median'] * 1e3:7.1f} ms per step, "
                  f"cpu {worst['cpu_s_median'] * 1e3:.1f} ms (plan {worst['plan_s_median'] * 1e3:.1f} ms), "
                  f"{worst['local_tokens']:,} tokens on the rank; whole-batch design {old['step_s_median'] * 1e3:.0f} ms, "
                  f"cpu {old['cpu_s_median'] * 1e3:.0f} ms", flush=True)
    grows = rows[-1]["per_rank_cpu_s"] > 1.25 * rows[0]["per_rank_cpu_s"]
    out = {"benchmark": "per-rank data loading time per step", "provenance": provenance(),
           "config": {"seq_len": args.seq_len, "global_batch_tokens": gbs * args.seq_len,
                      "global_batch_size": gbs, "micro_batch_size": 1, "steps": args.steps,
                      "shard_layout": "zigzag", "packing": "sequential", "source": "indexed dataset (uint16)"},
           "dataset": dataset, "layouts": rows, "grows_with_ranks": grows}
    write_result(args.out, out)


if __name__ == "__main__":
    main()
