"""Varlen attention speed on one GPU: our kernels (Triton, Gluon on Hopper) vs torch SDPA (flash, cuDNN) and FlexAttention.

Cases (bf16, Hq = Hkv = --heads, head dim --dim, 64K tokens per case):
  causal 4K x 16, 16K x 4, 64K x 1  -- one causal mask per sequence; SDPA takes [B, H, S, D]
  docs 64K                          -- 64K tokens packed from a pretraining-like document
                                       length distribution (below), causal within documents;
                                       FlexAttention gets the equivalent document block mask,
                                       SDPA has no varlen mask and is left out.
  docs 64K GQA H/(H/4)              -- the same with 4 q heads per kv head (flex: enable_gqa)
TFLOP/s count useful FLOPs only: 4 * D * H per visible (query, key) pair forward, 2.5x that
backward (5 matmuls; our backward runs 7, recomputing P twice, and the extra 2 are not counted).

--sweep first times a few tile configurations of our kernels (forward, then the dK/dV and dQ
kernels of the backward: Triton with TMA or pointer loads, or Gluon; then the one-kernel Gluon
backward) on causal 16K and the packed documents, once each, and uses the fastest for
the main table. One pass is noisy (~5% between runs); the defaults in
distca_kernels/flash_attn/block_config.py come from benchmarks/attention_variants.py, which
interleaves several rounds. Without --sweep the main table runs those defaults.

Usage (GPU machine): python benchmarks/attention.py [--sweep] --out $OUT/attention_h100.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from distca_kernels.flash_attn import flash_attn_varlen_func
from distca_kernels.flash_attn.block_config import AttentionConfigs, TileConfig, select_configs
from distca_kernels.flash_attn.triton_attention import TritonVarlenAttention, attention_backward, attention_forward

TOTAL_TOKENS = 65536


def pretraining_doc_lengths(total: int, seed: int = 0) -> list[int]:
    """Document lengths like a web/books pretraining mix, packed into `total` tokens.

    Log-normal with median 1K tokens and sigma 1.4 (most documents are a few hundred to a
    few thousand tokens; about 1 in 50 is longer than 16K), clipped to [8, total]; the last
    document is cut to fill the pack exactly, as a packer does.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        x = math.exp(math.log(1024) + 1.4 * torch.randn((), generator=gen).item())
        lengths.append(int(min(max(x, 8), total)))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def causal_pairs(lengths: list[int]) -> int:
    return sum(n * (n + 1) // 2 for n in lengths)


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device="cuda")


def config_record(configs: AttentionConfigs) -> dict:
    """The tile configs as plain JSON-able data (nested configs included)."""
    return asdict(configs)


def bench_ms(fn, rep_ms: float = 150.0) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=30, rep=rep_ms, return_mode="median")


def fwd_and_fwdbwd(call, inputs, do):
    def fwd():
        with torch.no_grad():
            call(*inputs)

    def fwdbwd():
        out = call(*inputs)
        torch.autograd.grad(out, inputs, do)

    return bench_ms(fwd), bench_ms(fwdbwd)


def ours_callable(lengths, heads, dim, configs: AttentionConfigs | None, deterministic=None):
    cu = cu_seqlens(lengths)
    mx = max(lengths)

    def call(q, k, v):
        if configs is None:
            return flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=True, deterministic=deterministic)
        o, _ = TritonVarlenAttention.apply(q, k, v, cu, cu, dim ** -0.5, True, False, configs)
        return o
    return call


def sdpa_callable(batch, seqlen, heads, dim, backend):
    from torch.nn.attention import sdpa_kernel

    def call(q, k, v):
        shape = (batch, seqlen, heads, dim)
        q4, k4, v4 = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)
        return o.transpose(1, 2).reshape(q.shape)
    return call


def flex_callable(lengths, gqa: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    total = sum(lengths)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device="cuda"),
                                  torch.tensor(lengths, device="cuda"))

    def document_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    block_mask = create_block_mask(document_causal, 1, None, total, total, device="cuda")
    compiled = torch.compile(flex_attention)

    def call(q, k, v):
        q4, k4, v4 = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
        return compiled(q4, k4, v4, block_mask=block_mask, enable_gqa=gqa).transpose(1, 2).squeeze(0)
    return call


def random_qkv(total, heads, dim, seed=0, heads_kv=None):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hkv = heads if heads_kv is None else heads_kv
    mk = lambda h: torch.randn(total, h, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()  # noqa: E731
    return (mk(heads), mk(hkv), mk(hkv)), torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)


def sweep(heads, dim, log):
    """Time tile configs on causal 16K x 4 and on the packed documents; return the configs with
    the lowest summed time (forward, then fused backward given that forward)."""
    from dataclasses import replace
    scale = dim ** -0.5
    cases = []
    for name, lengths in (("causal 16K x4", [16384] * 4), ("docs 64K", pretraining_doc_lengths(TOTAL_TOKENS, 0))):
        cu = cu_seqlens(lengths)
        (q, k, v), do = random_qkv(sum(lengths), heads, dim, seed=1)
        cases.append((name, cu, q.detach(), k.detach(), v.detach(), do, 4 * dim * heads * causal_pairs(lengths)))
    base = select_configs(dim, torch.bfloat16, interpret=False)
    # screened off-device for register spills (benchmarks/screen_attention_kernels.py)
    fwd_cands = [TileConfig(128, 128, 8, 3), TileConfig(128, 128, 8, 3, tma=True), TileConfig(128, 64, 8, 3, tma=True),
                 TileConfig(128, 128, 8, 3, tma=True, gluon=True)]
    dkdv_cands = [TileConfig(128, 64, 8, 3), TileConfig(128, 64, 8, 3, tma=True), TileConfig(128, 32, 8, 3, tma=True),
                  TileConfig(128, 64, 8, 3, tma=True, gluon=True)]
    dq_cands = [TileConfig(128, 64, 8, 3), TileConfig(128, 64, 8, 3, tma=True), TileConfig(128, 128, 8, 2, tma=True),
                TileConfig(128, 64, 8, 3, tma=True, gluon=True), TileConfig(128, 128, 8, 3, tma=True, gluon=True)]
    # the one-kernel Gluon backward takes one tile shape (64-query steps, two warpgroups)
    fused_cands = [TileConfig(128, 64, 8, tma=True, gluon=True)]
    rows = []

    def timed(kind, cfg, make_fn, flops_factor):
        total_ms = 0.0
        for name, cu, q, k, v, do, flops in cases:
            fn = make_fn(cu, q, k, v, do)
            try:
                t0 = time.time()
                fn()
                torch.cuda.synchronize()
                compile_s = time.time() - t0
                ms = bench_ms(fn, rep_ms=60)
            except Exception as e:  # out of shared memory or registers: skip the candidate
                log(f"sweep {kind} {cfg} {name}: failed ({type(e).__name__}: {str(e)[:160]})")
                rows.append(dict(kernel=kind, case=name, config=asdict(cfg), error=type(e).__name__))
                return math.inf
            work = flops_factor * flops
            rows.append(dict(kernel=kind, case=name, config=asdict(cfg), ms=ms,
                             tflops=work / ms / 1e9, first_call_s=compile_s))
            log(f"sweep {kind:9s} {name:13s} {cfg}: {ms:8.3f} ms  {work / ms / 1e9:6.1f} TFLOP/s")
            total_ms += ms
        return total_ms

    def fwd_fn(cfg):
        return lambda cu, q, k, v, do: (lambda: attention_forward(q, k, v, cu, cu, scale, True,
                                                                    replace(base, forward=cfg), False))
    best = replace(base, forward=min(fwd_cands, key=lambda c: timed("forward", c, fwd_fn(c), 1.0)))

    def bwd_fn(cfgs):
        def make(cu, q, k, v, do):
            o, lse, _ = attention_forward(q, k, v, cu, cu, scale, True, cfgs, False)
            return lambda: attention_backward(do, None, q, k, v, o, lse, cu, cu, scale, True, cfgs, False)
        return make
    # whole backward times (delta + dK/dV + dQ kernels) while one kernel's tiles vary
    best = replace(best, dkdv=min(dkdv_cands, key=lambda c: timed("bwd/dkdv", c, bwd_fn(replace(best, dkdv=c)), 2.5)))
    dq_ms = {c: timed("bwd/dq", c, bwd_fn(replace(best, dq=c)), 2.5) for c in dq_cands}
    best = replace(best, dq=min(dq_ms, key=dq_ms.get))
    # the one-kernel backward (dQ reduce-added) replaces the pair only where it is faster in total
    fused_ms = {c: timed("bwd/fused", c, bwd_fn(replace(best, fused=c)), 2.5) for c in fused_cands}
    fastest = min(fused_ms, key=fused_ms.get)
    if fused_ms[fastest] < min(dq_ms.values()):
        best = replace(best, fused=fastest)
    return best, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/attention_h100.json")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sweep", action="store_true", help="tune our tile configs first (causal 16K)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per case (medians reported)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")
    from torch.nn.attention import SDPBackend
    import triton

    started = time.time()
    log_lines: list[str] = []

    def log(msg):
        line = f"[{time.time() - started:6.1f}s] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    heads, dim = args.heads, args.dim
    report = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dtype="bfloat16", heads_q=heads, heads_kv=heads, head_dim=dim, tokens_per_case=TOTAL_TOKENS,
        flops_convention="useful: fwd 4*D*H per visible (q,k) pair; fwd+bwd 3.5x fwd",
        timing=f"triton.testing.do_bench median, L2 flushed between runs; median of {args.rounds} rounds "
               "per method, methods interleaved in rotating order",
    )
    configs = None
    if args.sweep:
        configs, rows = sweep(heads, dim, log)
        report["sweep"] = dict(case="causal 16K x 4", rows=rows)
    if configs is not None:
        report["our_tile_configs"] = config_record(configs)
    else:  # what the defaults pick: the fused backward only without GQA and when allowed
        report["our_tile_configs"] = {
            f"group {g}, deterministic {d}": config_record(select_configs(dim, torch.bfloat16, False, group=g, deterministic=d))
            for g in (1, 4) for d in (False, True)}

    doc_lengths = pretraining_doc_lengths(TOTAL_TOKENS, seed=0)
    report["doc_distribution"] = dict(
        kind="log-normal, median 1024, sigma 1.4, clipped [8, 64K], last doc cut to fill", seed=0,
        documents=len(doc_lengths), longest=max(doc_lengths),
        median=sorted(doc_lengths)[len(doc_lengths) // 2])
    gqa_kv = max(heads // 4, 1)
    cases = [("causal 4K x16", [4096] * 16, heads), ("causal 16K x4", [16384] * 4, heads),
             ("causal 64K x1", [65536], heads), ("docs 64K", doc_lengths, heads),
             (f"docs 64K GQA {heads}/{gqa_kv}", doc_lengths, gqa_kv)]
    results = []
    for name, lengths, hkv in cases:
        total = sum(lengths)
        (q, k, v), do = random_qkv(total, heads, dim, seed=len(lengths), heads_kv=hkv)
        fwd_flops = 4 * dim * heads * causal_pairs(lengths)
        # ours: the defaults (deterministic=None, torch's default: the fused backward where it is
        # faster); ours_deterministic: the bitwise-reproducible two-kernel backward
        methods = {"ours": ours_callable(lengths, heads, dim, configs)}
        if configs is None:
            methods["ours_deterministic"] = ours_callable(lengths, heads, dim, None, deterministic=True)
        if name.startswith("causal"):
            batch, seqlen = len(lengths), lengths[0]
            methods["sdpa_flash"] = sdpa_callable(batch, seqlen, heads, dim, SDPBackend.FLASH_ATTENTION)
            methods["sdpa_cudnn"] = sdpa_callable(batch, seqlen, heads, dim, SDPBackend.CUDNN_ATTENTION)
        elif not args.no_flex:
            methods["flex"] = flex_callable(lengths, gqa=hkv != heads)
        ref = None
        checked = {}  # method -> (agree, agree_grad, first_call_s), for the methods that ran
        for method, call in methods.items():
            try:
                t0 = time.time()
                out = call(q, k, v)
                grads = torch.autograd.grad(out, (q, k, v), do)
                torch.cuda.synchronize()
                first_s = time.time() - t0
                if ref is None:
                    ref = (out.detach().float(), [g.float() for g in grads])
                # sanity: every method computes the same function (bf16 rounding apart)
                agree = ((out.float() - ref[0]).norm() / ref[0].norm()).item()
                agree_grad = max(((g.float() - r).norm() / r.norm()).item() for g, r in zip(grads, ref[1]))
                del out, grads
                checked[method] = (agree, agree_grad, first_s)
            except Exception as e:
                log(f"{name:14s} {method:11s} failed: {type(e).__name__}: {str(e)[:200]}")
                results.append(dict(case=name, method=method, error=f"{type(e).__name__}: {str(e)[:200]}"))
        # rounds of all methods in rotating order, medians reported: one pass of each method
        # after the other differs by ~5% run to run, as much as the ratios being judged
        samples = {method: ([], []) for method in checked}
        order = list(checked)
        for r in range(args.rounds):
            for method in order[r % len(order):] + order[:r % len(order)]:
                fwd_ms, fb_ms = fwd_and_fwdbwd(methods[method], (q, k, v), do)
                samples[method][0].append(fwd_ms)
                samples[method][1].append(fb_ms)
        for method, (agree, agree_grad, first_s) in checked.items():
            fwd_ms, fb_ms = (statistics.median(x) for x in samples[method])
            row = dict(case=name, method=method, fwd_ms=fwd_ms, fwd_tflops=fwd_flops / fwd_ms / 1e9,
                       fwdbwd_ms=fb_ms, fwdbwd_tflops=3.5 * fwd_flops / fb_ms / 1e9,
                       fwd_ms_rounds=samples[method][0], fwdbwd_ms_rounds=samples[method][1],
                       rel_diff_vs_ours=agree, max_grad_rel_diff_vs_ours=agree_grad, first_call_s=first_s)
            results.append(row)
            log(f"{name:14s} {method:11s} fwd {fwd_ms:8.2f} ms {row['fwd_tflops']:6.1f} TF/s | "
                f"fwd+bwd {fb_ms:8.2f} ms {row['fwdbwd_tflops']:6.1f} TF/s | diff {agree:.1e} grads {agree_grad:.1e}")
        del q, k, v, do, ref
        torch.cuda.empty_cache()
    report["results"] = results

    ratios = {}
    for name, _, _ in cases:
        by = {r["method"]: r for r in results if r["case"] == name and "error" not in r}
        if "ours" not in by:
            continue
        for ours in ("ours", "ours_deterministic"):
            for other in ("sdpa_flash", "sdpa_cudnn", "flex"):
                if ours in by and other in by:
                    ratios[f"{name} {ours}/{other} fwd+bwd"] = round(by[ours]["fwdbwd_tflops"] / by[other]["fwdbwd_tflops"], 3)
                    if ours == "ours":
                        ratios[f"{name} ours/{other} fwd"] = round(by["ours"]["fwd_tflops"] / by[other]["fwd_tflops"], 3)
    report["ratios"] = ratios
    report["log"] = log_lines
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("\n".join(f"{k:45s} {v}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
