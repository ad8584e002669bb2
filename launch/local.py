"""Launch training on this machine: one process per GPU, or N CPU processes (gloo).

    python -m launch.local [--nproc N] [hydra overrides ...]
"""
from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=0,
                    help="processes to start (default: one per visible GPU, or 1 on a CPU machine)")
    args, overrides = ap.parse_known_args()
    nproc = args.nproc
    if nproc <= 0:
        import torch
        nproc = torch.cuda.device_count() or 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "distca.train", *overrides]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
