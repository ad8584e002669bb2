"""Linear attention speed on one GPU: ours (`distca_kernels.lightning_attn`) beside fla's
`chunk_lightning_attn`, OpenNLPLab's `lightning_attn_func` and our flash attention.

One sequence of T tokens (B=1), H=32 heads, head dim 128, bf16, constant per-head decay
(fla's lightning slopes for layer 0: g_gamma_h = -(8/H) h). Reports forward and
forward+backward tokens/s (median over repeats, CUDA events, after warm-up). Before timing:
our output and gradients against the fp32 torch reference, and our output against fla's.

    python benchmarks/linear_attention.py --out benchmarks/results/linear_attention_h100.json

(`results/linear_attention_h100.json` came from that with `--deadline-s 170 --variant-size 0
--lightning-max 65536 --flash-max 16384`, to fit the lease; `..._run1.json` from an earlier
kernel version, defaults, which also timed a second backward variant, since removed, under
"backward_variants"; --variant-size is gone with it.) Also: a segment-length sweep
for ours, and a fixed-total-tokens sweep (B = TOTAL / T), where tokens/s should not depend on T.

Baselines come from wheels (see ../shared/DEVICE.md); a missing one is recorded as such.
fla autotunes its two state kernels over 48 configurations each; to fit a short GPU lease,
`--fla-tune-subset` (on by default) keeps its configurations with 4 or 8 warps and 2 or 3
pipeline stages (16 each, every block shape kept). The JSON records this.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_SIZES = [4096, 16384, 65536, 262144, 1048576]


def _sync():
    torch.cuda.synchronize()


def time_ms(fn, budget_s=1.0, min_reps=3, max_reps=20):
    """Median milliseconds of fn() after two warm-up calls (the first compiles and tunes)."""
    fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    est = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, int(budget_s / max(est, 1e-6))))
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        _sync()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---------------------------------------------------------------- implementations

def ours_impl():
    from distca_kernels.lightning_attn import chunk_lightning_attn

    def run(q, k, v, g_gamma):
        return chunk_lightning_attn(q, k, v, g_gamma=g_gamma)[0]
    return run


def fla_impl(tune_subset):
    from fla.ops.lightning_attn import chunk_lightning_attn as fla_fn
    note = "full autotune"
    if tune_subset:
        note = _restrict_fla_autotune()

    def run(q, k, v, g_gamma):
        return fla_fn(q, k, v, layer_idx=0, num_layers=1)[0]
    return run, note


def _restrict_fla_autotune():
    import fla.ops.common.chunk_h as chunk_h
    from triton.runtime import Autotuner
    kept = {}
    for name in dir(chunk_h):
        obj = getattr(chunk_h, name)
        while obj is not None and not isinstance(obj, Autotuner):  # under @triton.heuristics
            obj = getattr(obj, "fn", None)
        if isinstance(obj, Autotuner) and len(obj.configs) > 16:
            before = len(obj.configs)
            obj.configs = [c for c in obj.configs if c.num_warps in (4, 8)
                           and c.num_stages in (2, 3)] or obj.configs
            kept[name] = f"{len(obj.configs)} of {before} configs (4/8 warps, 2/3 stages)"
    return kept


def lightning_impl():
    from lightning_attn.ops import lightning_attn_func

    def run(q, k, v, slopes):  # q, k, v [B, H, T, D]; decay exp(-slope) per step
        return lightning_attn_func(q, k, v, slopes)
    return run


def flash_impl():
    from distca_kernels.flash_attn import flash_attn_varlen_func

    def run(q, k, v, cu, t):  # q, k, v [T, H, D]
        return flash_attn_varlen_func(q, k, v, cu, cu, t, t, causal=True)
    return run


# ---------------------------------------------------------------- measurement

def measure(call, leaves, do, budget_s):
    """(fwd ms, fwd+bwd ms) for call() -> o, with gradients to `leaves`."""
    with torch.no_grad():
        fwd = time_ms(call, budget_s)

    def fwd_bwd():
        o = call()
        torch.autograd.grad(o, leaves, do)
    return fwd, time_ms(fwd_bwd, budget_s)


def _row(t, fwd, fwdbwd):
    return {"fwd_ms": round(fwd, 4), "fwdbwd_ms": round(fwdbwd, 4),
            "fwd_mtok_s": round(t / fwd / 1e3, 3), "fwdbwd_mtok_s": round(t / fwdbwd / 1e3, 3)}


def _try(label, fn, results, t):
    try:
        results[label] = fn()
    except torch.cuda.OutOfMemoryError:
        results[label] = "oom"
    except Exception as exc:  # a baseline failing must not stop the others
        results[label] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        traceback.print_exc()
    torch.cuda.empty_cache()
    print(f"T={t:>8} {label:10s} {results[label]}", flush=True)


def correctness(ours, fla_run, h, d, g_gamma):
    """Our bf16 kernel against the fp32 torch reference (output, all gradients) and fla's
    output, at 4K tokens."""
    from distca_kernels.lightning_attn import lightning_attn_reference
    t = 4096
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, t, h, d, generator=gen, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = ours(*leaves, g_gamma)
    grads = torch.autograd.grad(o, leaves, do)
    ref_leaves = [x.float().requires_grad_() for x in (q, k, v)]
    o_ref = lightning_attn_reference(*ref_leaves, g_gamma=g_gamma)[0]
    ref_grads = torch.autograd.grad(o_ref, ref_leaves, do.float())

    def rel(a, b):
        a, b = a.detach().float(), b.detach().float()
        return float((a - b).norm() / b.norm())
    out = {"tokens": t, "o_vs_fp32_reference": rel(o, o_ref)}
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        out[f"{name}_vs_fp32_reference"] = rel(a, b)
    if fla_run is not None:
        try:
            with torch.no_grad():
                out["o_vs_fla"] = rel(o, fla_run(q, k, v, g_gamma))
                out["fla_o_vs_fp32_reference"] = rel(fla_run(q, k, v, g_gamma), o_ref)
        except Exception as exc:
            out["o_vs_fla"] = f"error: {exc}"[:300]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/linear_attention.json"))
    ap.add_argument("--budget-s", type=float, default=0.6, help="timing seconds per point")
    ap.add_argument("--deadline-s", type=float, default=330.0,
                    help="skip points once this many seconds have passed")
    ap.add_argument("--lightning-max", type=int, default=262144)
    ap.add_argument("--flash-max", type=int, default=65536)
    ap.add_argument("--segment-sweep", type=str, default="4096:1,4,16;65536:4,16,64",
                    help="T:chunks_per_segment,... points timed for ours ('' to skip)")
    ap.add_argument("--fixed-total", type=str, default="1048576:4096,65536,1048576",
                    help="TOTAL:T,... batches of TOTAL/T sequences of T tokens ('' to skip)")
    ap.add_argument("--fla-fixed-total", type=int, default=262144,
                    help="fla's total tokens in the fixed-total sweep (its states OOM at 1M)")
    ap.add_argument("--no-fla-tune-subset", dest="fla_tune_subset", action="store_false")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    began = time.perf_counter()
    h, d = args.heads, args.dim
    dev = torch.device("cuda")
    g_gamma = -(8.0 / h) * torch.arange(h, dtype=torch.float32, device=dev)
    slopes = (-g_gamma).view(h, 1, 1).contiguous()

    import triton
    from distca_kernels.lightning_attn import chunked
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "shape": {"B": 1, "H": h, "K": d, "V": d, "dtype": "bfloat16",
                      "decay": "g_gamma_h = -(8/H) h (fla lightning, layer 0)"},
            "timing": "median of CUDA-event times after 2 warm-up calls; fwd under no_grad; "
                      "fwd+bwd = forward + torch.autograd.grad w.r.t. q, k, v"}
    ours = ours_impl()
    impls = {"ours": ours}
    try:
        fla_run, note = fla_impl(args.fla_tune_subset)
        impls["fla"] = fla_run
        import fla
        info["fla"] = {"version": getattr(fla, "__version__", "?"), "autotune": note}
    except Exception as exc:
        info["fla"] = f"unavailable: {exc}"
    try:
        impls["lightning"] = lightning_impl()
        info["lightning_attn"] = "lightning_attn_func (OpenNLPLab, wheel 0.0.5)"
    except Exception as exc:
        info["lightning_attn"] = f"unavailable: {exc}"
    try:
        flash = flash_impl()
        cu0 = torch.tensor([0, 128], dtype=torch.int32, device=dev)
        x0 = torch.randn(128, h, d, device=dev, dtype=torch.bfloat16)
        flash(x0, x0, x0, cu0, 128)
        impls["flash"] = flash
        info["flash_attn"] = "distca_kernels.flash_attn.flash_attn_varlen_func (ours, Triton)"
    except Exception as exc:
        info["flash_attn"] = f"unavailable: {exc}"[:300]

    info["correctness"] = correctness(ours, impls.get("fla"), h, d, g_gamma)
    print("correctness", info["correctness"], flush=True)

    results = {}

    def inputs(t):
        gen = torch.Generator(device=dev).manual_seed(t)
        return [torch.randn(1, t, h, d, generator=gen, device=dev, dtype=torch.bfloat16)
                for _ in range(4)]

    def batch_inputs(b, t):
        gen = torch.Generator(device=dev).manual_seed(t + b)
        return [torch.randn(b, t, h, d, generator=gen, device=dev, dtype=torch.bfloat16)
                for _ in range(4)]

    for t in args.sizes:
        results[str(t)] = row = {}
        q, k, v, do = inputs(t)
        leaves = [x.requires_grad_() for x in (q, k, v)]
        for name in ("ours", "fla"):
            if name not in impls:
                continue
            if time.perf_counter() - began > args.deadline_s:
                row[name] = "skipped: time budget"
                continue
            run = impls[name]
            _try(name, lambda: _row(t, *measure(lambda: run(*leaves, g_gamma), leaves, do,
                                                args.budget_s)), row, t)
        if "flash" in impls and t <= args.flash_max \
                and time.perf_counter() - began <= args.deadline_s:
            cu = torch.tensor([0, t], dtype=torch.int32, device=dev)
            fl = [x[0] for x in leaves]
            _try("flash", lambda: _row(t, *measure(
                lambda: impls["flash"](fl[0], fl[1], fl[2], cu, t), leaves, do[0],
                args.budget_s)), row, t)
        if "lightning" in impls and t <= args.lightning_max \
                and time.perf_counter() - began <= args.deadline_s:
            del leaves
            q, k, v = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
            do = do.transpose(1, 2).contiguous()
            leaves = [q, k, v]
            _try("lightning", lambda: _row(t, *measure(
                lambda: impls["lightning"](q, k, v, slopes), leaves, do, args.budget_s)),
                row, t)
        del q, k, v, do, leaves
        torch.cuda.empty_cache()

    from distca_kernels.lightning_attn.chunked import chunk_lightning_attn_triton
    sweep = {}
    for spec in filter(None, args.segment_sweep.split(";")):
        t, cps_list = spec.split(":")
        t = int(t)
        q, k, v, do = inputs(t)
        leaves = [x.requires_grad_() for x in (q, k, v)]
        for cps in map(int, cps_list.split(",")):
            if time.perf_counter() - began > args.deadline_s:
                break

            def call(cps=cps):
                return chunk_lightning_attn_triton(*leaves, g_gamma, chunks_per_segment=cps)[0]
            _try(f"T={t} chunks_per_segment={cps}",
                 lambda: _row(t, *measure(call, leaves, do, args.budget_s)), sweep, t)
        del q, k, v, do, leaves
        torch.cuda.empty_cache()
    info["default_chunks_per_segment"] = {
        t: chunked.default_chunks_per_segment(t, h, 64, dev) for t in args.sizes}

    fixed = {}
    for spec in filter(None, args.fixed_total.split(";")):
        total, ts = spec.split(":")
        for t in map(int, ts.split(",")):
            for name, tot in (("ours", int(total)), ("fla", min(int(total), args.fla_fixed_total))):
                if name not in impls or t > tot or time.perf_counter() - began > args.deadline_s:
                    continue
                b = tot // t
                q, k, v, do = batch_inputs(b, t)
                leaves = [x.requires_grad_() for x in (q, k, v)]
                run = impls[name]
                _try(f"{name} B={b} T={t}", lambda: _row(b * t, *measure(
                    lambda: run(*leaves, g_gamma), leaves, do, args.budget_s)), fixed, b * t)
                del q, k, v, do, leaves
                torch.cuda.empty_cache()

    from triton.runtime import Autotuner
    compiled = chunked.kernels_for(False)  # the module copies the runs above launched
    choices = {}
    for mod in (compiled.forward, compiled.backward_split):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, Autotuner):
                choices[name] = {str(key[:6]): str(cfg) for key, cfg in obj.cache.items()}
    info["autotune_choices"] = choices

    ours_rows = {int(t): r["ours"] for t, r in results.items() if isinstance(r.get("ours"), dict)}
    summary = {}
    if ours_rows:
        lo, hi = min(ours_rows), max(ours_rows)
        for key in ("fwd_mtok_s", "fwdbwd_mtok_s"):
            summary[f"ours_{key}_at_{hi}_over_{lo}"] = round(
                ours_rows[hi][key] / ours_rows[lo][key], 3)
        ratios = [r["ours"]["fwdbwd_mtok_s"] / r["fla"]["fwdbwd_mtok_s"]
                  for r in results.values()
                  if isinstance(r.get("ours"), dict) and isinstance(r.get("fla"), dict)]
        if ratios:
            summary["ours_over_fla_fwdbwd"] = [round(x, 3) for x in ratios]
    fixed_ours = [r["fwdbwd_mtok_s"] for label, r in fixed.items()
                  if label.startswith("ours") and isinstance(r, dict)]
    if len(fixed_ours) > 1:  # in the order given: shortest sequences first
        summary["ours_fixed_total_fwdbwd_longest_over_shortest"] = round(
            fixed_ours[-1] / fixed_ours[0], 3)
    out = {"info": info, "results": results, "segment_sweep": sweep,
           "fixed_total_tokens": fixed, "summary": summary,
           "elapsed_s": round(time.perf_counter() - began, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("\n  tokens   impl        fwd Mtok/s  fwd+bwd Mtok/s")
    for t, row in results.items():
        for name, r in row.items():
            if isinstance(r, dict):
                print(f"{t:>8} {name:10s} {r['fwd_mtok_s']:10.2f} {r['fwdbwd_mtok_s']:12.2f}")
            else:
                print(f"{t:>8} {name:10s} {r}")
    for label, r in list(sweep.items()) + list(fixed.items()):
        print(f"{label:34s} {r}")
    print("summary", summary)


if __name__ == "__main__":
    main()
