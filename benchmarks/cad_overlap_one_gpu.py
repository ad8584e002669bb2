"""What CAD's overlap modes cost in compute on ONE GPU, where there is nothing to overlap.

On one GPU the CAD group is this process alone: every all-to-all is a local copy, so a mode's
step time over local attention's is its pure overhead (index gathers, the plan, and for
`nanobatch` two half-size passes of the projections and MLP instead of one). What the modes
buy (communication hidden) needs several GPUs: benchmarks/multigpu_overlap.py.

Rows: the 1B model, bf16 autocast, fused AdamW, packed documents from the pretraining-like mix,
each recompute policy, attention = local | cad overlap none | halves | nanobatch.

    python benchmarks/cad_overlap_one_gpu.py --seq-lens 16384 65536 --out $OUT/cad_overlap_one_gpu_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
from functools import partial

import numpy as np
import torch

from benchmarks.e2e import _flops, _measure, _ours
from distca.config import compose_config, to_typed
from distca.data.distributions import sample_doc_lengths
from distca.observe.flops import device_peak_tflops
from parallel.cad.attention import CADAttention
from parallel.config import CADConfig

MODES = ("local", "none", "halves", "nanobatch")


def _build(mcfg, seq_len, doc_lens, vocab, recompute, mode):
    core = None if mode == "local" else CADAttention(
        options=CADConfig(overlap=mode, ping_pong=mode != "none"))
    return _ours(mcfg, seq_len, doc_lens, vocab, recompute, core)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="1b")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--policies", nargs="+", default=["none", "full"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/cad_overlap_one_gpu.json")
    args = ap.parse_args()
    mcfg = to_typed(compose_config([f"model={args.model}"])).model
    hd = mcfg.hidden // mcfg.heads
    peak = device_peak_tflops(torch.device("cuda"))
    rows = []
    command = ("python benchmarks/cad_overlap_one_gpu.py --seq-lens " + " ".join(map(str, args.seq_lens))
               + " --policies " + " ".join(args.policies) + f" --steps {args.steps}")
    for L in args.seq_lens:
        docs = sample_doc_lengths("pretrain", L, np.random.default_rng(0), max_len=L)
        for policy in args.policies:
            for mode in MODES:
                label = {"seq_len": L, "num_docs": len(docs), "recompute": policy, "attention": mode}
                row, step = _measure(partial(_build, mcfg, L, docs, mcfg.vocab_size, policy, mode),
                                     label, partial(_flops, L=L, doc_lens=docs, mcfg=mcfg, hd=hd),
                                     peak, args)
                rows.append(row)
                del step
                write(args.out, rows, args.model, command)  # a run cut short keeps what it measured
    for o in overhead(rows):
        print(json.dumps(o))


def overhead(rows: list[dict]) -> list[dict]:
    """Each CAD mode's step time over local attention's, same length and recompute policy."""
    ok = {(r["seq_len"], r["recompute"], r["attention"]): r for r in rows if "error" not in r}
    return [{"seq_len": L, "recompute": p, "attention": m,
             "step_over_local": ok[(L, p, m)]["step_s"] / ok[(L, p, "local")]["step_s"]}
            for (L, p, m) in ok if m != "local" and (L, p, "local") in ok]


def write(path: str, rows: list[dict], model: str, command: str, note: str | None = None) -> None:
    out = {"benchmark": "cad_overlap_one_gpu", "model": model,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "rows": rows, "overhead": overhead(rows)}
    if note:
        out["note"] = note
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
