"""What `parallel.cad.backward` costs and saves, from the planner's real plans (no GPU).

For each (ranks, tokens per sample, length distribution) one sample of documents per rank is
planned exactly as the trainer plans it (parallel.cad.planner, the H100 cost table), and for
one Llama-8B-shaped softmax layer (32 q heads, 8 kv heads, head dim 128, bf16) it reports:

  memory held between a layer's forward and its backward, per rank (max and mean):
    stateful  what each server keeps for the tasks it ran: the received q rows, o and the
              fp32 LSE per query it served, and the k/v rows it received (once per document)
    resend    what each origin keeps for its own tokens: q, k, v, o and the LSE (the server
              keeps nothing)
  bytes crossing ranks per layer, forward + backward, both modes (the plan's exact transfers;
  resend adds the LSE return, and q, k, v, o, LSE sent again in the backward)

Stateful memory follows the plan, so it peaks on the ranks that serve the most (with
`parallel.cad.servers=K`, on the K servers); resend memory follows token ownership and is the
same on every rank that holds the same number of tokens.

Usage: python benchmarks/cad_backward_modes.py [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import numpy as np

from distca.data.distributions import sample_doc_lengths
from parallel.cad.dispatch import transfers
from parallel.cad.planner import plan
from parallel.cad.tasks import CostModel, contiguous_pieces, load_cost_table

HERE = os.path.dirname(os.path.abspath(__file__))
HQ, HKV, D, EB = 32, 8, 128, 2


def stateful_memory(tr, n: int, cm: CostModel) -> np.ndarray:
    """Per server: received q rows + o (q-sized) + LSE per query, and received k, v rows."""
    q_tok = np.bincount(tr.q_dst, tr.q_end - tr.q_start, minlength=n)
    kv_tok = np.bincount(tr.kv_dst, tr.kv_end - tr.kv_start, minlength=n)
    return q_tok * float(cm.mem_per_q_token) + kv_tok * float(cm.mem_per_kv_token)


def resend_memory(tokens: np.ndarray) -> np.ndarray:
    """Per origin: q, k, v, o of its tokens plus the fp32 LSE per query head."""
    return tokens * float((2 * HQ + 2 * HKV) * D * EB + 4 * HQ)


def run_config(n, tokens, dist, seed, cm, tolerance, block, servers) -> dict:
    rng = np.random.default_rng(seed)
    samples = [np.asarray(sample_doc_lengths(dist, tokens, rng, max_len=tokens), dtype=np.int64)
               for _ in range(n)]
    pieces = contiguous_pieces(samples)
    p = plan(pieces.tasks(), n, cm, tolerance=tolerance, block=block, servers=servers)
    tr = transfers(p.parts, p.server, pieces)
    owned = np.array([s.sum() for s in samples], dtype=np.float64)
    gib = 2.0 ** 30
    out = {"ranks": n, "tokens": tokens, "dist": dist, "servers": servers,
           "docs": int(sum(s.size for s in samples))}
    for mode, mem in (("stateful", stateful_memory(tr, n, cm)), ("resend", resend_memory(owned))):
        out[mode] = {"held_gib_max": float(mem.max() / gib), "held_gib_mean": float(mem.mean() / gib),
                     "group_bytes_per_layer_gib": tr.remote_bytes(cm, resend=mode == "resend") / gib}
    out["resend_over_stateful_bytes"] = out["resend"]["group_bytes_per_layer_gib"] / max(
        out["stateful"]["group_bytes_per_layer_gib"], 1e-30)
    out["resend_over_stateful_max_memory"] = out["resend"]["held_gib_max"] / out["stateful"]["held_gib_max"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 524288])
    ap.add_argument("--dists", nargs="+", default=["pretrain", "longctx"])
    ap.add_argument("--servers", type=int, nargs="+", default=[0, -2],
                    help="0: every rank serves; -K: K dedicated servers per 8 ranks")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--table", default=os.path.join(HERE, "..", "parallel", "cad", "cost_table_h100.json"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cad_backward_modes.json"))
    args = ap.parse_args()
    if args.quick:
        args.ranks, args.tokens = [8], [131072]
    cm = CostModel(HQ, HKV, D, EB, table=load_cost_table(args.table))
    rows = []
    for n in args.ranks:
        for tokens in args.tokens:
            for dist in args.dists:
                for s in args.servers:
                    servers = s if s >= 0 else n * -s // 8
                    r = run_config(n, tokens, dist, 0, cm, args.tolerance, args.block, servers)
                    print(json.dumps({k: r[k] for k in ("ranks", "tokens", "dist", "servers")}),
                          {m: {k: round(v, 2) for k, v in r[m].items()} for m in ("stateful", "resend")},
                          flush=True)
                    rows.append(r)
    out = {"benchmark": "cad_backward_modes (planner simulation, no GPU)",
           "shapes": {"hq": HQ, "hkv": HKV, "head_dim": D, "bytes_per_element": EB},
           "cost_table": os.path.basename(args.table), "tolerance": args.tolerance,
           "block": args.block, "date": datetime.date.today().isoformat(),
           "device": "CPU (planner simulation only)", "python": platform.python_version(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
