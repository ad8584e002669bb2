"""A/B timing of our attention kernel variants, interleaved, to tell real gains from noise.

The sweep in attention.py times each candidate once, one after another; on the GPU machine
two such runs differ by up to ~5% for the same kernel, as much as the changes being judged.
Here every variant runs on every case in each of several rounds, in rotating order, and the
table reports each variant's median over rounds next to its spread (max - min) / median,
so a difference smaller than the spread reads as noise.

Variants (head dim 128, bf16; forward 128 x 128, dK/dV 128 x 64, dQ 128 x 64 tiles). "Gluon
forward" and "one-kernel Gluon backward" are the kernels of the tree, warp-specialized since
attention_variants_ws_h100.json; the result files before it timed their lockstep predecessors:
  triton      the Triton kernels with TMA descriptors (no Gluon)
  gluon-fwd   Gluon forward, Triton backward
  gluon-bwd   Triton forward, Gluon dK/dV and dQ
  gluon       Gluon forward and backward
  gluon-dq128 as gluon, with 128 x 128 dQ tiles (the default since this comparison)
  gluon-fused Gluon forward, the one-kernel Gluon backward (TMA reduce-add of dQ, 128 x 64)
attention_variants_h100.json also has "fused": Gluon forward and a one-kernel Triton backward
with atomic dQ (TMA, 128 x 64), since removed for being slower than the pair.

Usage (GPU machine): python benchmarks/attention_variants.py --rounds 5 --out $OUT/attention_variants.json
--profile VARIANT runs one forward and backward of causal 16K x 4 and nothing else, for a profiler:
  ncu --section SpeedOfLight --section WarpStateStats -k regex:attention_ --launch-count 4 \
      python benchmarks/attention_variants.py --profile gluon
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.attention import (TOTAL_TOKENS, bench_ms, causal_pairs, config_record,  # noqa: E402
                                  cu_seqlens, pretraining_doc_lengths, random_qkv)
from distca_kernels.flash_attn.block_config import AttentionConfigs, TileConfig  # noqa: E402
from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention  # noqa: E402


def variants():
    """Spelled out (not derived from the defaults) so that a result file keeps its meaning."""
    fwd_triton = TileConfig(128, 128, 8, 3, tma=True)
    fwd_gluon = TileConfig(128, 128, 4, tma=True, gluon=True)
    dkdv_triton = TileConfig(128, 64, 8, 3, tma=True)
    dkdv_gluon = TileConfig(128, 64, 8, 3, tma=True, gluon=True)
    dq_triton = TileConfig(128, 64, 8, 3, tma=True)
    dq_gluon = TileConfig(128, 64, 8, 3, tma=True, gluon=True)
    dq_gluon_128 = TileConfig(128, 128, 8, 3, tma=True, gluon=True)
    return {
        "triton": AttentionConfigs(fwd_triton, dkdv_triton, dq_triton),
        "gluon-fwd": AttentionConfigs(fwd_gluon, dkdv_triton, dq_triton),
        "gluon-bwd": AttentionConfigs(fwd_triton, dkdv_gluon, dq_gluon),
        "gluon": AttentionConfigs(fwd_gluon, dkdv_gluon, dq_gluon),
        "gluon-dq128": AttentionConfigs(fwd_gluon, dkdv_gluon, dq_gluon_128),
        "gluon-fused": AttentionConfigs(fwd_gluon, dkdv_gluon, dq_gluon_128,
                                        fused=TileConfig(128, 64, 8, tma=True, gluon=True)),
    }


def time_variant(cfg, q, k, v, do, cu, dim):
    def fwd():
        with torch.no_grad():
            TritonVarlenAttention.apply(q, k, v, cu, cu, dim ** -0.5, True, False, cfg)

    def fwdbwd():
        o, _ = TritonVarlenAttention.apply(q, k, v, cu, cu, dim ** -0.5, True, False, cfg)
        torch.autograd.grad(o, (q, k, v), do)
    return bench_ms(fwd, 80), bench_ms(fwdbwd, 80)


def variants_names():
    return tuple(variants())


def summarize(times: dict[tuple[str, str, str], list[float]], cases, dim: int, heads: int) -> list[dict]:
    """Rows (median ms, TFLOP/s, spread over rounds) from {(case, variant, pass): [ms per round]},
    printed as a table too; cases are (name, document lengths, kv heads)."""
    rows = []
    for (case, name, what), ms in times.items():
        lengths = next(c[1] for c in cases if c[0] == case)
        flops = 4 * dim * heads * causal_pairs(lengths) * (3.5 if what == "fwd+bwd" else 1.0)
        med = statistics.median(ms)
        rows.append(dict(case=case, variant=name, pass_=what, median_ms=med, tflops=flops / med / 1e9,
                         spread=(max(ms) - min(ms)) / med, ms=ms))
    print(f"{'case':20s} {'variant':12s} {'pass':8s} {'median ms':>10s} {'TFLOP/s':>8s} {'spread':>7s}")
    for row in rows:
        print(f"{row['case']:20s} {row['variant']:12s} {row['pass_']:8s} {row['median_ms']:10.3f} "
              f"{row['tflops']:8.1f} {row['spread']:7.1%}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--out", default="attention_variants.json")
    ap.add_argument("--profile", choices=sorted(variants_names()), help="one pass of this variant, untimed")
    ap.add_argument("--only", nargs="+", choices=sorted(variants_names()), help="time these variants only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention_variants.py needs a CUDA GPU")
    dim, heads = 128, args.heads
    if args.profile:
        cu = cu_seqlens([16384] * 4)
        (q, k, v), do = random_qkv(16384 * 4, heads, dim)
        o, _ = TritonVarlenAttention.apply(q, k, v, cu, cu, dim ** -0.5, True, False, variants()[args.profile])
        torch.autograd.grad(o, (q, k, v), do)
        torch.cuda.synchronize()
        return
    docs = pretraining_doc_lengths(TOTAL_TOKENS, 0)
    cases = [("causal 16K x4", [16384] * 4, heads), ("causal 64K x1", [65536], heads),
             ("docs 64K", docs, heads), (f"docs 64K GQA {heads}/{heads // 4}", docs, heads // 4)]
    configs = {k: v for k, v in variants().items() if not args.only or k in args.only}
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in range(args.rounds):
        names = list(configs)
        names = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always runs first
        for case, lengths, hkv in cases:
            cu = cu_seqlens(lengths)
            (q, k, v), do = random_qkv(sum(lengths), heads, dim, seed=r, heads_kv=hkv)
            for name in names:
                fwd_ms, fwdbwd_ms = time_variant(configs[name], q, k, v, do, cu, dim)
                times.setdefault((case, name, "fwd"), []).append(fwd_ms)
                times.setdefault((case, name, "fwd+bwd"), []).append(fwdbwd_ms)
            del q, k, v, do
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = summarize(times, cases, dim, heads)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=__import__("triton").__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  rounds=args.rounds, heads=heads, head_dim=dim, tokens_per_case=TOTAL_TOKENS,
                  variants={k: config_record(v) for k, v in configs.items()},
                  command=" ".join(["python"] + sys.argv), rows=rows)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
