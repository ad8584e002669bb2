"""Scale simulator for core attention disaggregation (CAD) against the usual packings.

For each (ranks, tokens per sample, length distribution) it draws one sample of documents
per rank (`distca.data.distributions.sample_doc_lengths`, documents up to the sample
length) and evaluates, on the same documents:

  fixed      Megatron-like fixed packing: rank r trains sample r, attention stays local.
  per_doc_cp per-document head-tail CP (WLB-LLM's sharding): groups of c ranks share their
             c samples; every document is cut into 2c chunks, rank i of the group computes
             chunks i and 2c-1-i; K/V are all-gathered in the group (dK/dV reduce-scattered).
             c is swept over powers of two and the best c is reported (an idealised baseline).
  varlen     WLB-LLM-like variable-length packing: whole documents, longest first, each to the
             rank with the least estimated time whose token count stays under 1.25x the sample.
  cad        CAD: rank r holds sample r (linear layers balanced by construction); the planner
             (parallel.cad.planner) rebalances attention over all ranks; bytes are the plan's
             exact all-to-all traffic (parallel.cad.dispatch.transfers).

Times are per transformer layer, forward + backward, for one Llama-8B-shaped layer (32 q
heads, 8 kv heads, head dim 128, hidden 4096, FFN 14336), on one GPU per rank:
  attention  the measured H100 kernel table (parallel/cad/cost_table_h100.json) via CostModel
  linear     6 x 218M FLOPs per token at the GEMM throughput measured in the same GPU run
  comm       bytes / bandwidth (an ASSUMPTION, --bandwidth-gbs, default 50 GB/s per GPU,
             a 400 Gb/s NIC); CAD's traffic is overlapped by ping-pong up to the rank's own
             compute time; per-document CP's all-gather is exposed (not overlapped).
Step time = max over ranks (linear + attention + exposed comm); idle = step - a rank's busy time.

Outputs: benchmarks/results/cad_sim.json and cad_sim.png.
Usage: python benchmarks/cad_sim.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from parallel.cad.dispatch import transfers
from parallel.cad.planner import plan
from parallel.cad.tasks import CostModel, contiguous_pieces, load_cost_table
from distca.data.distributions import sample_doc_lengths

LINEAR_PARAMS_PER_LAYER = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336
VARLEN_TOKEN_CAP = 1.25
HERE = os.path.dirname(os.path.abspath(__file__))


def linear_seconds_per_token(table: dict | None, nominal_tflops: float) -> tuple[float, str]:
    g = (table or {}).get("gemm_bf16")
    tflops, src = (g["tflops"], "measured bf16 GEMM") if g else (nominal_tflops, "nominal")
    return 6 * LINEAR_PARAMS_PER_LAYER / (tflops * 1e12), f"{src}, {tflops:.0f} TFLOP/s"


def summarize(attn, lin, comm_exposed, bytes_per_rank, tokens=None) -> dict:
    busy = lin + attn + comm_exposed
    step = float(busy.max())
    out = {"step_ms": step * 1e3,
           "attn_imbalance": float(attn.max() / attn.mean()),
           "attn_max_ms": float(attn.max() * 1e3), "attn_mean_ms": float(attn.mean() * 1e3),
           "idle_frac": float(((step - busy) / step).mean()),
           "bytes_per_rank_mean": float(bytes_per_rank.mean()),
           "bytes_per_rank_max": float(bytes_per_rank.max()),
           "comm_exposed_max_ms": float(comm_exposed.max() * 1e3)}
    if tokens is not None:
        out["tokens_imbalance"] = float(tokens.max() / tokens.mean())
    return out


def sim_fixed(samples, cm, lin_tok):
    attn = np.array([cm.cost(s, s).sum() for s in samples])
    n = len(samples)
    return summarize(attn, np.full(n, lin_tok * samples[0].sum()), np.zeros(n), np.zeros(n))


def sim_per_doc_cp(samples, cm, lin_tok, bw, c):
    n, T = len(samples), int(samples[0].sum())
    attn = np.zeros(n)
    for g in range(n // c):
        docs = np.concatenate(samples[g * c:(g + 1) * c])
        # 2c chunk boundaries per document; rank i gets chunks i and 2c-1-i
        edges = (docs[:, None] * np.arange(2 * c + 1)[None, :]) // (2 * c)
        q = np.diff(edges, axis=1)
        cost = np.where(q > 0, cm.cost(q, edges[:, 1:]), 0.0).sum(0)
        attn[g * c:(g + 1) * c] = cost[:c] + cost[::-1][:c]
    sent = np.full(n, (c - 1) * T * cm.bytes_per_kv_token, dtype=np.float64)
    return summarize(attn, np.full(n, lin_tok * T), sent / bw, sent)


def sim_varlen(samples, cm, lin_tok):
    n, T = len(samples), int(samples[0].sum())
    docs = np.sort(np.concatenate(samples))[::-1]
    cost = cm.cost(docs, docs)
    tok, att = np.zeros(n), np.zeros(n)
    cap = VARLEN_TOKEN_CAP * T
    for d, c in zip(docs.tolist(), cost.tolist()):  # greedy LPT, as WLB-LLM's packer
        t = tok * lin_tok + att
        fits = tok + d <= cap
        r = int(np.argmin(np.where(fits, t, np.inf))) if fits.any() else int(np.argmin(tok))
        tok[r] += d
        att[r] += c
    return summarize(att, tok * lin_tok, np.zeros(n), np.zeros(n), tokens=tok)


def sim_cad(samples, cm, lin_tok, bw, tolerance, block):
    n, T = len(samples), int(samples[0].sum())
    pieces = contiguous_pieces(samples)
    ms, cpu_ms = [], []
    for _ in range(3):  # planner time: best of three (the first pays numpy's warm-up)
        c0 = time.process_time()
        p = plan(pieces.tasks(), n, cm, tolerance=tolerance, block=block)
        cpu_ms.append((time.process_time() - c0) * 1e3)
        ms.append(p.plan_ms)
    tr = transfers(p.parts, p.server, pieces)
    # each end of a transfer sends half its fwd+bwd bytes (q out / o back, kv out / dkv back)
    sent = np.zeros(n)
    for src, dst, a, b, per_tok in ((tr.q_src, tr.q_dst, tr.q_start, tr.q_end, cm.bytes_per_q_token),
                                    (tr.kv_src, tr.kv_dst, tr.kv_start, tr.kv_end, cm.bytes_per_kv_token)):
        remote = src != dst
        w = (b - a)[remote] * per_tok / 2
        sent += np.bincount(src[remote], w, minlength=n) + np.bincount(dst[remote], w, minlength=n)
    attn = p.load_after
    lin = np.full(n, lin_tok * T)
    exposed = np.maximum(sent / bw - (attn + lin), 0.0)
    out = summarize(attn, lin, exposed, sent)
    # no plan can beat every rank at the mean attention cost: the ceiling of any balancer
    out["perfect_balance_step_ms"] = float((attn.mean() + lin.max()) * 1e3)
    out.update(attn_imbalance_before=p.imbalance_before, plan_ms=float(min(ms)),
               plan_ms_all=[float(x) for x in ms], plan_cpu_ms=float(min(cpu_ms)),
               num_tasks=int(pieces.rank.size),
               num_parts=int(len(p.parts)), comm_max_ms=float((sent / bw).max() * 1e3))
    return out


def run_config(n, tokens, dist, seed, cm, lin_tok, bw, tolerance, block, cp_sizes):
    rng = np.random.default_rng(seed)
    samples = [np.asarray(sample_doc_lengths(dist, tokens, rng, max_len=tokens), dtype=np.int64)
               for _ in range(n)]
    res = {"ranks": n, "tokens": tokens, "dist": dist, "seed": seed,
           "docs": int(sum(s.size for s in samples))}
    res["fixed"] = sim_fixed(samples, cm, lin_tok)
    sweep = {c: sim_per_doc_cp(samples, cm, lin_tok, bw, c) for c in cp_sizes if c <= n and n % c == 0}
    best_c = min(sweep, key=lambda c: sweep[c]["step_ms"])
    res["per_doc_cp"] = {**sweep[best_c], "cp": best_c,
                         "sweep_step_ms": {str(c): v["step_ms"] for c, v in sweep.items()}}
    res["varlen"] = sim_varlen(samples, cm, lin_tok)
    res["cad"] = sim_cad(samples, cm, lin_tok, bw, tolerance, block)
    for base in ("fixed", "per_doc_cp", "varlen"):
        res[f"cad_speedup_vs_{base}"] = res[base]["step_ms"] / res["cad"]["step_ms"]
    return res


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ("fixed", "per_doc_cp", "varlen", "cad")
    dists = sorted({r["dist"] for r in results})
    tokens = max(r["tokens"] for r in results)
    fig, axes = plt.subplots(len(dists), 4, figsize=(20, 4.2 * len(dists)), squeeze=False)
    for row, dist in zip(axes, dists):
        rs = sorted((r for r in results if r["dist"] == dist and r["tokens"] == tokens),
                    key=lambda r: r["ranks"])
        x = [r["ranks"] for r in rs]
        for m in methods:
            row[0].plot(x, [r[m]["attn_imbalance"] for r in rs], marker="o", label=m)
            row[1].plot(x, [r[m]["step_ms"] for r in rs], marker="o", label=m)
            row[2].plot(x, [r[m]["idle_frac"] * 100 for r in rs], marker="o", label=m)
        row[3].plot(x, [r["cad"]["plan_ms"] for r in rs], marker="o", color="C3", label="planner, wall")
        row[3].plot(x, [r["cad"]["plan_cpu_ms"] for r in rs], marker="x", color="C4",
                    label="planner, CPU time")
        row[3].axhline(20, ls="--", color="gray", label="20 ms budget")
        titles = (f"attention imbalance (max/mean), {dist}, {tokens // 1024}K tokens/rank",
                  "simulated step time per layer (ms)", "mean idle time (% of step)",
                  "CAD planner time (ms, this CPU)")
        for ax, t in zip(row, titles):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("ranks")
            ax.set_title(t, fontsize=9)
            ax.legend(fontsize=7)
        row[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512, 1024])
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 262144, 524288])
    ap.add_argument("--dists", nargs="+", default=["pretrain", "longctx"])
    ap.add_argument("--cp-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--bandwidth-gbs", type=float, default=50.0)
    ap.add_argument("--table", default=os.path.join(HERE, "..", "parallel", "cad", "cost_table_h100.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a small grid for a smoke run")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cad_sim.json"))
    args = ap.parse_args()
    if args.quick:
        args.ranks, args.tokens = [8, 64], [131072]
    table = load_cost_table(args.table)
    cm = CostModel(32, 8, 128, 2, table=table)
    lin_tok, lin_src = linear_seconds_per_token(table, 400.0)
    bw = args.bandwidth_gbs * 1e9
    results = []
    t0 = time.time()
    for dist in args.dists:
        for tokens in args.tokens:
            for n in args.ranks:
                r = run_config(n, tokens, dist, args.seed + n, cm, lin_tok, bw, args.tolerance,
                               args.block, args.cp_sizes)
                results.append(r)
                print(f"{dist:8s} {tokens // 1024:4d}K x {n:5d}: imbalance fixed "
                      f"{r['fixed']['attn_imbalance']:.2f} cad {r['cad']['attn_imbalance']:.3f} | "
                      f"step ms fixed {r['fixed']['step_ms']:.1f} per-doc-cp(c={r['per_doc_cp']['cp']}) "
                      f"{r['per_doc_cp']['step_ms']:.1f} varlen {r['varlen']['step_ms']:.1f} "
                      f"cad {r['cad']['step_ms']:.1f} | plan {r['cad']['plan_ms']:.1f} ms "
                      f"(cpu {r['cad']['plan_cpu_ms']:.1f})", flush=True)
    targets = {}
    at512 = [r for r in results if r["ranks"] == 512]
    if at512:
        targets["imbalance_at_512_ranks_max"] = max(r["cad"]["attn_imbalance"] for r in at512)
        targets["plan_ms_at_512_ranks_max"] = max(r["cad"]["plan_ms"] for r in at512)
        targets["plan_cpu_ms_at_512_ranks_max"] = max(r["cad"]["plan_cpu_ms"] for r in at512)
    key = [r for r in results if r["ranks"] == 256 and r["tokens"] == 524288]
    if key:
        targets["speedup_vs_per_doc_cp_256_ranks_512K"] = {
            r["dist"]: r["cad_speedup_vs_per_doc_cp"] for r in key}
        targets["perfect_balance_speedup_bound_256_ranks_512K"] = {
            r["dist"]: r["per_doc_cp"]["step_ms"] / r["cad"]["perfect_balance_step_ms"] for r in key}
    out = {"config": {**vars(args), "cost_model": cm.describe(), "linear": lin_src,
                      "assumptions": {"bandwidth_gbs_per_gpu": args.bandwidth_gbs,
                                      "cad_comm_overlap": "ping-pong hides comm up to the rank's compute",
                                      "per_doc_cp_comm_overlap": "none (all-gather before attention)",
                                      "varlen_token_cap": VARLEN_TOKEN_CAP}},
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg_at_end": os.getloadavg()},
           "targets": targets, "results": results, "sim_s": round(time.time() - t0, 1)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    plot(results, os.path.splitext(args.out)[0] + ".png")
    print(json.dumps(targets, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
