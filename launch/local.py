"""Launch training on this machine: one process per GPU, or as many CPU processes (gloo) as
the parallel degrees need.

    python -m launch.local [--nproc N] [hydra overrides ...]
    python -m launch.local --nproc N --module distca.evaluation.cli RUN_DIR|HF_DIR [overrides ...]

Without --nproc: every visible GPU; on a CPU machine, dp x tp x pp x cp (+ CAD pool ranks)
from the overrides (dp=-1 counts as 1). CPU ranks share the cores available to the launcher
(OMP_NUM_THREADS, unless set).
"""
from __future__ import annotations

import argparse
import os
import sys


def degrees_world(overrides: list[str]) -> int:
    """The smallest world the composed config's degrees need (1 if it does not compose: the
    trainer then prints the config error)."""
    try:
        from distca.config import compose_config
        p = compose_config([o for o in overrides if not o.startswith("-")]).parallel
    except Exception:  # noqa: BLE001 - the trainer reports a bad config properly
        return 1
    return max(p.dp, 1) * p.tp * p.pp * p.cp + p.cad.pool * p.tp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=0,
                    help="processes to start (default: one per visible GPU, or what the parallel degrees need on a CPU)")
    ap.add_argument("--max-restarts", type=int, default=0,
                    help="restart the job this many times after a rank fails; it resumes from its newest checkpoint")
    ap.add_argument("--module", default="distca.train",
                    help="what each rank runs (distca.evaluation.cli: distca-eval's evaluation at a layout)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args, overrides = ap.parse_known_args()
    import torch

    from distca.lifecycle.process_group import cpu_threads
    gpus = torch.cuda.device_count()
    nproc = args.nproc if args.nproc > 0 else (gpus or degrees_world(overrides))
    env = dict(os.environ)
    if not gpus and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cpu_threads(nproc))
    cmd = [sys.executable, "-m", "launch.torchrun", "--standalone", f"--nproc_per_node={nproc}",
           *([f"--max-restarts={args.max_restarts}"] if args.max_restarts else []),
           "-m", args.module, *overrides]
    threads = "" if gpus else f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} "
    print(f"+ {threads}{' '.join(cmd)}", file=sys.stderr, flush=True)
    if args.dry_run:
        return
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
