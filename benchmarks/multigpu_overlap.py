"""How much communication each CP strategy hides under compute, and the pipeline bubble
measured against the schedule's theory (issue 22, part 3).

    torchrun --standalone --nproc_per_node 8 benchmarks/multigpu_overlap.py --out $OUT/overlap.json
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        benchmarks/multigpu_overlap.py --dry-run --out /tmp/o.json      # CPU, gloo, tiny

Attention step = forward + backward of one core-attention call on this rank's shard (CP group
= all N ranks, strategy from `ParallelPlan.setup`), bf16, documents from
`--docs` (pretrain-like mix by default). Times are medians over --iters after --warmup, each
iteration ending with a device synchronize and a barrier (so the slowest rank counts).

    t_full        the step as it runs in training
    t_cut         the same step with the strategy given benchmarks/cad_cut_exchange.py's
                  CutExchange (`CADAttention(..., exchange=CutExchange)`: one element per
                  peer, zeros back): same kernels, same collectives' count and latency, ~no
                  bytes. CAD only: the others take no injected exchange, so ring/allgather
                  have no t_cut. The CAD attention rows run overlap=halves (a plain call).
    t_comm_alone  every collective the full step issued (recorded through parallel.comm's
                  observer: op, group, payload, splits), replayed back to back with no
                  compute between them: the communication's own time.
    exposed       t_full - t_cut: the communication time the step waits for
    hidden        1 - exposed / t_comm_alone, clipped to [0, 1] (raw value kept):
                  1 = communication fully under compute, 0 = fully serial.
For ring and allgather (no cut switch), `comm_share_upper` = t_comm_alone / t_full is
reported instead: the share of the step communication would take if none of it were hidden.
Values: results are only timed, and the cut run's outputs are wrong by design.

CAD in training (`cad_in_training`): whole forward + backward passes of a model (--pp-layers
softmax layers, 1024 wide; 4 micro-batches of --pp-seq-len x N tokens from the pretraining-like
mix, bf16) at cp=N with each overlap mode (none, halves, nanobatch, auto), as trained and with
the cut exchange injected: the exposed share of the step per mode (t_comm_alone is not
replayed here); for auto, the mode it chose (`cad_overlap`, 0 none, 1 halves, 2 nanobatch)
and its step over the best explicit mode's (`auto_over_best_mode`); `link_gbps_measured` is
what `parallel.cad.link_gbps=0` would measure (GB/s per direction; auto's default is 50).

Pipeline bubble: `train()` at pp=N (1F1B, tiny-but-not-trivial model, --pp-steps steps) and
the same model on one process (rank 0 before the process group exists, as in
multigpu_correctness.py). measured = 1 - (t_one / N) / t_pp, with t the median step time
after the first two steps: the share of the pipeline's rank-time not spent on the one-process
work (it includes the p2p sends, which the theory does not). theory = the trainer's
`pp_bubble` metric, i.e. `parallel/pipeline/timeline.py bubble_fraction` of the timeline it
ran ((pp-1)/(M+pp-1) for 1F1B with M micro-batches).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.multigpu_common import header  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def _median_time(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _doc_lens(tokens: int, mix: str, seed: int) -> list[int]:
    """A pretrain-like mix (many short, few long) or one long document per sample."""
    if mix == "long":
        return [tokens]
    rng = np.random.default_rng(seed)
    lens = []
    while sum(lens) < tokens:
        lens.append(int(min(rng.lognormal(np.log(max(tokens // 64, 4)), 1.2) + 1, tokens)))
    lens[-1] -= sum(lens) - tokens
    return [x for x in lens if x > 0]


def _strategy_step(algo: str, n: int, device, args, exchange=None):
    """The step function of one attention forward + backward on this rank's shard (CAD with
    `exchange` injected when given)."""
    from parallel.cad.attention import CADAttention
    from parallel.config import CADConfig, ModelShape, ParallelConfig
    from parallel.plan import ParallelPlan
    cad = CADConfig(cost_table="none" if args.dry_run else "auto", overlap="halves")
    cfg = ParallelConfig(cp=n, dp=1, cp_algo=algo, cad=cad)
    plan = ParallelPlan(cfg, ModelShape(heads=args.heads, kv_heads=args.kv_heads, layers="S"), n)
    plan.setup(device)
    core = plan.core_attention
    if exchange is not None:
        core = CADAttention(plan.state.cad_group, plan.dp_rank, cad, exchange=exchange)
    shard = plan.build_shard(_doc_lens(args.tokens, args.docs, 0))
    t, d = shard.num_tokens, args.head_dim
    g = torch.Generator().manual_seed(dist.get_rank())
    q, k, v, do = (torch.randn(t, h, d, generator=g).to(device, torch.bfloat16)
                   for h in (args.heads, args.kv_heads, args.kv_heads, args.heads))
    leaves = [x.requires_grad_() for x in (q, k, v)]

    def step():
        o = core(*leaves, shard, d ** -0.5)
        torch.autograd.grad(o, leaves, do)
    return step


def _record(step):
    """Every collective one step issues, as (op, group, payload clone, splits)."""
    from parallel import comm
    events = []
    with comm.observe(lambda e: events.append(e) if e.op != "wait" else None):
        step()
    return [(e.op, e.group, e.send.detach().clone() if e.send is not None else None, e.splits) for e in events]


def _replay(events):
    """The recorded collectives, back to back, with the same payloads (received sizes are
    exchanged first, once, outside the timed region)."""
    plans = []
    for op, group, send, splits in events:
        n = dist.get_world_size(group)
        if op == "all_to_all_single":
            sizes = torch.tensor(splits, dtype=torch.int64, device=send.device)
            recv_sizes = torch.empty_like(sizes)
            dist.all_to_all_single(recv_sizes, sizes, group=group)
            out = send.new_empty((int(recv_sizes.sum()),) + tuple(send.shape[1:]))
            plans.append(lambda o=out, s=send, r=recv_sizes.tolist(), i=splits, g=group:
                         dist.all_to_all_single(o, s, r, i, group=g))
        elif op in ("all_gather_into_tensor", "all_gather"):
            out = send.new_empty((n * send.shape[0],) + tuple(send.shape[1:]))
            plans.append(lambda o=out, s=send, g=group: dist.all_gather_into_tensor(o, s.contiguous(), group=g))
        elif op == "reduce_scatter_tensor":
            out = send.new_empty((send.shape[0] // n,) + tuple(send.shape[1:]))
            plans.append(lambda o=out, s=send, g=group: dist.reduce_scatter_tensor(o, s, group=g))
        elif op == "all_reduce":
            plans.append(lambda s=send.clone(), g=group: dist.all_reduce(s, group=g))
        elif op == "isend":  # ring neighbours: send to next, receive from previous
            me, size = dist.get_rank(group), n
            buf = torch.empty_like(send)
            plans.append(lambda s=send, b=buf, g=group, me=me, size=size: [
                r.wait() for r in dist.batch_isend_irecv([
                    dist.P2POp(dist.isend, s, group=g, group_peer=(me + 1) % size),
                    dist.P2POp(dist.irecv, b, group=g, group_peer=(me - 1) % size)])])
    return lambda: [p() for p in plans]


def attention_overlap(n, device, args) -> list[dict]:
    from benchmarks.cad_cut_exchange import CutExchange
    rows = []
    for algo in args.algos:
        step = _strategy_step(algo, n, device, args)
        t_full = _median_time(step, device, args.warmup, args.iters)
        events = _record(step)
        replay = _replay(events)
        t_comm = _median_time(replay, device, 1, args.iters)
        row = {"algo": algo, "ranks": n, "tokens": args.tokens, "docs": args.docs, "t_full_s": t_full,
               "t_comm_alone_s": t_comm, "collectives_per_step": len(events),
               "bytes_sent_per_rank": sum(e[2].numel() * e[2].element_size() for e in events if e[2] is not None)}
        if algo == "cad":
            t_cut = _median_time(_strategy_step(algo, n, device, args, CutExchange), device,
                                 args.warmup, args.iters)
            raw = 1 - (t_full - t_cut) / t_comm if t_comm > 0 else float("nan")
            row.update(t_cut_s=t_cut, exposed_s=t_full - t_cut, hidden_fraction_raw=raw,
                       hidden_fraction=min(1.0, max(0.0, raw)))
        else:
            row["comm_share_upper"] = t_comm / t_full if t_full > 0 else float("nan")
        rows.append(row)
    return rows


def cad_modes_in_training(n, device, args) -> list[dict]:
    """CAD's overlap modes inside whole forward + backward passes of a model (cp = N, documents
    from the pretraining-like mix, so micro-batches split into nano-batches): the median step as
    trained and with the cut exchange injected; exposed = the difference. Only the nano-batch
    mode can hide traffic under the projections and MLP, so this is what decides between them."""
    from benchmarks.cad_cut_exchange import CutExchange
    from distca.config import compose_config, to_typed
    from distca.data.labels import next_token_labels
    from distca.model import build_model
    from parallel.cad.attention import CADAttention
    from parallel.cad.dispatch import Exchange
    from parallel.cad.overlap_choice import measure_link
    from parallel.config import CADConfig, ModelShape, ParallelConfig
    from parallel.plan import ParallelPlan
    mcfg = to_typed(compose_config(["experiment=tiny", *_model_overrides(args)])).model
    shape = ModelShape(mcfg.heads, mcfg.kv_heads, mcfg.layers, mcfg.ffn_hidden)
    plan = ParallelPlan(ParallelConfig(cp=n, dp=1, cp_algo="cad"), shape, n)
    plan.setup(device)  # the groups, once; each mode gets its own strategy over them
    tokens = args.pp_seq_len * n
    vocab = 256
    micro = []
    for i in range(4):
        docs = _doc_lens(tokens, "pretrain", 100 + i)
        ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(i))
        shard = plan.build_shard(docs)
        micro.append((shard.local(ids).to(device), shard.local(next_token_labels(ids, docs)).to(device),
                      shard.to(device)))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    # what parallel.cad.link_gbps=0 would measure here (auto's default prices 50 GB/s)
    link = measure_link(plan.state.cad_group, device) / 2 / 1e9
    rows = []
    for overlap in ("none", "halves", "nanobatch", "auto"):
        t, chose = {}, None
        for cut, exchange in ((False, Exchange), (True, CutExchange)):
            cad = CADConfig(overlap=overlap, cost_table="none" if args.dry_run else "auto")
            core = CADAttention(plan.state.cad_group, plan.dp_rank, cad, exchange=exchange)
            model = build_model(mcfg, vocab, core, plan.linear_attention, seed=0).to(device).train()

            def step(model=model):
                model.zero_grad(set_to_none=True)
                for ids, labels, shard in micro:
                    with amp:
                        loss = model(ids, shard, labels)
                    loss.backward()
            t[cut] = _median_time(step, device, args.warmup, args.iters)
            if not cut:
                chose = core.step_metrics().get("cad_overlap")
            del model
        rows.append({"overlap": overlap, "cp": n, "seq_len": tokens, "micro_batches": len(micro),
                     "t_full_s": t[False], "t_cut_s": t[True], "exposed_s": t[False] - t[True],
                     "exposed_share": (t[False] - t[True]) / t[False] if t[False] > 0 else None,
                     "cad_overlap": chose, "link_gbps_measured": link})
    best = min(r["t_full_s"] for r in rows[:3])
    rows[-1]["auto_over_best_mode"] = rows[-1]["t_full_s"] / best if best > 0 else None
    return rows


def _model_overrides(args) -> list[str]:
    return ["model.layers=" + "S" * max(args.pp_layers, 2)] + ([] if args.dry_run else [
        "model.hidden=1024", "model.heads=16", "model.kv_heads=4", "model.ffn_hidden=2816"])


def _train_cfg(args, run_dir, *over):
    from distca.config import compose_config
    m = _model_overrides(args)
    return compose_config(["experiment=tiny", f"data.seq_len={args.pp_seq_len}", "train.global_batch_size=8",
                           "logger.progress=false", "checkpoint.save_final=false", "train.warmup_steps=1",
                           f"train.steps={args.pp_steps}", "train.dtype=bf16", f"run_dir={run_dir}",
                           *(["train.device=cpu"] if args.dry_run else []), *m, *over])


def _median_step(history) -> float:
    times = [h["step_time_s"] for h in history[2:]] or [h["step_time_s"] for h in history]
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--algos", nargs="+", default=["cad", "ring", "allgather"])
    ap.add_argument("--tokens", type=int, default=131072, help="tokens per sample (whole CP group)")
    ap.add_argument("--docs", choices=("pretrain", "long"), default="pretrain")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--pp-layers", type=int, default=16)
    ap.add_argument("--pp-seq-len", type=int, default=4096)
    ap.add_argument("--pp-steps", type=int, default=8)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "distca_multigpu_overlap"))
    ap.add_argument("--dry-run", "--cpu-smoke", dest="dry_run", action="store_true")
    args = ap.parse_args()
    if args.dry_run:
        args.tokens, args.heads, args.kv_heads, args.head_dim = 256, 4, 2, 16
        args.warmup, args.iters, args.pp_layers, args.pp_seq_len, args.pp_steps = 1, 2, 4, 64, 3
    os.environ.setdefault("WANDB_MODE", "disabled")
    n, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    from distca.train import train
    one = None
    if rank == 0 and n > 1:  # the one-process pipeline reference, before the group exists
        os.environ["WORLD_SIZE"] = "1"
        try:
            one = _median_step(train(_train_cfg(args, f"{args.workdir}/pp1")))
        finally:
            os.environ["WORLD_SIZE"] = str(n)
    from distca.lifecycle.process_group import init_distributed
    device = init_distributed("cpu" if args.dry_run else "auto")
    out = {**header(n), "dry_run": args.dry_run, "attention": [], "cad_in_training": [], "pipeline": None,
           "skipped": []}
    if n < 2:
        out["skipped"].append({"what": "everything", "reason": "overlap and bubble need >= 2 ranks"})
    else:
        out["attention"] = attention_overlap(n, device, args)
        out["cad_in_training"] = cad_modes_in_training(n, device, args)
        h = train(_train_cfg(args, f"{args.workdir}/pp{n}", f"parallel.pp={n}"))
        t_pp = _median_step(h)
        out["pipeline"] = {"pp": n, "t_one_process_s": one, "t_pp_s": t_pp,
                           "bubble_measured": 1 - (one / n) / t_pp if one else None,
                           "bubble_theory": h[0].get("pp_bubble"), "layers": args.pp_layers,
                           "seq_len": args.pp_seq_len}
        out["skipped"].append({"what": "tp overlap", "reason": "TP collectives take no injected "
                               "exchange yet, so they have no payload-cut baseline"})
    if rank == 0:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps({k: out[k] for k in ("attention", "cad_in_training", "pipeline")}, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
