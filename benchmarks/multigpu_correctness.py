"""NCCL/bf16 correctness of every parallel layout against one GPU (issue 22, part 1).

    torchrun --standalone --nproc_per_node N benchmarks/multigpu_correctness.py --out $OUT/correctness_N.json
    # CPU, gloo, tiny shapes (what tests/test_multigpu_scripts.py runs):
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        benchmarks/multigpu_correctness.py --dry-run --out /tmp/c.json

The GPU counterpart of tests/test_cp_attention.py, test_lasp2.py, test_cad.py (attention
level) and test_tp_pp_training_parity.py, test_cad_pool.py, test_cad_pipeline_joint.py
(trainer level), which run the same layouts in fp32/fp64 on gloo.

Attention level (`attention` in the JSON), CP group = all N ranks, strategies built by
`ParallelPlan.setup` (ring, allgather, ulysses, usp, CAD with overlap none/halves x backward
stateful/resend, LASP-2 for linear attention): inputs are rounded to bf16 once; the
reference is the one-process kernel in fp32 on the whole stream; the single-GPU error is the
one-process kernel in bf16 against it. Rule (TransformerEngine's, MagiAttention's): for the
output and each of dq, dk, dv, the parallel bf16 run's normwise relative error
||x - ref|| / ||ref|| (over all N ranks' tokens) must be <= 2 x the single-GPU bf16 one
(+1e-6 so exact zeros pass). Max abs and max elementwise rel errors are reported too; they
are not judged (a max over a few elements is noise at bf16).

Trainer level (`training`), `distca.train.train` on a composed config (experiment=tiny, mixed
document lengths, bf16 autocast, fp32 master weights), each layout (TP, PP, DP, CP algos,
LASP-2 on a hybrid, CAD overlap/backward modes, dedicated pool, joint pipeline, combinations)
for --steps steps against the one-process runs of the same model made by rank 0 *before* the
process group exists (a real one-GPU run) in bf16 and in fp32:
- step 1 (outputs and gradients of the whole model): |loss - loss_fp32| and
  |grad_norm - grad_norm_fp32| <= 2 x the one-GPU bf16 run's, or <= 2e-3 relative (a
  scalar's bf16 error can be near zero by chance; 2e-3 ~ a quarter of bf16's epsilon);
- the loss curve: max_i |loss_i - loss1gpu_bf16_i| / loss1gpu_bf16_i <=
  max(3 x the same distance between the one-GPU bf16 and fp32 curves, 1e-2).
Layouts needing more ranks than N, or impossible at N, are listed under `skipped` with the
reason. Rank 0 writes the JSON; exit status 1 if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file under torchrun

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.multigpu_common import header  # noqa: E402

ATTN_RULE = 2.0        # parallel bf16 error <= 2 x single-GPU bf16 error (normwise relative)
STEP1_FLOOR = 2e-3     # relative floor for the scalar step-1 checks
CURVE_GROWTH, CURVE_FLOOR = 3.0, 1e-2
WORDS = ("the plan cuts attention into tasks and every rank serves its share of queries keys "
         "values documents tokens layers ranks balance step loss gradient shard ring gather").split()


# ---- attention level ----------------------------------------------------------------------
def attention_cases(n: int) -> list[tuple[str, dict, str | None]]:
    """(label, ParallelConfig fields, reason to skip or None). Heads 8 q / 2 kv (GQA)."""
    cases = [("ring", dict(cp_algo="ring"), None), ("allgather", dict(cp_algo="allgather"), None),
             ("ulysses", dict(cp_algo="ulysses"), None if 8 % n == 0 else f"8 heads do not split over {n}")]
    u = 2 if n % 2 == 0 and n > 2 else 0
    cases.append((f"usp u={u or '-'}", dict(cp_algo="usp", ulysses=u or 1),
                  None if u else f"usp needs an even cp > 2 (cp={n})"))
    for overlap, ping in (("none", False), ("halves", True)):
        for backward in ("stateful", "resend"):
            cases.append((f"cad {overlap} {backward}",
                          dict(cp_algo="cad", cad=dict(ping_pong=ping, overlap="halves", backward=backward,
                                                       block=8, tolerance=0.0, cost_table="none")), None))
    cases.append(("lasp2 (linear, cp_algo=allgather)", dict(cp_algo="allgather", linear=True), None))
    return cases


def _doc_lens(total: int, seed: int) -> list[int]:
    """One long document crossing ranks among short ones (some shorter than a rank's share)."""
    rng = np.random.default_rng(seed)
    lens = [total // 2]
    while sum(lens) < total:
        lens.append(int(rng.choice([1, 3, rng.integers(4, max(5, total // 8))])))
    lens[-1] -= sum(lens) - total
    rng.shuffle(lens)
    return [x for x in lens if x > 0]


def _plan(n: int, fields: dict, device, heads: tuple[int, int]):
    from parallel.config import CADConfig, ModelShape, ParallelConfig
    from parallel.plan import ParallelPlan
    f = dict(fields)
    linear = f.pop("linear", False)
    cad = CADConfig(**f.pop("cad", {}))
    cfg = ParallelConfig(cp=n, dp=1, cad=cad, **f)
    plan = ParallelPlan(cfg, ModelShape(heads=heads[0], kv_heads=heads[1], layers="L" if linear else "S"), n)
    plan.setup(device)  # creates groups: every rank, same order
    return plan, linear


def _norm_stats(err_sq, ref_sq, max_abs, max_rel, group_sum: bool):
    t = torch.tensor([err_sq, ref_sq], dtype=torch.float64)
    m = torch.tensor([max_abs, max_rel], dtype=torch.float64)
    if group_sum and dist.is_initialized():
        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t, m = t.to(dev), m.to(dev)
        dist.all_reduce(t)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return {"norm_rel": (t[0] / t[1].clamp_min(1e-300)).sqrt().item(), "max_abs": m[0].item(), "max_rel": m[1].item()}


def _errors(got: list, ref: list, group_sum: bool) -> dict:
    """Per tensor (o, dq, dk, dv): normwise relative, max abs, max rel error (over all ranks)."""
    out = {}
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, ref):
        d = (a.double() - b.double())
        out[name] = _norm_stats((d ** 2).sum().item(), (b.double() ** 2).sum().item(),
                                d.abs().max().item() if d.numel() else 0.0,
                                (d.abs() / b.double().abs().clamp_min(1e-3)).max().item() if d.numel() else 0.0,
                                group_sum)
    return out


def _run(strategy, shard, q, k, v, do, linear, g_gamma):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    if linear:
        o = strategy(*leaves, shard, g_gamma=g_gamma, scale=q.shape[-1] ** -0.5)
    else:
        o = strategy(*leaves, shard, q.shape[-1] ** -0.5)
    grads = torch.autograd.grad(o, leaves, do)
    return [o.detach(), *grads]


def attention_checks(n: int, device, tokens: int, head_dim: int) -> tuple[list, list]:
    from parallel.context.local import LocalCoreAttention, LocalLinearAttention
    from parallel.context.shard import build_shard
    results, skipped = [], []
    for i, (label, fields, why) in enumerate(attention_cases(n)):
        if why:
            skipped.append({"layout": label, "level": "attention", "reason": why})
            continue
        hq, hkv = (8, 8) if fields.get("linear") else (8, 2)
        plan, linear = _plan(n, fields, device, (hq, hkv))
        doc_lens = _doc_lens(tokens, seed=100 + i)
        g = torch.Generator().manual_seed(i)
        scale = 0.3 if linear else 1.0  # linear attention sums grow with length: keep them O(1)
        q, k, v = (scale * torch.randn(tokens, h, head_dim, generator=g) for h in (hq, hkv, hkv))
        do = torch.randn(tokens, hq, head_dim, generator=g)
        q, k, v, do = (x.to(torch.bfloat16).to(device) for x in (q, k, v, do))  # bf16-exact inputs
        g_gamma = (-0.05 - 0.3 * torch.rand(hq, generator=g)).to(device) if linear else None
        local = LocalLinearAttention() if linear else LocalCoreAttention()
        full = build_shard(doc_lens)
        ref = _run(local, full, *(x.float() for x in (q, k, v, do)), linear, g_gamma)
        single = _run(local, full, q, k, v, do, linear, g_gamma)
        shard = plan.build_shard(doc_lens)
        strategy = plan.linear_attention if linear else plan.core_attention
        par = _run(strategy, shard, *(shard.local(x) for x in (q, k, v, do)), linear, g_gamma)
        e_single = _errors(single, ref, group_sum=False)
        e_par = _errors(par, [shard.local(x) for x in ref], group_sum=True)
        bound = {t: ATTN_RULE * e_single[t]["norm_rel"] + 1e-6 for t in e_single}
        ok = all(e_par[t]["norm_rel"] <= bound[t] for t in bound)
        results.append({"layout": label, "level": "attention", "ranks": n, "tokens": tokens,
                        "heads": [hq, hkv], "head_dim": head_dim, "single_gpu_error": e_single,
                        "parallel_error": e_par, "bound": bound, "pass": ok})
    return results, skipped


# ---- trainer level ------------------------------------------------------------------------
MODELS = {"base": [], "hybrid": ["model.layers=LLLS", "model.linear_decay=token", "train.lr=1e-3"],
          "slss": ["model.layers=SLSS", "model.linear_decay=token", "train.lr=1e-3"],
          "kv4": ["model.kv_heads=4"], "deep8": ["model.layers=SSSSSSSS"]}
CAD = ["parallel.cp_algo=cad", "parallel.cad.block=8", "parallel.cad.tolerance=0.0"]


def training_layouts(n: int) -> list[tuple[str, str, list[str], int, str | None]]:
    """(label, model, overrides, ranks it needs, reason to skip or None). dp fills what the
    explicit degrees leave (dp=-1), so e.g. tp=2 at N=8 runs as dp=4 x tp=2."""
    h = n // 2 if n % 2 == 0 else 0  # the other half of a degree-2 split
    cp = [f"parallel.cp={n}"]
    rows = [("dp=N", "base", [], 1),
            ("cp=N ring", "base", [*cp, "parallel.cp_algo=ring"], n),
            ("cp=N allgather", "base", [*cp, "parallel.cp_algo=allgather"], n),
            ("cp=N ulysses", "base", [*cp, "parallel.cp_algo=ulysses"], n),
            ("cp=N usp u=2", "base", [*cp, "parallel.cp_algo=usp", "parallel.ulysses=2"], n),
            ("hybrid LLLS cp=N allgather + LASP-2", "hybrid", [*cp, "parallel.cp_algo=allgather"], n),
            ("cp=N cad overlap=none", "base", [*cp, *CAD, "parallel.cad.overlap=none"], n),
            ("cp=N cad overlap=halves stateful", "base", [*cp, *CAD, "parallel.cad.overlap=halves"], n),
            ("cp=N cad overlap=halves resend", "base", [*cp, *CAD, "parallel.cad.overlap=halves",
                                                          "parallel.cad.backward=resend"], n),
            ("cp=N cad overlap=nanobatch resend", "base", [*cp, *CAD, "parallel.cad.backward=resend"], n),
            ("cp=N cad overlap=nanobatch", "base", [*cp, *CAD, "parallel.cad.overlap=nanobatch"], n),
            ("hybrid SLSS cp=N cad nanobatch", "slss", [*cp, *CAD, "parallel.cad.overlap=nanobatch"], n),
            ("cad pool=1 cp=N-1", "base", [f"parallel.cp={max(n - 1, 1)}", *CAD, "parallel.cad.pool=1"], n),
            ("tp=2", "base", ["parallel.tp=2"], 2),
            ("tp=4", "kv4", ["parallel.tp=4"], 4),
            ("pp=2", "base", ["parallel.pp=2"], 2),
            ("pp=2 interleaved x2", "base", ["parallel.pp=2", "parallel.pp_schedule=interleaved",
                                             "parallel.pp_virtual=2"], 2),
            ("pp=N", "deep8", [f"parallel.pp={n}"], n),
            ("dp=2 ZeRO-1", "base", ["parallel.dp=2", "parallel.zero_stage=1"], 2),
            ("tp=2 cp=N/2 ring", "base", ["parallel.tp=2", f"parallel.cp={h}", "parallel.cp_algo=ring"], n),
            ("tp=2 cp=N/2 cad", "base", ["parallel.tp=2", f"parallel.cp={h}", *CAD], n),
            ("pp=2 cp=N/2 ring", "base", ["parallel.pp=2", f"parallel.cp={h}", "parallel.cp_algo=ring"], n),
            ("pp=2 cp=N/2 cad", "base", ["parallel.pp=2", f"parallel.cp={h}", *CAD], n),
            ("pp=2 cp=N/2 cad joint pipeline", "base", ["parallel.pp=2", f"parallel.cp={h}", *CAD,
                                                         "parallel.cad.pipeline=joint",
                                                         "parallel.cad.backward=resend",
                                                         "parallel.cad.overlap=halves"], n),
            ("tp=2 pp=2", "base", ["parallel.tp=2", "parallel.pp=2"], 4),
            ("dp=2 tp=2 pp=2", "base", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2"], 8)]
    out = []
    for label, model, over, need in rows:
        why = None
        if need > n:
            why = f"needs {need} ranks"
        elif "cp=N/2" in label and (h < 2):
            why = f"needs an even N >= 4 (N={n})"
        elif label.startswith("cp=N") or "cp=N " in label or label.endswith("cp=N"):
            if n < 2:
                why = "needs N >= 2"
        if why is None and "usp" in label and (n < 4 or n % 2):
            why = f"usp u=2 needs an even cp >= 4 (N={n})"
        if why is None and "ulysses" in label and 4 % n:
            why = f"the tiny model's 4 query heads do not split over cp={n}"
        if why is None and "pool" in label and n < 3:
            why = f"the pool layout needs >= 3 ranks (N={n})"
        if why is None and label == "pp=N" and n < 2:
            why = "needs N >= 2"
        if why is None and n % need:
            why = f"N={n} is not a multiple of {need}"
        out.append((label, model, over, need, why))
    return out


def _corpus(path: Path) -> None:
    """JSONL documents of mixed lengths (as tests/train_utils.mixed_corpus): ranks really are
    imbalanced, so CAD moves work."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(800):
            n = int(rng.choice([rng.integers(3, 20), rng.integers(20, 60), rng.integers(60, 300)],
                               p=[0.5, 0.35, 0.15]))
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=n // 4 + 1))[:n]}) + "\n")


def _cfg(args, run_dir, dtype, *overrides):
    from distca.config import compose_config
    base = ["experiment=tiny", f"data.seq_len={args.seq_len}", "train.global_batch_size=8",
            "logger.progress=false", "checkpoint.save_final=false", "train.warmup_steps=2",
            f"train.steps={args.steps}", f"train.dtype={dtype}", f"run_dir={run_dir}",
            *(["train.device=cpu"] if args.dry_run else [])]
    data = ["data=jsonl", f"data.paths=[{args.workdir}/docs.jsonl]", "data.max_documents=-1"]
    return compose_config([*base, *data, *overrides])


def reference_runs(args, models) -> dict:
    """One-process bf16 and fp32 runs of each model (rank 0, before any process group)."""
    from distca.train import train
    refs = {}
    for name in models:
        refs[name] = {}
        for dtype in ("bf16", "fp32"):
            h = train(_cfg(args, f"{args.workdir}/ref_{name}_{dtype}", dtype, *MODELS[name]))
            refs[name][dtype] = {"loss": [m["loss"] for m in h], "grad_norm": h[0]["grad_norm"]}
    return refs


def _judge(ref: dict, h: list[dict]) -> dict:
    bf, fp = ref["bf16"], ref["fp32"]
    loss = [m["loss"] for m in h]
    checks = {}
    for key, got, single, exact in (("step1_loss", loss[0], bf["loss"][0], fp["loss"][0]),
                                    ("step1_grad_norm", h[0]["grad_norm"], bf["grad_norm"], fp["grad_norm"])):
        bound = max(ATTN_RULE * abs(single - exact), STEP1_FLOOR * abs(exact))
        checks[key] = {"error": abs(got - exact), "single_gpu_error": abs(single - exact),
                       "bound": bound, "pass": abs(got - exact) <= bound}
    dist_bf_fp = max(abs(a - b) / abs(b) for a, b in zip(bf["loss"], fp["loss"]))
    curve_err = max(abs(a - b) / abs(b) for a, b in zip(loss, bf["loss"])) if len(loss) == len(bf["loss"]) else float("inf")
    tol = max(CURVE_GROWTH * dist_bf_fp, CURVE_FLOOR)
    checks["loss_curve"] = {"max_rel_diff": curve_err, "bound": tol, "one_gpu_bf16_vs_fp32": dist_bf_fp,
                            "pass": curve_err <= tol}
    return {"checks": checks, "loss": loss, "loss_one_gpu_bf16": bf["loss"], "loss_one_gpu_fp32": fp["loss"],
            "pass": all(c["pass"] for c in checks.values()),
            **{k: h[0][k] for k in ("cad_moved_work", "cad_imbalance_before", "cad_imbalance_after",
                                    "pp_bubble") if k in h[0]}}


def training_checks(args, n: int, refs: dict | None, done: list, done_skipped: list) -> tuple[list, list]:
    """Runs every layout; `done` (attention rows) only goes into the partial JSON."""
    from distca.train import train
    results, skipped = [], []
    for i, (label, model, over, need, why) in enumerate(training_layouts(n)):
        if args.only and not any(s in label for s in args.only):
            continue
        if why:
            skipped.append({"layout": label, "level": "training", "reason": why})
            continue
        row = {"layout": label, "level": "training", "overrides": over, "model": model}
        if not dist.is_initialized() or dist.get_rank() == 0:  # partial results survive a crash; `running` names the culprit
            _write(args, n, done + results, done_skipped + skipped, running=label)
        try:
            h = train(_cfg(args, f"{args.workdir}/run_{i}", "bf16", *MODELS[model], *over))
        except Exception:
            # the other ranks are stuck in a collective of this layout: no recovery is
            # possible, so end the job (torchrun stops every rank); rerun with --only to go on
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
        row.update(_judge(refs[model], h) if refs is not None else {"pass": True})
        if dist.is_initialized():
            dist.barrier()
        results.append(row)
    return results, skipped


def _write(args, n, rows, skipped, running) -> dict:
    out = {**header(n), "dry_run": args.dry_run, "steps": args.steps,
           "rules": {"attention": f"normwise rel error <= {ATTN_RULE} x single-GPU bf16 (+1e-6)",
                     "step1": f"<= {ATTN_RULE} x single-GPU bf16 error, floor {STEP1_FLOOR} relative",
                     "loss_curve": f"max rel diff to one-GPU bf16 <= max({CURVE_GROWTH} x bf16-vs-fp32, {CURVE_FLOOR})"},
           "running_when_written": running, "results": rows, "skipped": skipped,
           "passed": sum(r["pass"] for r in rows), "failed": [r["layout"] for r in rows if not r["pass"]]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20, help="training steps per layout")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--attn-tokens", type=int, default=8192, help="tokens per attention case")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--only", nargs="*", help="run only training layouts whose label contains one of these")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "distca_multigpu_correctness"))
    ap.add_argument("--dry-run", "--cpu-smoke", dest="dry_run", action="store_true",
                    help="CPU, gloo, tiny shapes, 3 steps: proves the script runs, not the GPU claim")
    args = ap.parse_args()
    if args.dry_run:
        args.steps, args.seq_len, args.attn_tokens, args.head_dim = min(args.steps, 3), 64, 96, 16
    os.environ.setdefault("WANDB_MODE", "disabled")
    n, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    run_training = not args.skip_training
    models = sorted({m for label, m, _, _, why in training_layouts(n) if why is None
                     and (not args.only or any(s in label for s in args.only))})
    refs = None
    if rank == 0:  # one-process references first: the other ranks wait in init_process_group
        shutil.rmtree(args.workdir, ignore_errors=True)
        Path(args.workdir).mkdir(parents=True)
        _corpus(Path(args.workdir) / "docs.jsonl")
        if run_training:
            world_env = os.environ.get("WORLD_SIZE")
            os.environ["WORLD_SIZE"] = "1"  # the trainer sizes its plan from this before a group exists
            try:
                refs = reference_runs(args, models)
            finally:
                if world_env is not None:
                    os.environ["WORLD_SIZE"] = world_env
    from distca.lifecycle.process_group import init_distributed
    device = init_distributed("cpu" if args.dry_run else "auto")
    attn, attn_skipped = attention_checks(n, device, args.attn_tokens, args.head_dim) if n > 1 else ([], [])
    train_rows, train_skipped = training_checks(args, n, refs, attn, attn_skipped) if run_training else ([], [])
    rows = attn + train_rows
    if rank == 0:
        out = _write(args, n, rows, attn_skipped + train_skipped, running=None)
        print(f"{out['passed']}/{len(rows)} passed, {len(out['skipped'])} skipped; failed: {out['failed']}")
    ok = all(r["pass"] for r in rows)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
