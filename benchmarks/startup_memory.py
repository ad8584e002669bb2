"""Start-up time and peak host memory of building the model, per rank, before and after the
meta-device build (CPU, gloo, no GPU needed).

before: every rank builds the whole model on the host in fp32 at its initial values, then keeps
its tensor-parallel slice (the trainer's flow until the on-ramp work);
after:  every rank builds on the meta device, applies the plan, and materialises only its
part, slice by slice (distca/parallelize/apply.py).

Ranks build one after another (a barrier between them), so a machine that could not hold
every rank's "before" peak at once still measures each; the figure is each process's own
peak RSS growth over its steady state before the build (VmHWM after a reset), and the wall
time of the build.

    python benchmarks/startup_memory.py --layers 1 --tp 4 --out benchmarks/results/startup_memory_8b_tp4_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM restarts from the current RSS
        f.write("5")


def _peak_mib() -> float:
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _rank(rank: int, world: int, port: int, overrides: list[str], mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    from distca.config import compose_config, to_typed
    from distca.config.validate import build_plan
    from distca.model import build_model
    from distca.parallelize.apply import build_parallel_model
    from distca.parallelize.tensor_parallel import apply_tensor_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = to_typed(compose_config(overrides))
    vocab = cfg.model.vocab_size if cfg.model.vocab_size > 0 else 320  # -1: the byte tokenizer's, padded
    plan = build_plan(cfg, world, vocab)
    plan.setup(torch.device("cpu"))
    tiny = to_typed(compose_config(["experiment=tiny"])).model
    build_model(tiny, 320, None, None, 0)  # first-use costs of both paths, outside the measurement
    build_model(tiny, 320, None, None, 0, meta=True)
    for turn in range(world):
        dist.barrier()
        if turn != rank:
            continue
        steady = _rss_mib()
        _reset_peak()
        t0 = time.perf_counter()
        if mode == "before":
            model = build_model(cfg.model, vocab, plan.core_attention, plan.linear_attention, cfg.train.seed)
            model = apply_tensor_parallel(model, plan.state.tp_group)
        else:
            model = build_parallel_model(cfg, plan, vocab, torch.device("cpu"), 1).model
        seconds = time.perf_counter() - t0
        kept = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        row = {"mode": mode, "rank": rank, "build_s": seconds, "peak_rss_growth_mib": _peak_mib() - steady,
               "steady_rss_mib": steady, "kept_parameters_mib": kept}
        Path(out, f"{mode}_rank{rank}.json").write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        del model
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="8b")
    ap.add_argument("--layers", type=int, default=1, help="layers kept (the host must hold one whole model)")
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/startup_memory_8b_tp4_cpu.json")
    args = ap.parse_args()
    import tempfile

    import torch.multiprocessing as mp

    overrides = [f"model={args.model}", f"model.layers={'S' * args.layers}", f"parallel.tp={args.tp}",
                 "train.global_batch_size=1"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("before", "after"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_rank, args=(args.tp, port, overrides, mode, tmp), nprocs=args.tp, join=True)
            rows += [json.loads(Path(tmp, f"{mode}_rank{r}.json").read_text()) for r in range(args.tp)]
    import torch
    summary = {m: {"max_peak_rss_growth_mib": max(r["peak_rss_growth_mib"] for r in rows if r["mode"] == m),
                   "max_build_s": max(r["build_s"] for r in rows if r["mode"] == m)} for m in ("before", "after")}
    record = {"benchmark": "startup_memory", "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "overrides": overrides, "rows": rows,
              "summary": summary,
              "note": "per rank: the model build only (process group, plan and imports before it are equal in "
                      "both modes); ranks build one after another; peak RSS growth over the rank's steady RSS"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
