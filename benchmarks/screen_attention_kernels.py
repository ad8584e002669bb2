"""Screen attention-kernel tile candidates for sm_90 without a GPU: registers, spills, smem.

Device time is scarce, so tile candidates are screened here first: a config that spills
registers or does not fit shared memory is not worth timing. Needs only triton (its bundled
ptxas and cuobjdump: distca_kernels/flash_attn/sm90_compile.py); run with the same triton version as
the GPU machine, since register allocation changes between releases.

Usage: python benchmarks/screen_attention_kernels.py [--dtype bf16] [--head-dim 128] [--tma-only]
           [--kinds forward,dkdv,dq,g-forward,g-dkdv,g-dq,g-fused]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402

from distca_kernels.flash_attn.sm90_compile import (dkdv_source, dq_source, forward_source,  # noqa: E402
                                                    gluon_source, resources)

ALL_KINDS = "forward,dkdv,dq,g-forward,g-dkdv,g-dq,g-fused"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--tma-only", action="store_true", help="only the TMA variants of the Triton kernels")
    ap.add_argument("--kinds", default=ALL_KINDS, help="comma-separated kernels to screen")
    args = ap.parse_args()
    d, dt = args.head_dim, args.dtype
    print(f"triton {triton.__version__}, sm_90, {dt}, head dim {d}")
    cands = []
    for tma in ((True,) if args.tma_only else (False, True)):
        for bm, bn, w, s in ((128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)):
            cands.append(("forward", (bm, bn, w, s, tma), lambda bm=bm, bn=bn, tma=tma: forward_source(dt, d, bm, bn, tma)))
        for bn, bm, w, s in ((128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (128, 128, 8, 2)):
            cands.append(("dkdv", (bn, bm, w, s, tma), lambda bn=bn, bm=bm, tma=tma: dkdv_source(dt, d, bn, bm, tma)))
        for bm, bn, w, s in ((128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 32, 8, 3)):
            cands.append(("dq", (bm, bn, w, s, tma), lambda bm=bm, bn=bn, tma=tma: dq_source(dt, d, bm, bn, tma)))
    for kind, (r, c) in (("forward", (128, 128)), ("dkdv", (128, 64)), ("dq", (128, 64)), ("dq", (128, 128)),
                         ("fused", (128, 64))):
        w = 4 if kind == "forward" else 8  # the warp-specialized forward: 4 warps plus its partitions
        cands.append((f"g-{kind}", (r, c, w, 0, True),
                      lambda kind=kind, r=r, c=c, w=w: gluon_source(kind, dt, d, r, c, w)))
    kinds = args.kinds.split(",")
    for kind, (r, c, w, s, tma), make in cands:
        if kind not in kinds:
            continue
        try:
            res = resources(make(), w, s)
            print(f"{kind:8s} rows {r:3d} cols {c:3d} warps {w} stages {s} tma {tma!s:5s} -> {res}", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on to the next candidate
            print(f"{kind:8s} rows {r:3d} cols {c:3d} warps {w} stages {s} tma {tma!s:5s} -> FAILED "
                  f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)


if __name__ == "__main__":
    main()
