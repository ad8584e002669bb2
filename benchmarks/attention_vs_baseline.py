"""A/B timing of the current Gluon attention kernels against an earlier commit's, interleaved.

A kernel rewrite replaces the old kernel in place, so the old one is no longer in the tree to
time against. This script loads the old kernel files from a directory (extract them from git
first) and times, in the same process and in rotating order over several rounds, forward and
forward+backward of:
  current    the kernels of this tree (default configs, non-deterministic: fused backward)
  baseline   the same configs with the baseline's Gluon forward and/or fused backward swapped in

The baseline files must keep the kernels' launch signatures of that era: the forward
`gluon_attention_forward_kernel` (one program per 128-row q tile, 8 warps, a full-tile q/o
box) and the fused backward `gluon_attention_backward_fused_kernel` (same arguments as now).

Usage (GPU machine):
  mkdir -p baseline && for f in gluon_forward gluon_backward_fused; do
      git show b0c7a07:kernels/flash_attn/$f.py > baseline/$f.py; done
  python benchmarks/attention_vs_baseline.py --baseline baseline --label b0c7a07 --out $OUT/ab.json
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.attention import TOTAL_TOKENS, cu_seqlens, pretraining_doc_lengths, random_qkv  # noqa: E402
from benchmarks.attention_variants import summarize, time_variant  # noqa: E402
from distca_kernels.flash_attn import gluon_backward_fused  # noqa: E402
from distca_kernels.flash_attn import triton_attention as launcher  # noqa: E402
from distca_kernels.flash_attn.block_config import select_configs  # noqa: E402
from distca_kernels.flash_attn.gluon_tma import segment_descriptor  # noqa: E402
from distca_kernels.flash_attn.triton_attention import LOG2E  # noqa: E402


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _baseline_forward_launcher(kernel):
    """The launcher of the lockstep forward: a full 128-row q/o box, 8 warps."""
    def launch(q, k, v, o, lse, cu_q, cu_k, schedule, softmax_scale, causal, cfg):
        hq, hkv = q.shape[1], k.shape[1]
        kernel[(schedule.shape[0] * hq,)](
            segment_descriptor(q, cfg.block_rows), segment_descriptor(k, cfg.block_cols),
            segment_descriptor(v, cfg.block_cols), segment_descriptor(o, cfg.block_rows), lse,
            cu_q, cu_k, schedule, softmax_scale * LOG2E, lse.stride(0), schedule.shape[0], hq // hkv,
            HEAD_DIM=q.shape[2], BLOCK_M=cfg.block_rows, BLOCK_N=cfg.block_cols, CAUSAL=causal, num_warps=8,
        )
    return launch


class Swap:
    """Context manager that puts the baseline kernels in place of the current ones."""

    def __init__(self, forward_launch, fused_kernel):
        self.forward_launch, self.fused_kernel = forward_launch, fused_kernel

    def __enter__(self):
        self.saved = launcher._gluon_forward, gluon_backward_fused.gluon_attention_backward_fused_kernel
        if self.forward_launch is not None:
            launcher._gluon_forward = self.forward_launch
        if self.fused_kernel is not None:
            gluon_backward_fused.gluon_attention_backward_fused_kernel = self.fused_kernel

    def __exit__(self, *exc):
        launcher._gluon_forward, gluon_backward_fused.gluon_attention_backward_fused_kernel = self.saved


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="directory with the baseline kernel files")
    ap.add_argument("--label", required=True, help="what the baseline is (its commit)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--out", default="attention_vs_baseline.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention_vs_baseline.py needs a CUDA GPU")
    fwd_file, bwd_file = args.baseline / "gluon_forward.py", args.baseline / "gluon_backward_fused.py"
    if not (fwd_file.exists() or bwd_file.exists()):
        raise SystemExit(f"--baseline {args.baseline}: neither gluon_forward.py nor gluon_backward_fused.py is there")
    swap = Swap(_baseline_forward_launcher(_load(fwd_file, "forward").gluon_attention_forward_kernel)
                if fwd_file.exists() else None,
                _load(bwd_file, "fused").gluon_attention_backward_fused_kernel if bwd_file.exists() else None)

    dim, heads = 128, args.heads
    docs = pretraining_doc_lengths(TOTAL_TOKENS, 0)
    cases = [("causal 16K x4", [16384] * 4, heads), ("causal 64K x1", [65536], heads),
             ("docs 64K", docs, heads), (f"docs 64K GQA {heads}/{heads // 4}", docs, heads // 4)]
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in range(args.rounds):
        names = ["current", "baseline"] if r % 2 == 0 else ["baseline", "current"]
        for case, lengths, hkv in cases:
            cu = cu_seqlens(lengths)
            (q, k, v), do = random_qkv(sum(lengths), heads, dim, seed=r, heads_kv=hkv)
            configs = select_configs(dim, q.dtype, False, group=heads // hkv, deterministic=False)
            for name in names:
                if name == "baseline":
                    with swap:
                        ms = time_variant(configs, q, k, v, do, cu, dim)
                else:
                    ms = time_variant(configs, q, k, v, do, cu, dim)
                times.setdefault((case, name, "fwd"), []).append(ms[0])
                times.setdefault((case, name, "fwd+bwd"), []).append(ms[1])
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = summarize(times, cases, dim, heads)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=__import__("triton").__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  baseline=args.label, baseline_files=sorted(p.name for p in args.baseline.glob("*.py")),
                  rounds=args.rounds, heads=heads, head_dim=dim, tokens_per_case=TOTAL_TOKENS,
                  command=" ".join(["python"] + sys.argv), rows=rows)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
