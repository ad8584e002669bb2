"""The evaluation tasks (`eval.tasks`), run every `eval.every` steps, after the last step, and
by distca-eval on a checkpoint or a Hugging Face folder:

- loss: held-out loss and perplexity (`eval_loss`, `eval_ppl`; held_out.py);
- position_loss: held-out loss by position inside the document (`eval_position_loss` per
  bucket; position_loss.py);
- passkey: retrieval of a key hidden at depths of filler of given lengths
  (`eval_passkey_acc`, per length and as a length x depth grid; passkey.py).

Every task runs under the training layout; every rank calls `evaluate` at the same step.
"""
from __future__ import annotations

import math
import random

import torch
import torch.distributed as dist

from distca.data.batching import MicroBatch
from distca.evaluation import passkey as pk
from distca.evaluation.forward import run_forward
from distca.evaluation.held_out import eval_loss, held_out_micro_batches
from distca.evaluation.position_loss import position_loss
from distca.evaluation.token_scores import per_token
from distca.observe.console import say


HELD_OUT = ("loss", "position_loss")  # the tasks that read held-out data


def eval_enabled(cfg) -> bool:
    e = cfg.eval
    tasks = {str(t) for t in e.tasks}
    return e.every > 0 and bool(tasks) and (e.batches > 0 or not tasks & set(HELD_OUT))


def eval_due(cfg, step: int) -> bool:
    return eval_enabled(cfg) and (step % cfg.eval.every == 0 or step == cfg.train.steps)


def check_eval_config(cfg) -> None:
    """Config-time checks (called by distca/config/validate.py): a ValueError naming field and fix."""
    e = cfg.eval
    for name in ("every", "batches"):
        if getattr(e, name) < 0:
            raise ValueError(f"eval.{name}={getattr(e, name)} must be >= 0 (0 turns evaluation off)")
    tasks = [str(t) for t in e.tasks]
    cad = cfg.parallel.cad
    # CAD pool ranks and stages pooled into one CAD group (parallel/cad/pool.py, cad.pipeline=
    # joint) join attention rounds they run no micro-batch for: the evaluation forward does not
    # drive those rounds (yet)
    pooled = [f"parallel.cad.pool={cad.pool}"] if getattr(cad, "pool", 0) > 0 else []
    pooled += ["parallel.cad.pipeline=joint"] if str(getattr(cad, "pipeline", "")) == "joint" else []
    if eval_enabled(cfg) and pooled:
        raise ValueError(f"eval.every={e.every} does not run with {pooled[0]} yet. Fix: set "
                         "eval.every=0, or leave that option at its default")
    held_out = [t for t in tasks if t in HELD_OUT]
    if eval_enabled(cfg) and held_out and cfg.data.source != "synthetic" and cfg.data.holdout <= 0:
        raise ValueError(
            f"eval.tasks {held_out} evaluate on held-out documents, but data.holdout=0 keeps none out "
            f"of training (data.source={cfg.data.source}). Fix: add data.holdout=0.01 (the last 1% of "
            "the documents leave the training stream), or set eval.every=0 (or eval.tasks=[passkey])")
    if e.position_buckets < 1:
        raise ValueError(f"eval.position_buckets={e.position_buckets} must be >= 1")
    p = e.passkey
    if "passkey" in tasks:
        if p.samples < 1 or not p.depths:
            raise ValueError(f"eval.passkey.samples={p.samples} must be >= 1 and eval.passkey.depths non-empty")
        if any(not 0.0 <= d <= 1.0 for d in p.depths):
            raise ValueError(f"eval.passkey.depths={list(p.depths)} must lie in [0, 1] (0: the key first, 1: last)")


def _model(engine, stage):
    return stage.model if stage is not None else getattr(engine, "module", engine)


def _counts_here(plan) -> bool:
    """One rank of each TP group adds a shared value (every TP rank computes the same)."""
    tp_group = plan.state.tp_group
    return tp_group is None or dist.get_rank(tp_group) == 0


def check_tokenizer(cfg, tokenizer) -> None:
    """passkey writes text: the data's tokenizer must encode it (config time, after the data)."""
    if not (eval_enabled(cfg) and "passkey" in [str(t) for t in cfg.eval.tasks]):
        return
    try:
        tokenizer.encode("The pass key is 12345.")
    except (ValueError, NotImplementedError, AttributeError):
        raise ValueError(f"eval.tasks has passkey, which writes a text prompt, but data.source={cfg.data.source} "
                         "has no text tokenizer (its data is already token ids). Fix: name the tokenizer that "
                         "made the ids, or train on text data, or drop passkey from eval.tasks") from None
    for length in passkey_lengths(cfg):  # the prompt must fit: the message gives the shortest length
        pk.make_sample(tokenizer, length, 0.5, random.Random(0))


def evaluate(cfg, step: int, plan, engine, stage, amp, device, tokenizer, force: bool = False) -> dict:
    """The metrics of the tasks due after `step` ({} when none is due)."""
    if not (force or eval_due(cfg, step)):
        return {}
    loud = not dist.is_initialized() or dist.get_rank() == 0
    out, said = {}, []
    tasks = [str(t) for t in cfg.eval.tasks]
    if "loss" in tasks:
        loss = eval_loss(cfg, plan, engine, stage, amp, device)
        out.update(eval_loss=loss, eval_ppl=math.exp(min(loss, 700.0)))
        said.append(f"loss {loss:.4f} ppl {out['eval_ppl']:.2f} ({cfg.eval.batches} held-out batches)")
    if "position_loss" in tasks:
        micro = held_out_micro_batches(cfg, plan, device)
        out.update(position_loss(_model(engine, stage), stage, micro, amp, device, cfg.data.seq_len,
                                 cfg.eval.position_buckets, _counts_here(plan)))
        curve = " ".join("-" if v is None else f"{v:.2f}" for v in out["eval_position_loss"])
        said.append(f"loss by position {curve}")
    if "passkey" in tasks:
        out.update(passkey_eval(cfg, plan, engine, stage, amp, device, tokenizer))
        by_len = ", ".join(f"{L}: {a:.0%}" for L, a in out["eval_passkey_acc_by_length"].items() if a is not None)
        said.append(f"passkey {out['eval_passkey_acc']:.0%} ({by_len})")
    plan.step_metrics()  # drop what the strategies measured here: the next step's are its own
    say(f"eval after step {step}: " + "; ".join(said), loud)
    return out


def passkey_lengths(cfg) -> list[int]:
    return list(cfg.eval.passkey.lengths) or [cfg.data.seq_len]


def passkey_eval(cfg, plan, engine, stage, amp, device, tokenizer) -> dict:
    p = cfg.eval.passkey
    samples = pk.make_samples(tokenizer, passkey_lengths(cfg), list(p.depths), p.samples, cfg.train.seed)
    dims = plan.dims
    mine = [i for i in range(len(samples)) if i % dims.dp == plan.dp_rank]  # samples of this DP replica
    filler = pk._encode(tokenizer, pk.FILLER)[0]
    micro = []
    for i in mine:
        tokens, doc_lens, labels = pk.padded_document(samples[i], 2 * dims.cp if dims.cp > 1 else 1, filler)
        shard = plan.build_shard(doc_lens)
        micro.append(MicroBatch(shard.local(tokens).to(device), shard.local(labels).to(device), shard.to(device)))
    matched = torch.zeros(len(samples), dtype=torch.long, device=device)

    def finish(m, x, mb):
        _, best = per_token(m.lm_head, m.head(x, None), mb.labels)
        return int(((best == mb.labels) & (mb.labels != -100)).sum())

    got = run_forward(_model(engine, stage), stage, micro, amp, finish)
    if got and _counts_here(plan):
        for i, n in zip(mine, got):
            matched[i] = n
    if dist.is_initialized():
        dist.all_reduce(matched)
    return pk.score(matched.tolist(), samples)
