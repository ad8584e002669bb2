"""Bytes each rank sends per softmax-attention layer, for every context-parallel algorithm.

Runs the real strategies (ring, allgather, ulysses, usp) on gloo CPU ranks, one attention
layer forward and backward, with `benchmarks/comm_counter.CommCounter` subscribed to the
collectives they issue (parallel/comm.py). Per (algorithm, tokens T, ranks N) it records forward and
backward bytes per rank (max and mean over ranks), the split per collective and the
number of calls. Convention for what a collective "sends": see comm_counter.py.

Shape: GQA with 8 query heads and 2 KV heads of dim 64, bf16 activations (gradient
accumulators travel in fp32 where the algorithm says so). Every message is proportional to
heads x head_dim, so bytes for another model scale by its (KV) heads x head_dim. The
documents (lengths drawn up to 1024 tokens) only change compute, not bytes.

    python benchmarks/cp_bytes.py                      # writes benchmarks/results/cp_bytes.json
    python benchmarks/cp_bytes.py --seq 2048 --ranks 2 4 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HQ, HKV, D, DTYPE = 8, 2, 64, torch.bfloat16


def _algos(n: int) -> list[tuple[str, int]]:
    """(cp_algo, ulysses degree) runnable at n ranks with HQ/HKV heads."""
    out = [("ring", 1), ("allgather", 1)]
    if HQ % n == 0:
        out.append(("ulysses", 1))
    if n >= 4 and n % 2 == 0:
        out.append(("usp", 2))
    return out


def _doc_lens(total: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lens = []
    while sum(lens) < total:
        lens.append(min(rng.randint(16, 1024), total - sum(lens)))
    return lens


def _rank(rank: int, n: int, port: int, seqs: list[int], out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    from parallel.config import ModelShape, ParallelConfig
    from parallel.comm_counter import CommCounter
    from parallel.plan import ParallelPlan

    rows = []
    for algo, u in _algos(n):
        plan = ParallelPlan(ParallelConfig(cp=n, cp_algo=algo, ulysses=u), ModelShape(HQ, HKV, "S"), n)
        plan.setup()  # collective: every rank, same order
        strategy = plan.core_attention
        for t in seqs:
            doc_lens = _doc_lens(t, t)
            shard = plan.build_shard(doc_lens)
            g = torch.Generator().manual_seed(rank)
            q, k, v = (torch.randn(shard.num_tokens, h, D, generator=g).to(DTYPE).requires_grad_()
                       for h in (HQ, HKV, HKV))
            with CommCounter() as fwd:
                o = strategy(q, k, v, shard, D ** -0.5)
            with CommCounter() as bwd:
                o.backward(torch.ones_like(o))
            mine = {"fwd": fwd.bytes_sent, "bwd": bwd.bytes_sent,
                    "fwd_by_op": dict(fwd.by_op), "bwd_by_op": dict(bwd.by_op),
                    "fwd_calls": dict(fwd.calls), "bwd_calls": dict(bwd.calls)}
            every = [None] * n
            dist.all_gather_object(every, mine)
            if rank == 0:
                fw, bw = [e["fwd"] for e in every], [e["bwd"] for e in every]
                rows.append({
                    "algo": algo, "ulysses": u, "ranks": n, "tokens": t, "layout": plan.layout,
                    "fwd_bytes_max": max(fw), "fwd_bytes_mean": sum(fw) / n,
                    "bwd_bytes_max": max(bw), "bwd_bytes_mean": sum(bw) / n,
                    "bytes_per_token_fwd_bwd": (max(fw) + max(bw)) / (t / n),
                    "rank0": every[0]})
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 8192], help="tokens per micro-batch stream")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="CP degrees N")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cp_bytes.json"))
    args = ap.parse_args()
    for n in args.ranks:
        if n < 2:
            raise ValueError(f"--ranks {n}: context parallelism needs at least 2 ranks")
    for t in args.seq:
        if t < 2 * max(args.ranks):
            raise ValueError(f"--seq {t} is shorter than 2 x the largest --ranks; use longer streams")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            path = os.path.join(tmp, f"{n}.json")
            mp.spawn(_rank, args=(n, _free_port(), args.seq, path), nprocs=n, join=True)
            results += json.loads(Path(path).read_text())
            print(f"N={n}: done", flush=True)
    for r in results:
        print(f"{r['algo']:>9} N={r['ranks']} T={r['tokens']:>6}  fwd {r['fwd_bytes_max'] / 2**20:8.2f} MiB"
              f"  bwd {r['bwd_bytes_max'] / 2**20:8.2f} MiB  (max over ranks)")
    doc = {
        "what": "bytes sent per rank for one softmax-attention layer, forward and backward",
        "how": "CommCounter wrapping torch.distributed collectives on gloo CPU ranks; "
               "all_gather counts (N-1) x input, reduce_scatter (N-1)/N x input, all_to_all the "
               "input minus the own chunk, p2p the tensor",
        "shape": {"query_heads": HQ, "kv_heads": HKV, "head_dim": D, "dtype": str(DTYPE).replace("torch.", "")},
        "command": "python benchmarks/cp_bytes.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "host": platform.machine(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
