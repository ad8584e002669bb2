"""How many key/value bytes CAD's dispatch saves by sending a key once per destination.

A task (a query range of one document) needs the key prefix [0, q_end) of its document.
Sent per task, a server that runs several tasks of one document (a document cut into parts,
or the two ping-pong halves of one) receives the shared prefix several times. CAD's dispatch
(`parallel.cad.dispatch.transfers`) sends each (server, document) the union of what its
tasks need, once per ping-pong half, replicates it on the server into each kernel segment,
and sums the copies' gradients there before the return (`server.serve_backward`).

For the planner's real plans (H100 cost table, Llama-8B layer shapes, tolerance 0.05,
block 128, ping-pong on, as the trainer plans) this reports the K/V bytes crossing ranks per
layer (forward + backward: k, v out and dk, dv back), whole group:
  per_task       every task fetches its own key prefix (the naive dispatch)
  per_half       once per (server, document) in each ping-pong half, the halves independent
                 (CAD before keys were shared across halves)
  now            what CAD sends: the second half skips what the first sent to that server
  per_step       once per (server, document) for the whole step (with ping-pong off)

Usage: python benchmarks/cad_kv_dedup.py
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
from parallel.cad.planner import fitting_block, plan, split_halves
from parallel.cad.tasks import CostModel, TaskTable, contiguous_pieces, load_cost_table

HERE = os.path.dirname(os.path.abspath(__file__))
HQ, HKV, D, EB = 32, 8, 128, 2


def remote_kv_tokens(tr) -> int:
    return int(((tr.kv_end - tr.kv_start)[tr.kv_src != tr.kv_dst]).sum())


def per_task_kv_tokens(parts: TaskTable, server: np.ndarray, pieces) -> int:
    """Every task as if it were alone on its server: transfers() of one part at a time
    gives exactly its own key prefix from its owners."""
    return sum(remote_kv_tokens(transfers(parts.take(np.array([i])), server[i:i + 1], pieces))
               for i in range(len(parts)))


def run_config(n, tokens, dist, seed, cm, tolerance, block) -> dict:
    rng = np.random.default_rng(seed)
    samples = [np.asarray(sample_doc_lengths(dist, tokens, rng, max_len=tokens), dtype=np.int64)
               for _ in range(n)]
    pieces = contiguous_pieces(samples)
    tasks = pieces.tasks()
    blk = fitting_block(tasks, n, block, tolerance)
    p = plan(tasks, n, cm, tolerance=tolerance, block=blk)
    half = split_halves(p, cm, blk)
    per_step = remote_kv_tokens(transfers(p.parts, p.server, pieces))
    per_half = sum(remote_kv_tokens(transfers(p.parts.take(half == h), p.server[half == h], pieces))
                   for h in (0, 1))
    first = transfers(p.parts.take(half == 0), p.server[half == 0], pieces)
    second = transfers(p.parts.take(half == 1), p.server[half == 1], pieces, held=first)
    now = remote_kv_tokens(first) + remote_kv_tokens(second)
    per_task = per_task_kv_tokens(p.parts, p.server, pieces)
    gib = 2.0 ** 30
    to_gib = lambda t: t * cm.bytes_per_kv_token / gib  # noqa: E731
    return {"ranks": n, "tokens": tokens, "dist": dist, "tasks": len(p.parts),
            "kv_gib_per_layer": {"per_task": to_gib(per_task), "per_half": to_gib(per_half),
                                 "now": to_gib(now), "per_step": to_gib(per_step)},
            "now_saves_vs_per_half": 1 - now / per_half if per_half else 0.0,
            "now_saves_vs_per_task": 1 - now / per_task if per_task else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 524288])
    ap.add_argument("--dists", nargs="+", default=["pretrain", "longctx"])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--table", default=os.path.join(HERE, "..", "parallel", "cad", "cost_table_h100.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cad_kv_dedup.json"))
    args = ap.parse_args()
    cm = CostModel(HQ, HKV, D, EB, table=load_cost_table(args.table))
    rows = []
    for n in args.ranks:
        for tokens in args.tokens:
            for dist in args.dists:
                r = run_config(n, tokens, dist, 0, cm, args.tolerance, args.block)
                print(json.dumps(r), flush=True)
                rows.append(r)
    out = {"benchmark": "cad_kv_dedup (planner simulation, no GPU)",
           "shapes": {"hq": HQ, "hkv": HKV, "head_dim": D, "bytes_per_element": EB},
           "cost_table": os.path.basename(args.table), "tolerance": args.tolerance,
           "block": args.block, "date": datetime.date.today().isoformat(),
           "device": "CPU (planner simulation only)", "python": platform.python_version(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
