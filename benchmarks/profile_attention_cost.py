"""Measure the varlen attention kernel's time over a (q_len, kv_len) grid: CAD's cost table.

Each grid point is a task shape: q_len queries at the end of a kv_len-token prefix (causal,
aligned bottom-right). A server runs all its tasks in ONE varlen call, so what the planner
needs is a task's marginal time inside a big call, not the launch-bound time of a call with
one tiny segment: each point therefore times a call with B copies of the segment (B chosen
so the call does a fixed amount of work, within a memory budget) and divides by B.

bf16, 32 query heads, 8 key/value heads, head dim 128 (Llama-8B-like). Forward and
backward are timed separately (backward = forward+backward minus forward) with CUDA
events, median of a few repeats. The kernel is `distca_kernels.flash_attn.flash_attn_varlen_func`
(our Triton kernels); if it cannot run, torch SDPA with a bottom-right causal mask is used
and the JSON says so.

The same run times one bf16 GEMM of the MLP's shape, so the CAD simulator's per-token
linear-layer time is a measurement too.

Usage (GPU): python benchmarks/profile_attention_cost.py --out $OUT/cost_table_h200.json
(parallel/cad/cost_table_h100.json was measured with the grid up to 128K keys.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import time

import torch

HQ, HKV, D = 32, 8, 128
Q_LENS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
# up to 512K keys: the simulator's longest documents (a 128K-only grid would extrapolate)
KV_LENS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288]
TARGET_PAIRS = 3e8          # work per timed call (about 5-10 ms of forward on an H100)
MAX_KV_TOKENS = 1 << 20     # memory budget per call: 1M key tokens (k, v and their grads ~8 GB)
MAX_Q_TOKENS = 1 << 18      # and 256K query tokens: the backward's fp32 dq accumulator is 4 GiB
                            # (1M query tokens ran an 80 GB H100 out of memory)


def causal_pairs(q: int, kv: int) -> int:
    return q * kv - q * (q - 1) // 2


def make_kernel(name: str):
    if name == "triton":
        from distca_kernels.flash_attn import flash_attn_varlen_func

        def run(q, k, v, cu_q, cu_k, mq, mk):
            return flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True)
        return run
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    def run(q, k, v, cu_q, cu_k, mq, mk):  # every segment has the same shape: a batch
        b = cu_q.numel() - 1
        qq = q.view(b, mq, HQ, D).transpose(1, 2)
        kk = k.view(b, mk, HKV, D).transpose(1, 2)
        vv = v.view(b, mk, HKV, D).transpose(1, 2)
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=causal_lower_right(mq, mk),
                                           enable_gqa=True)
        return o.transpose(1, 2).reshape(-1, HQ, D)
    return run


def time_point(run, q_len: int, kv_len: int, reps: int) -> dict:
    pairs = causal_pairs(q_len, kv_len)
    b = int(max(1, min(TARGET_PAIRS // pairs, MAX_KV_TOKENS // kv_len, MAX_Q_TOKENS // q_len)))
    while True:  # fewer copies where the card is smaller than the budget assumes
        try:
            return _time_copies(run, q_len, kv_len, reps, b)
        except torch.OutOfMemoryError:
            if b == 1:
                raise
        # outside the except block: the traceback (and the tensors it holds) is gone
        torch.cuda.empty_cache()
        b //= 2


def _time_copies(run, q_len: int, kv_len: int, reps: int, b: int) -> dict:
    dev = torch.device("cuda")
    q = torch.randn(b * q_len, HQ, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b * kv_len, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b * kv_len, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    cu_q = torch.arange(b + 1, device=dev, dtype=torch.int32) * q_len
    cu_k = torch.arange(b + 1, device=dev, dtype=torch.int32) * kv_len
    do = torch.randn(b * q_len, HQ, D, device=dev, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            run(q, k, v, cu_q, cu_k, q_len, kv_len)

    def fwd_bwd():
        o = run(q, k, v, cu_q, cu_k, q_len, kv_len)
        torch.autograd.backward(o, do, inputs=[q, k, v])

    out = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()  # warm-up (compiles on first use)
        times = []
        for _ in range(reps):
            a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            z.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(z))
        out[name] = sorted(times)[len(times) // 2] / b
    out["copies"] = b
    return out


def time_gemm(tokens: int = 16384, hidden: int = 4096, ffn: int = 14336, reps: int = 10) -> dict:
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, ffn, device="cuda", dtype=torch.bfloat16)
    x @ w
    torch.cuda.synchronize()
    a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        x @ w
    z.record()
    torch.cuda.synchronize()
    ms = a.elapsed_time(z) / reps
    return {"shape": [tokens, hidden, ffn], "ms": ms, "tflops": 2 * tokens * hidden * ffn / ms / 1e9}


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="stop measuring after this long; missing points are null")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_attention_cost.py needs a CUDA GPU")
    kernel, note = "triton", "distca_kernels.flash_attn.flash_attn_varlen_func (Triton)"
    run = make_kernel(kernel)
    try:
        time_point(run, 128, 256, 1)
    except Exception as e:  # noqa: BLE001 -- any failure means: measure SDPA instead
        kernel, note = "sdpa", f"torch SDPA, bottom-right causal (Triton kernel failed: {e!r})"
        run = make_kernel(kernel)
    fwd = [[None] * len(KV_LENS) for _ in Q_LENS]
    bwd = [[None] * len(KV_LENS) for _ in Q_LENS]
    copies = [[None] * len(KV_LENS) for _ in Q_LENS]
    t0 = time.time()
    # cheap points first, so a budget cut loses only the most expensive ones
    points = sorted(((i, j) for i, q in enumerate(Q_LENS) for j, kv in enumerate(KV_LENS) if kv >= q),
                    key=lambda ij: causal_pairs(Q_LENS[ij[0]], KV_LENS[ij[1]]))
    for i, j in points:
        if time.time() - t0 > args.budget_s:
            print(f"budget reached; {Q_LENS[i]}x{KV_LENS[j]} and larger not measured", flush=True)
            break
        r = time_point(run, Q_LENS[i], KV_LENS[j], args.reps)
        fwd[i][j], bwd[i][j], copies[i][j] = r["fwd"], r["fwd_bwd"] - r["fwd"], r["copies"]
        tf = 4 * causal_pairs(Q_LENS[i], KV_LENS[j]) * HQ * D / (r["fwd"] * 1e9)
        print(f"q={Q_LENS[i]:6d} kv={KV_LENS[j]:7d} x{r['copies']:5d}: fwd {r['fwd']:.4f} ms "
              f"({tf:.0f} TFLOP/s) bwd {bwd[i][j]:.4f} ms", flush=True)
    gemm = time_gemm()
    print(f"gemm {gemm}", flush=True)
    table = {
        "device": torch.cuda.get_device_name(), "kernel": note, "dtype": "bfloat16",
        "num_heads_q": HQ, "num_heads_kv": HKV, "head_dim": D,
        "q_lens": Q_LENS, "kv_lens": KV_LENS, "fwd_ms": fwd, "bwd_ms": bwd, "copies": copies,
        "method": "per-segment time inside one varlen call of `copies` identical segments; "
                  "median of reps; bwd = (fwd+bwd) - fwd",
        "gemm_bf16": gemm, "torch": torch.__version__, "triton": _triton_version(),
        "cuda": torch.version.cuda, "deterministic": torch.are_deterministic_algorithms_enabled(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "measure_s": round(time.time() - t0, 1),
    }
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
