"""What CAD's overlap modes cost on ONE GPU, where there is nothing to overlap (issue 32).

On one GPU the CAD group is this process alone, so a mode's step time over local attention's
is its pure overhead. What the modes buy (communication hidden) needs several GPUs:
benchmarks/multigpu_overlap.py. The 1B model, bf16 autocast, fused AdamW, packed documents from
the pretraining-like mix (`sample_doc_lengths("pretrain", L, default_rng(0))`), one model for
every row (its core attention swapped per mode). Modes:

  local                            LocalCoreAttention: the baseline
  none, halves, nanobatch, auto    CADAttention as the product runs it. One process moves
                                   nothing, so none / halves / auto run the kernel in place (no
                                   exchange); nanobatch runs its two nano-batches, each in place
                                   (what splitting the layer costs)
  none+x, halves+x, nanobatch+x    the exchange path forced (the planner's `in_place` answers
                                   no): every gather, scatter and local all-to-all copy a step pays
                                   where work moves on several GPUs, without the wire

Cases, in the order they run: (16K, no recompute), (64K, selective), (16K, selective),
(16K, full), (64K, full), (64K, none) (out of memory on 80 GB: recorded as such). Base modes
before the forced ones. A torch.profiler step of the first two cases for local, nanobatch and
the forced modes (none, halves and auto run local's path on one GPU) gives the top
ops by self GPU time and the shares by group, CAD's own ops (called from parallel/cad/) and the
nano-batch stream's (distca/model/nano_batches.py) grouped by their Python stack; written to
`<out stem>_profile.json`. Rows run until `--budget-s` is spent; the rest are listed as skipped,
so one command fits a 10-minute device call.

    python benchmarks/cad_overlap_one_gpu.py --out $OUT/cad_overlap_one_gpu_h100.json
    python benchmarks/cad_overlap_one_gpu.py --cases 16384:none --modes nanobatch \
        --host-profile nanobatch --out $OUT/nano_16k.json   # one case, one mode beside local, host cProfile
    python benchmarks/cad_overlap_one_gpu.py --smoke --out /tmp/cad_overlap_smoke.json  # CPU, tiny
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distca.config import compose_config, to_typed  # noqa: E402
from distca.data.distributions import sample_doc_lengths  # noqa: E402
from distca.data.labels import next_token_labels  # noqa: E402
from distca.model import build_model  # noqa: E402
from distca.model.softmax_attention import SoftmaxAttention  # noqa: E402
from parallel.cad.attention import CADAttention  # noqa: E402
from parallel.cad.micro_plan import Planner  # noqa: E402
from parallel.config import CADConfig  # noqa: E402
from parallel.context.local import LocalCoreAttention, LocalLinearAttention  # noqa: E402
from parallel.context.shard import build_shard  # noqa: E402

BASE = ("local", "none", "halves", "nanobatch", "auto")
FORCED = ("none+x", "halves+x", "nanobatch+x")
# (tokens, recompute), in the order they run; the first two are profiled
CASES = ((16384, "none"), (65536, "selective"), (16384, "selective"), (16384, "full"),
         (65536, "full"), (65536, "none"))
SMOKE_CASES = ((256, "full"),)
PROFILED = ("local", "nanobatch", "none+x", "halves+x", "nanobatch+x")
# the op groups of a profile: attention first (the kernel also runs inside CAD's server)
GROUPS = (("attention", ("attn", "flash", "fmha")),
          ("matmul", ("gemm", "matmul", "sm90", "cutlass", "nvjet", "xmma", "addmm", "aten::mm", "aten::bmm")),
          ("loss", ("cross_entropy", "_ce_", "linear_ce")),
          ("norm", ("rms_norm", "rmsnorm")),
          ("swiglu", ("swiglu",)),
          ("rope", ("rope",)),
          ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")))


class ExchangeAlways(Planner):
    """A planner whose plans never run in place: the exchange path, timed where nothing moves."""

    def in_place(self, tr) -> bool:
        return False


def strategy(mode: str, cost_table: str):
    if mode == "local":
        return LocalCoreAttention()
    overlap = mode.split("+")[0]
    cad = CADAttention(options=CADConfig(overlap=overlap, ping_pong=overlap != "none", cost_table=cost_table))
    if mode.endswith("+x"):
        cad.planner = ExchangeAlways(cad.options, cad.rank, cad.size)
    return cad


def use(model, core) -> None:
    for blk in model.blocks:
        if isinstance(blk.mixer, SoftmaxAttention):
            blk.mixer.core_attention = core


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """The model, its optimizer and one micro-batch per length; `step()` trains one step."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.mcfg = to_typed(compose_config([f"model={args.model}"])).model
        self.vocab = self.mcfg.vocab_size if self.mcfg.vocab_size > 0 else 256  # -1: the tokenizer's (tiny)
        self.model = build_model(self.mcfg, self.vocab, LocalCoreAttention(), LocalLinearAttention(),
                                 seed=0).to(device).train()
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=cuda, foreach=False if not cuda else None)
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
        self.batches = {}

    def batch(self, tokens: int):
        if tokens not in self.batches:
            docs = sample_doc_lengths("pretrain", tokens, np.random.default_rng(0), max_len=tokens)
            if self.args.smoke:  # too few tokens for the mix to give several documents
                docs = [tokens * 3 // 8, tokens // 4, tokens // 4, tokens - tokens * 7 // 8]
            ids = torch.randint(0, self.vocab, (tokens,), generator=torch.Generator().manual_seed(0))
            self.batches[tokens] = (docs, build_shard(docs).to(self.device), ids.to(self.device),
                                    next_token_labels(ids, docs).to(self.device))
        return self.batches[tokens]

    def step(self, tokens: int) -> None:
        _, shard, ids, labels = self.batch(tokens)
        with self.amp:
            loss = self.model(ids, shard, labels) / tokens
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def time(self, tokens: int, warmup: int, steps: int) -> float:
        for _ in range(warmup):
            self.step(tokens)
        times = []
        for _ in range(steps):
            _sync(self.device)
            t0 = time.perf_counter()
            self.step(tokens)
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def profile(bench: Bench, tokens: int, top: int = 25) -> dict:
    """One step under torch.profiler: self time per op (GPU time on a GPU, CPU time on the CPU),
    the top ops and the shares by group; an op called from parallel/cad/ counts as CAD's own
    (unless it is the attention kernel), one called from the nano-batch stream as the stream's."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cuda = bench.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:  # Python stacks on the ops need the verbose experimental config (torch >= 2.x)
        from torch._C._profiler import _ExperimentalConfig
        extra = {"experimental_config": _ExperimentalConfig(verbose=True)}
    except ImportError:
        extra = {}
    with torch_profile(activities=acts, with_stack=True, **extra) as prof:
        bench.step(tokens)
        _sync(bench.device)
    per_op, groups = {}, {}
    for ev in prof.key_averages(group_by_stack_n=12):
        t = _self_time(ev, cuda)
        if t <= 0:
            continue
        group = _group(ev.key, ev.stack or [])
        groups[group] = groups.get(group, 0.0) + t
        key = (ev.key, group)
        per_op[key] = per_op.get(key, 0.0) + t
    total = sum(groups.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {"time": "self GPU time" if cuda else "self CPU time", "total_ms": total / 1e3,
            "groups": {g: {"ms": t / 1e3, "share": t / total} for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k[:100], "group": g, "ms": t / 1e3, "share": t / total} for (k, g), t in ranked]}


def host_profile(bench: Bench, tokens: int, steps: int, top: int = 30) -> dict:
    """The host's side of `steps` steps under cProfile: wall time per step and the functions
    with the most own time (where the Python that issues the GPU work spends it; on a GPU a
    step whose host time exceeds its GPU time is launch-bound)."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    _sync(bench.device)
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        bench.step(tokens)
    prof.disable()
    _sync(bench.device)
    wall = (time.perf_counter() - t0) / steps
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    return {"time": "host own time per step (cProfile, which slows Python: compare modes, not "
                    "absolute values)", "step_s_under_cprofile": wall,
            "top_functions": [{"function": f"{fn.replace(root, '')}:{line}({name})", "calls_per_step": nc / steps,
                               "own_ms_per_step": tt / steps * 1e3, "cum_ms_per_step": ct / steps * 1e3}
                              for (fn, line, name), (_, nc, tt, ct, _) in rows]}


def _self_time(ev, cuda: bool) -> float:
    if not cuda:
        return float(ev.self_cpu_time_total)
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(ev, name):
            return float(getattr(ev, name))
    return 0.0


# a kernel's torch reference (the CPU path) runs as plain ops: its folder names its group
KERNEL_DIRS = (("distca_kernels/flash_attn/", "attention"), ("distca_kernels/rms_norm/", "norm"),
               ("distca_kernels/rope/", "rope"), ("distca_kernels/swiglu/", "swiglu"),
               ("distca_kernels/linear_ce/", "loss"))


def _group(name: str, stack: list[str]) -> str:
    low = name.lower()
    if any(k in low for k in GROUPS[0][1]):
        return "attention"
    for folder, group in KERNEL_DIRS:
        if any(folder in f for f in stack):
            return group
    if any("parallel/cad/" in f for f in stack):
        return "cad (parallel/cad)"
    if any("nano_batches.py" in f for f in stack):
        return "nano-batch stream"
    for group, keys in GROUPS[1:]:
        if any(k in low for k in keys):
            return group
    return "other"


def overhead(rows: list[dict]) -> list[dict]:
    """Each CAD mode's step time over local attention's, same length and recompute policy."""
    ok = {(r["seq_len"], r["recompute"], r["attention"]): r for r in rows if "error" not in r}
    return [{"seq_len": L, "recompute": p, "attention": m,
             "step_over_local": ok[(L, p, m)]["step_s"] / ok[(L, p, "local")]["step_s"]}
            for (L, p, m) in ok if m != "local" and (L, p, "local") in ok]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="1b")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row at 16K and below")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--long-steps", type=int, default=3, help="timed steps per row above 16K")
    ap.add_argument("--long-warmup", type=int, default=1)
    ap.add_argument("--profiled", type=int, default=2, help="profile the modes of the first N cases")
    ap.add_argument("--profile-modes", nargs="+", default=list(PROFILED),
                    help="which modes to profile (none, halves and auto run local's path on one GPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    ap.add_argument("--no-forced", action="store_true", help="skip the +x (exchange path) modes")
    ap.add_argument("--out", default="benchmarks/results/cad_overlap_one_gpu.json")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and lengths (tests)")
    ap.add_argument("--cases", nargs="+", default=None, metavar="TOKENS:RECOMPUTE",
                    help="run only these cases, e.g. 16384:full 65536:full (default: all, in order)")
    ap.add_argument("--modes", nargs="+", default=None, choices=BASE + FORCED,
                    help="run only these modes (local, the baseline, is always run first)")
    ap.add_argument("--host-profile", nargs="*", default=[], metavar="MODE",
                    help="also profile the host (cProfile over the timed steps, top functions by "
                         "own time) of these modes in the profiled cases")
    args = ap.parse_args()
    t_start = time.perf_counter()
    cases = CASES
    if args.cases:
        cases = tuple((int(c.split(":")[0]), c.split(":")[1]) for c in args.cases)
    if args.smoke:
        args.model, args.steps, args.warmup, args.long_steps, args.long_warmup = "tiny", 1, 1, 1, 1
        args.profile_modes = ["local", "nanobatch", "halves+x"]
        cases = SMOKE_CASES
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    cost_table = "none" if device.type == "cpu" else "auto"
    bench = Bench(args, device)
    modes = BASE + (() if args.no_forced else FORCED)
    if args.modes:
        modes = ("local",) + tuple(m for m in modes if m in args.modes and m != "local")
    out_path = Path(args.out)
    prof_path = out_path.with_name(out_path.stem + "_profile.json")
    record = {"benchmark": "cad_overlap_one_gpu", "model": args.model,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton": _version("triton"),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "smoke": args.smoke, "budget_s": args.budget_s,
              "steps": {"short": [args.warmup, args.steps], "long": [args.long_warmup, args.long_steps],
                        "what": "[warm-up, timed] steps per row; the median timed step"},
              "profile_file": prof_path.name, "rows": [], "overhead": [], "skipped": []}
    profiles = {}
    for ci, (tokens, policy) in enumerate(cases):
        docs = bench.batch(tokens)[0]
        bench.model.cfg.recompute, bench.model.cfg.checkpoint_activations = policy, None
        long = tokens > 16384
        warmup, steps = (args.long_warmup, args.long_steps) if long else (args.warmup, args.steps)
        for mode in modes:
            label = {"seq_len": tokens, "num_docs": len(docs), "recompute": policy, "attention": mode}
            if time.perf_counter() - t_start > args.budget_s:
                record["skipped"].append({**label, "reason": f"budget {args.budget_s:.0f} s spent"})
                continue
            row = dict(label)
            core = strategy(mode, cost_table)
            use(bench.model, core)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                row["step_s"] = bench.time(tokens, warmup, steps)
                row["tokens_per_s"] = tokens / row["step_s"]
                if device.type == "cuda":
                    row["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if isinstance(core, CADAttention):
                    m = core.step_metrics()
                    row["cad_overlap"] = m.get("cad_overlap")
                    row["cad_plan_ms"] = m.get("cad_plan_ms")
                if ci < args.profiled and mode in args.profile_modes:
                    profiles.setdefault(f"{tokens} {policy}", {})[mode] = profile(bench, tokens)
                if ci < args.profiled and mode in args.host_profile:
                    profiles.setdefault(f"{tokens} {policy} host", {})[mode] = host_profile(bench, tokens, steps)
            except torch.OutOfMemoryError as e:
                row["error"] = f"OOM: {str(e)[:160]}"
            except Exception as e:  # noqa: BLE001  (a broken row is reported; the others run)
                row["error"] = repr(e)[:300]
            bench.opt.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            row["elapsed_s"] = time.perf_counter() - t_start
            print(json.dumps(row), flush=True)
            record["rows"].append(row)
            record["overhead"] = overhead(record["rows"])
            _write(out_path, record)  # a run cut short keeps what it measured
            _write(prof_path, {"benchmark": "cad_overlap_one_gpu profile", "device": record["device"],
                               "date": record["date"], "command": record["command"], "cases": profiles})
    record["wall_s"] = time.perf_counter() - t_start
    _write(out_path, record)
    for o in record["overhead"]:
        print(json.dumps(o))
    return 0


def _version(name: str):
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
